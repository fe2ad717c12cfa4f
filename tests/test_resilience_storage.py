"""Storage: unwritable output, checkpoint and W&B folders are refused
at start, before any training (exit 5); a full disk while writing a checkpoint or the model
keeps the previous good file and says so (exit 5). "Full" is a real small tmpfs where mount is
allowed (ENOSPC), and a file size limit everywhere (RLIMIT_FSIZE: EFBIG, same code path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SRC, clean_env, offline_runs, read_offline_run, run_cli
from storage_helpers import file_size_limit, fill, small_tmpfs, under_a_file

from trainjob import checkpoint, data, export
from trainjob.errors import StorageError
from trainjob.model import ConvNet


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainjob: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    "variable",
    ["TRAINJOB_OUTPUT_DIR", "TRAINJOB_CHECKPOINT_DIR", "WANDB_DIR", "WANDB_CACHE_DIR", "TMPDIR"],
)
def test_unwritable_folder_is_refused_before_training(
    variable: str, tiny_data: Path, tmp_path: Path
) -> None:
    blocked = under_a_file(tmp_path, "target")
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), **{variable: str(blocked)})
    result = run_cli(["--epochs=1"], env, tmp_path, timeout=180)
    assert result.returncode == 5, result.stderr
    line = _one_error_line(result)
    assert f"{variable}={blocked} is not writable" in line and f"point {variable} at" in line
    assert '"torch"' not in result.stderr  # the environment line comes after the data: never
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "outputs" / "model.onnx").exists()


# --- a full disk, unit level: the previous file survives, no temp file is left -----------------

_WRITE_TWICE = """
import sys, torch
from pathlib import Path
from trainjob import checkpoint, export
from trainjob.errors import StorageError
from trainjob.model import ConvNet
what, folder, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
import resource
if what == "checkpoint":
    target = folder / "ckpt-000000000001.pt"
    write = lambda size: checkpoint.write_atomic(target, b"x" * size)
else:
    target = folder / "model.onnx"
    model = ConvNet([16, 32], 10)
    write = lambda size: export.export_onnx(model, torch.zeros(2, 1, 28, 28), target, "torchscript")
write(1000)  # the previous good file (written before the limit)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    write(10 * limit)
except StorageError as exc:
    print(exc)
"""


@pytest.mark.parametrize(("what", "limit"), [("checkpoint", 4096), ("model", 50_000)])
def test_file_size_limit_keeps_previous_file(what: str, limit: int, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_TWICE, what, str(tmp_path), str(limit)],
        env=clean_env(tmp_path, PYTHONPATH=str(SRC)),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=file_size_limit(1 << 30),  # SIGXFSZ ignored: EFBIG, not death
    )
    assert result.returncode == 0, result.stderr
    name = "ckpt-000000000001.pt" if what == "checkpoint" else "model.onnx"
    assert f"could not write {tmp_path / name}: File too large; the previous file is kept" in (
        result.stdout
    )
    if what == "checkpoint":
        assert (tmp_path / name).read_bytes() == b"x" * 1000
    else:
        import onnx

        onnx.checker.check_model(onnx.load(str(tmp_path / name)))  # still the complete model
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [name]  # no temp


def test_full_tmpfs_keeps_previous_checkpoint_and_model(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", 1024) as disk:
        ckpt = disk / "ckpt-000000000001.pt"
        checkpoint.write_atomic(ckpt, b"good" * 1000)
        model = ConvNet([16, 32], 10)
        export.export_onnx(model, torch.zeros(2, 1, 28, 28), disk / "model.onnx", "torchscript")
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        fill(disk, leave_bytes=8 * 1024)
        with pytest.raises(
            StorageError, match="No space left on device; the previous file is kept"
        ):
            checkpoint.write_atomic(ckpt, b"new" * 100_000)
        with pytest.raises(
            StorageError, match="No space left on device; the previous file is kept"
        ):
            export.export_onnx(model, torch.zeros(2, 1, 28, 28), disk / "model.onnx", "torchscript")
        after = {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"}
        assert after == before  # byte for byte, and no temp files


# --- a full disk in a real job --------------------------------------------------------------


@pytest.fixture
def staged_data(tiny_data_copy: Path, tmp_path: Path) -> Path:
    # Unpack now into the cache the job will use (clean_env's HOME is tmp_path/home): the
    # size-limited job must not write data.
    data.load("MNIST", tiny_data_copy, 1, cache_dir=tmp_path / "home" / ".cache" / "trainjob")
    return tiny_data_copy


def test_job_checkpoint_on_full_disk_exits_5(staged_data: Path, tmp_path: Path) -> None:
    """Every file the job may grow is limited to 250 kB: the run files and the model (~120 kB)
    fit, the first checkpoint (~350 kB) does not."""
    env = clean_env(
        tmp_path,
        TRAINJOB_DATA_DIR=str(staged_data),
        TRAINJOB_WATCH_LOG="none",
        TRAINJOB_LOG_EVERY="2",
    )
    result = subprocess.run(
        [sys.executable, "-m", "trainjob", "--epochs=1", "--batch_size=64", "--data_slice=1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(250_000),
    )
    assert result.returncode == 5, result.stderr
    line = _one_error_line(result)
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()  # <checkpoint_dir>/<run id>
    assert f"could not write {ckpt_dir}/ckpt-" in line and "File too large" in line
    assert not list(ckpt_dir.iterdir())  # no half-written checkpoint, no temp file, no lease
    (run_dir,) = offline_runs(tmp_path)
    run = read_offline_run(run_dir)
    assert run.exit_code == 5  # the W&B run is marked failed with the job's exit code
    assert len([h for h in run.history if "loss" in h]) == 4  # what was logged is kept


def test_job_model_on_full_disk_keeps_previous_model(staged_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with small_tmpfs(out, 256) as disk:
        previous = ConvNet([16, 32], 10)
        export.export_onnx(previous, torch.zeros(2, 1, 28, 28), disk / "model.onnx", "torchscript")
        before = (disk / "model.onnx").read_bytes()
        fill(disk, leave_bytes=16 * 1024)  # room for the start-up check, not for a model
        env = clean_env(
            tmp_path,
            TRAINJOB_DATA_DIR=str(staged_data),
            TRAINJOB_OUTPUT_DIR=str(disk),
            TRAINJOB_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
        )
        result = run_cli(["--epochs=1", "--batch_size=64", "--data_slice=2"], env, tmp_path)
        assert result.returncode == 5, result.stderr
        line = _one_error_line(result)
        record = json.loads((disk / "run.json").read_text())  # the latest job's record
        run_id = record["run_id"]
        assert f"could not write {disk / run_id / 'model.onnx'}: No space left on device" in line
        assert (disk / "model.onnx").read_bytes() == before  # still the previous model
        # No temp files left; the small run record (what sweeps read back) says how it ended,
        # the run's epochs.json holds the per-epoch test_accuracy.
        assert {p.name for p in disk.iterdir()} == {run_id, "filler", "model.onnx", "run.json"}
        assert sorted(p.name for p in (disk / run_id).iterdir()) == ["epochs.json", "run.json"]
        assert record["exit_code"] == 5
