"""ONNX templates (onnx_template.py, export.py): one export per architecture, weights swapped in.

Real torch exporters, real onnx, real onnxruntime. A swapped model must give a fresh export's
outputs for the same weights; a second job of an architecture must not run the exporter; a
damaged template is exported again; an unwritable cache still gives every job its model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from storage_helpers import under_a_file
from torch import nn

from trainjob import export
from trainjob.model import ConvNet

SAMPLE = torch.zeros(16, 1, 28, 28)


def _model(seed: int, kernels: tuple[int, int] = (16, 32)) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(list(kernels), 10)


def _outputs(path: Path, batch: int) -> np.ndarray:
    x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": x})
    return logits


def _templates(cache: Path) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns) of every file in the template folder (temp files included)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (cache / "onnx").iterdir()}


@pytest.fixture
def exporter_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each real exporter run (the exporter still runs)."""
    calls: list[str] = []
    real = export._export

    def counted(model: nn.Module, sample: torch.Tensor, tmp: Path, exporter: str) -> None:
        calls.append(exporter)
        real(model, sample, tmp, exporter)

    monkeypatch.setattr(export, "_export", counted)
    return calls


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_swapped_model_equals_a_fresh_export(exporter: str, tmp_path: Path) -> None:
    """Two weight sets through one template: the same outputs as each one's own export, for
    batches of 3 and 37 (the batch axis is dynamic), weights inside the file."""
    cache = tmp_path / "cache"
    for seed in (1, 2):
        model = _model(seed)
        swapped, fresh = tmp_path / f"swapped-{seed}.onnx", tmp_path / f"fresh-{seed}.onnx"
        export.export_onnx(model, SAMPLE, swapped, exporter, cache)
        export.export_onnx(model, SAMPLE, fresh, exporter)  # no cache: the exporter itself
        for batch in (3, 37):
            got, expected = _outputs(swapped, batch), _outputs(fresh, batch)
            assert got.shape == (batch, 10)
            assert float(abs(got - expected).max()) <= 1e-6
        assert export.check_onnx(model, swapped, torch.rand(37, 1, 28, 28)) <= 1e-5
        loaded = onnx.load(str(swapped), load_external_data=False)
        assert all(i.data_location == onnx.TensorProto.DEFAULT for i in loaded.graph.initializer)
        assert loaded.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named axis
        assert not [p.key for p in loaded.metadata_props if p.key.startswith("trainjob.")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".onnx") == ["cache"]
    assert len(_templates(cache)) == 1  # one template, no side files, no temp files


def test_second_export_reuses_the_template(tmp_path: Path, exporter_calls: list[str]) -> None:
    cache = tmp_path / "cache"
    export.export_onnx(_model(1), SAMPLE, tmp_path / "a.onnx", "torchscript", cache)
    assert exporter_calls == ["torchscript"]
    before = _templates(cache)
    export.export_onnx(_model(2), SAMPLE, tmp_path / "b.onnx", "torchscript", cache)
    assert exporter_calls == ["torchscript"]  # not run again
    assert _templates(cache) == before  # the same file, untouched; nothing new written
    assert export.check_onnx(_model(2), tmp_path / "b.onnx", torch.rand(5, 1, 28, 28)) < 1e-5


def test_each_architecture_and_exporter_has_its_own_template(
    tmp_path: Path, exporter_calls: list[str]
) -> None:
    cache = tmp_path / "cache"
    export.export_onnx(_model(1), SAMPLE, tmp_path / "a.onnx", "torchscript", cache)
    small = _model(1, (8, 16))
    export.export_onnx(small, SAMPLE, tmp_path / "b.onnx", "torchscript", cache)
    assert exporter_calls == ["torchscript", "torchscript"]
    assert len(_templates(cache)) == 2
    assert export.check_onnx(small, tmp_path / "b.onnx", torch.rand(5, 1, 28, 28)) < 1e-5
    # The sample's batch size is not part of the key (the axis is dynamic); the classes are.
    export.export_onnx(_model(2, (8, 16)), SAMPLE[:7], tmp_path / "c.onnx", "torchscript", cache)
    assert len(_templates(cache)) == 2 and len(exporter_calls) == 2
    torch.manual_seed(3)
    export.export_onnx(ConvNet([8, 16], 12), SAMPLE, tmp_path / "d.onnx", "torchscript", cache)
    assert len(_templates(cache)) == 3


