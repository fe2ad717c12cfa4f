"""Everything a later `wandb sync` needs is under WANDB_DIR, and each job's outputs are its own.

A job is run offline with W&B's data and cache folders left at their defaults (HOME is a
temporary folder); its WANDB_DIR is then copied elsewhere and the original deleted, as when the
folder is carried to a connected machine. The copy's run is read back with W&B's own reader and
its model artifact's file must be in the copy; `wandb sync --dry-run` lists the run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from helpers import clean_env, offline_runs, read_offline_run, run_cli, wandb_cli

ARGS = ["--epochs", "1", "--batch_size", "64", "--data_slice", "1"]


def test_copying_wandb_dir_carries_the_model_artifact(tiny_data: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    env = clean_env(tmp_path, WANDB_DIR=str(first), TRAINJOB_DATA_DIR=str(tiny_data))
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR"):  # W&B's defaults: the home folder
        env.pop(var)
    result = run_cli(ARGS, env, tmp_path)
    assert result.returncode == 0, result.stderr
    home = tmp_path / "home"
    outside = [p for p in home.rglob("*") if p.is_file() and "artifacts" in p.parts]
    assert outside == [], outside  # no staged copy in ~/.local/share/wandb or ~/.cache/wandb

    moved = tmp_path / "moved"
    shutil.copytree(first, moved, symlinks=True)
    shutil.rmtree(first)
    (run_dir,) = offline_runs(moved)
    run = read_offline_run(run_dir)
    (record,) = [r["artifact"] for r in run.records if r.get("type") == "artifact"]
    (entry,) = record["manifest"]["contents"]
    recorded = Path(entry["local_path"])
    assert recorded.is_relative_to(first), recorded  # recorded under WANDB_DIR ...
    copy = moved / recorded.relative_to(first)  # ... so the copy has it, at the same place
    assert copy.is_relative_to(run_dir)  # in the run folder itself
    digest = base64.b64encode(hashlib.md5(copy.read_bytes()).digest()).decode()
    assert entry["path"] == "model.onnx" and entry["digest"] == digest

    synced = subprocess.run(
        [wandb_cli(), "sync", "--dry-run", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synced.returncode == 0 and "Would sync 1 run(s)" in synced.stderr, synced.stderr


def test_each_run_keeps_its_own_outputs(tiny_data: Path, tmp_path: Path) -> None:
    """Two jobs in one output folder: each model and run record under its run id; the
    top-level model.onnx and run.json lead to the latest; the first is not overwritten."""
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data))
    out = tmp_path / "outputs"
    ids = []
    for _ in range(2):
        result = run_cli(ARGS, env, tmp_path)
        assert result.returncode == 0, result.stderr
        ids.append(json.loads((out / "run.json").read_text())["run_id"])
    assert ids[0] != ids[1]
    for run_id in ids:
        record = json.loads((out / run_id / "run.json").read_text())
        assert record["run_id"] == run_id and record["exit_code"] == 0
        assert (out / run_id / "model.onnx").stat().st_size > 10_000
    assert (out / "model.onnx").resolve() == (out / ids[1] / "model.onnx").resolve()
    assert os.readlink(out / "model.onnx") == f"{ids[1]}/model.onnx"  # relative: movable
