"""ONNX export with a dynamic batch axis, weights inside the file, and an onnxruntime parity
check against torch. Fails the job if the exported model disagrees with the trained one.

With a cache folder, the exporter runs once per architecture and later jobs swap their weights
into that export (onnx_template.py): ~1 ms instead of ~2 s for the dynamo exporter.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import records
from .errors import ExportError
from .model import unwrap

# max |onnxruntime - torch| on a test batch, relative to the largest logit when that is > 1:
# measured ~3e-7 in fp32 for normal logits; a run at learning rate 10 has logits ~1e6-1e7 and
# differs by ~30 in absolute terms, which is fp32 rounding, not a broken export.
PARITY_TOLERANCE = 1e-4


def export_onnx(
    model: nn.Module,
    sample: torch.Tensor,
    path: Path,
    exporter: str = "dynamo",
    cache_dir: Path | None = None,
) -> None:
    """Write ``path`` atomically (a failed or interrupted export leaves the old file).

    ``sample`` is a float batch [B, 1, 28, 28]; its batch size is *not* baked into the graph.
    ``cache_dir``: take the graph from the architecture's template in ``<cache_dir>/onnx``
    (made by the first job that needs it) and write this model's weights into it; None, or a
    model whose template cannot take its weights: run the exporter.
    """
    cpu_model = _portable_copy(model)
    sample = sample.float().cpu().contiguous()
    blob = _from_template(cpu_model, sample, exporter, cache_dir) if cache_dir else None
    # StorageError (exit 5) when it cannot be written, the previous file kept; without a
    # template that takes these weights the exporter writes the temp file itself.
    records.write_atomic(
        path, blob if blob is not None else partial(_export, cpu_model, sample, exporter=exporter)
    )


def _portable_copy(model: nn.Module) -> nn.Module:
    """A float32, contiguous-format CPU copy without forward hooks: the training copy may be
    channels_last, compiled or on a GPU, none of which belongs in a portable model file. The
    hooks (W&B's ``run.watch``, the watcher) would count the exporter's forward calls, which
    only the first job of an architecture makes now: without them a job's histograms do not
    depend on what the cache holds."""
    cpu_model = copy.deepcopy(unwrap(model)).float().cpu().eval()
    for module in cpu_model.modules():
        # The dicts nn.Module.register_forward(_pre)_hook fills (torch/nn/modules/module.py);
        # a copy has no handles to remove them by.
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return cpu_model.to(memory_format=torch.contiguous_format)


# --- the template path ------------------------------------------------------------------------


def _from_template(
    cpu_model: nn.Module, sample: torch.Tensor, exporter: str, cache_dir: Path
) -> bytes | None:
    """This model's file from its architecture's template, or None: export in full."""
    from . import onnx_template as tpl

    key = tpl.template_key(cpu_model, sample, exporter, [Path(__file__)])
    if key is None:
        return None  # the model's code has no source file to key on (python -c, a notebook)
    state = {k: v.detach().numpy() for k, v in cpu_model.state_dict().items()}
    cache = tpl.TemplateCache(Path(cache_dir) / "onnx")
    template = cache.get(key)
    if template is None:
        blob = _build_template(cpu_model, sample, exporter, key)
        if blob is None:
            return None
        cache.put(key, blob)
        template = tpl.read_template(blob, key)
        assert template is not None  # just made for this key
    try:
        return tpl.swap(template, state)
    except tpl.Unswappable as exc:  # a template of another layout under this key: rebuilt next
        tpl.warn_once(f"ONNX template {cache.path(key)} does not fit ({exc}); exporting in full")
        return None


def _build_template(
    cpu_model: nn.Module, sample: torch.Tensor, exporter: str, key: str
) -> bytes | None:
    """Export once and prove the export takes other weights: swapped random weights must give
    torch's outputs for them in onnxruntime (an initializer derived from a weight, or a weight
    folded into the graph, would keep the exported model's value and fail here)."""
    from . import onnx_template as tpl

    try:
        with tempfile.TemporaryDirectory(prefix="trainjob-onnx-") as folder:
            exported = Path(folder) / "model.onnx"
            _export(cpu_model, sample, exported, exporter)
            blob = tpl.make_template(exported.read_bytes(), key)
    except OSError:  # TMPDIR full or gone: the export into the model's own folder says why
        return None
    probe = copy.deepcopy(cpu_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in probe.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
    # Random images, not the sample: a zero sample would not see stale convolution weights.
    images = torch.rand(sample.shape, generator=generator)
    try:
        state = {k: v.numpy() for k, v in probe.state_dict().items()}
        swapped = tpl.swap(tpl.read_template(blob, key), state)
    except tpl.Unswappable as exc:
        tpl.warn_once(
            f"{type(cpu_model).__name__}'s ONNX export cannot take new weights "
            f"({exc}); each job exports it in full"
        )
        return None
    diff, tolerance = _parity(probe, swapped, images)
    if not diff <= tolerance:
        tpl.warn_once(
            f"{type(cpu_model).__name__}'s ONNX export with other weights differs "
            f"from torch by {diff:.3g}; each job exports it in full"
        )
        return None
    return blob


def _export(cpu_model: nn.Module, sample: torch.Tensor, tmp: Path, exporter: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation chatter, not actionable
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1 << 20)
            torch.onnx.export(
                cpu_model,
                (sample,),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: batch}},
                external_data=False,  # weights inside model.onnx, not a side file W&B misses
                dynamo=True,
                verbose=False,
            )
        else:
            torch.onnx.export(
                cpu_model,
                (sample,),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )


def _ort_session(model_file: str | bytes):  # onnxruntime.InferenceSession
    # onnxruntime >= 1.29 sends usage telemetry (model name, hashes) from Linux too, to
    # mobile.events.data.microsoft.com; ORT_DISABLE_TELEMETRY is its documented switch. A check
    # of our own export has nothing to report, and an air-gapped job must not wait on it.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    return ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The reference forward pass on one thread: a few dozen MNIST images are too little work
    to share, and waking and joining the intra-op pool costs more than it saves (measured on a
    2-core VM: 37 images in ~10 ms on 1 thread, 45-130 ms on 2; PyTorch's notes on CPU
    threading: https://pytorch.org/docs/stable/notes/cpu_threading_torchscript_inference.html).
    The job's thread count comes back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _parity(model: nn.Module, model_file: str | bytes, batch: torch.Tensor) -> tuple[float, float]:
    """(max |onnxruntime - torch| on ``batch``, the tolerance for these logits)."""
    session = _ort_session(model_file)
    x = batch.float().cpu().contiguous()
    with torch.no_grad(), _one_thread():
        expected: np.ndarray = model(x).numpy()
    (got,) = session.run(["logits"], {"images": x.numpy()})
    diff = float(abs(got - expected).max())
    return diff, PARITY_TOLERANCE * max(1.0, float(abs(expected).max()))


def check_onnx(model: nn.Module, path: Path, batch: torch.Tensor) -> float:
    """onnx.checker + onnxruntime on ``batch``; returns the max abs difference to torch."""
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    cpu_model = copy.deepcopy(unwrap(model)).float().cpu().eval()
    diff, tolerance = _parity(cpu_model, str(path), batch)
    if not diff <= tolerance:
        raise ExportError(
            f"ONNX model {path} disagrees with torch: max abs diff {diff:.3g} > {tolerance:.3g}"
        )
    return diff