@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "not onnx"])
def test_damaged_template_is_exported_again(
    damage: str, tmp_path: Path, exporter_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    export.export_onnx(_model(1), SAMPLE, tmp_path / "a.onnx", "torchscript", cache)
    (template,) = (cache / "onnx").iterdir()
    blob = bytearray(template.read_bytes())
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "one byte changed":
        blob[len(blob) // 2] ^= 0x01  # inside a weight: the file still parses
    else:
        blob = bytearray(b"not an onnx model\n")
    template.write_bytes(bytes(blob))
    model = _model(2)
    export.export_onnx(model, SAMPLE, tmp_path / "b.onnx", "torchscript", cache)
    assert exporter_calls == ["torchscript", "torchscript"]
    assert export.check_onnx(model, tmp_path / "b.onnx", torch.rand(5, 1, 28, 28)) < 1e-5
    err = capsys.readouterr().err.splitlines()
    assert err == [f"trainjob: warning: ONNX template {template} is damaged; exporting it again"]
    # Rebuilt: the next job uses it without the exporter.
    export.export_onnx(_model(3), SAMPLE, tmp_path / "c.onnx", "torchscript", cache)
    assert len(exporter_calls) == 2 and len(_templates(cache)) == 1


def test_unwritable_cache_still_exports(
    tmp_path: Path, exporter_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cache = under_a_file(tmp_path, "cache")
    for seed in (1, 2):
        model = _model(seed)
        export.export_onnx(model, SAMPLE, tmp_path / f"{seed}.onnx", "torchscript", cache)
        assert export.check_onnx(model, tmp_path / f"{seed}.onnx", torch.rand(5, 1, 28, 28)) < 1e-5
    assert exporter_calls == ["torchscript", "torchscript"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1  # said once per process
    assert err[0].startswith(
        f"trainjob: warning: cannot cache the ONNX template in {cache / 'onnx'}"
    )
    assert "set TRAINJOB_CACHE_DIR to a writable folder" in err[0]


class _Folded(nn.Module):
    """A batch norm the torchscript exporter folds into the convolution (eval mode): its
    weights have no initializer of their own, so no template can take them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.conv(x)).flatten(1))


def test_model_whose_weights_do_not_map_is_exported_in_full(
    tmp_path: Path, exporter_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = _Folded()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)  # a fold that changes the weights
    for name in ("a", "b"):
        export.export_onnx(model, SAMPLE, tmp_path / f"{name}.onnx", "torchscript", tmp_path / "c")
        assert export.check_onnx(model, tmp_path / f"{name}.onnx", torch.rand(5, 1, 28, 28)) < 1e-5
    assert exporter_calls == ["torchscript"] * 4  # a refused template, then every job in full
    assert not (tmp_path / "c" / "onnx").exists()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("trainjob: warning: _Folded's ONNX export cannot take new weights (")


def test_export_runs_no_forward_hook_of_the_model(tmp_path: Path) -> None:
    """The watcher's and W&B's forward hooks would count the exporter's calls, which only a
    job without a template makes: the exported copy has none, cold cache or warm."""
    calls: list[int] = []
    model = _model(1)
    model.register_forward_hook(lambda *_: calls.append(1))
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    for name in ("a", "b"):
        export.export_onnx(model, SAMPLE, tmp_path / f"{name}.onnx", "torchscript", tmp_path / "c")
    assert calls == []


def test_template_file_is_a_plain_onnx_model(tmp_path: Path) -> None:
    """Inspectable with any ONNX tool; os.replace leaves no temp file behind."""
    export.export_onnx(_model(1), SAMPLE, tmp_path / "a.onnx", "torchscript", tmp_path / "c")
    (template,) = (tmp_path / "c" / "onnx").iterdir()
    onnx.checker.check_model(onnx.load(str(template)), full_check=True)
    assert template.stem.isalnum() and len(template.stem) == 64  # the key: a SHA-256
    assert not [p for p in os.listdir(tmp_path / "c" / "onnx") if p.startswith(".")]
