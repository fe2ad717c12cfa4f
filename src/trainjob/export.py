"""ONNX export with a dynamic batch axis, weights inside the file, and an onnxruntime parity
check against torch. Fails the job if the exported model disagrees with the trained one.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import StorageError, TrainjobError

# max |onnxruntime - torch| on a test batch, relative to the largest logit when that is > 1:
# measured ~3e-7 in fp32 for normal logits; a run at learning rate 10 has logits ~1e6-1e7 and
# differs by ~30 in absolute terms, which is fp32 rounding, not a broken export.
PARITY_TOLERANCE = 1e-4


class ExportError(TrainjobError):
    """The exported model is invalid or disagrees with torch (a bug, hence exit 1)."""


def export_onnx(
    model: nn.Module, sample: torch.Tensor, path: Path, exporter: str = "dynamo"
) -> None:
    """Write ``path`` atomically (a failed or interrupted export leaves the old file).

    ``sample`` is a float batch [B, 1, 28, 28]; its batch size is *not* baked into the graph.
    """
    # Export a float32, contiguous-format CPU copy: the training copy may be channels_last,
    # compiled or on a GPU, none of which belongs in a portable model file.
    cpu_model = copy.deepcopy(getattr(model, "_orig_mod", model)).float().cpu().eval()
    cpu_model = cpu_model.to(memory_format=torch.contiguous_format)
    sample = sample.float().cpu().contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _export(cpu_model, sample, tmp, exporter)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full (ENOSPC), file size limit (EFBIG), read-only folder
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StorageError(
            f"could not write {path}: {exc.strerror or exc}; the previous file is kept"
        ) from None


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


def check_onnx(model: nn.Module, path: Path, batch: torch.Tensor) -> float:
    """onnx.checker + onnxruntime on ``batch``; returns the max abs difference to torch."""
    # onnxruntime >= 1.29 sends usage telemetry (model name, hashes) from Linux too, to
    # mobile.events.data.microsoft.com; ORT_DISABLE_TELEMETRY is its documented switch. A check
    # of our own export has nothing to report, and an air-gapped job must not wait on it.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cpu_model = copy.deepcopy(getattr(model, "_orig_mod", model)).float().cpu().eval()
    x = batch.float().cpu().contiguous()
    with torch.no_grad():
        expected = cpu_model(x).numpy()
    (got,) = session.run(["logits"], {"images": x.numpy()})
    diff = float(abs(got - expected).max())
    tolerance = PARITY_TOLERANCE * max(1.0, float(abs(expected).max()))
    if not diff <= tolerance:
        raise ExportError(
            f"ONNX model {path} disagrees with torch: max abs diff {diff:.3g} > {tolerance:.3g}"
        )
    return diff
