"""What a job leaves in the project root must not change what the checks say.

`make run` writes `wandb/`, `outputs/`, `checkpoints/` and `data/` into the checkout; `make test`
runs ruff and pytest in the same checkout afterwards. These tests copy the project's sources into
a temporary folder, add those folders there, and run the real ruff on the copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

RUFF = Path(sys.executable).with_name("ruff")
# What one offline `make run` leaves in the root (see .gitignore), each shaped like the real thing.
RUN_LEFTOVERS = {
    "wandb/offline-run-20260101_000000-abc/files/model.onnx": b"",
    "wandb/__init__.py": b"",  # a package-shaped folder is the worst case for import sorting
    "outputs/run.json": b"{}",
    "checkpoints/.keep": b"",
    "data/MNIST/raw/train-labels-idx1-ubyte": b"",
}


def _copy_project(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "src", "tests", "bench"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    return target


@pytest.mark.skipif(not RUFF.exists(), reason=f"ruff is not installed beside {sys.executable}")
def test_ruff_verdict_does_not_depend_on_run_leftovers(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    clean = subprocess.run(
        [str(RUFF), "check", "--no-cache", "src", "tests", "bench"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    for rel, blob in RUN_LEFTOVERS.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    after = subprocess.run(
        [str(RUFF), "check", "--no-cache", "src", "tests", "bench"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert after.returncode == 0, (
        "ruff fails once a run has left its folders in the project root:\n" + after.stdout
    )
