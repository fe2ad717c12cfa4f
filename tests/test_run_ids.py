"""A run id means one run: a job never writes into a run that already finished.

Two complete jobs with the same TRAINJOB_RUN_ID (a Kubernetes Job re-applied under the same
name, two people using one shipped name): the second stops with exit 2 and one line, before
any W&B run is created, whether the first run is known from its offline folder under
WANDB_DIR, from trainjob's own run record (``<output_dir>/<run_id>/run.json``), or from the
W&B server (a local stand-in, tests/fake_wandb.py, driven by wandb's own client). An
interrupted run (a checkpoint) still resumes: tests/test_preemption.py.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from fake_wandb import fake_wandb
from helpers import clean_env, offline_runs, read_offline_run, run_cli

RUN_ID = "shared-name"
ARGS = ["--epochs", "1", "--batch_size", "64", "--data_slice", "1"]


def job_env(tmp: Path, data: Path, wandb_dir: Path, out: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        tmp,
        WANDB_DIR=str(wandb_dir),
        TRAINJOB_DATA_DIR=str(data),
        TRAINJOB_OUTPUT_DIR=str(out),
        TRAINJOB_RUN_ID=RUN_ID,
        **extra,
    )


def refused(result, where: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("trainjob: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"TRAINJOB_RUN_ID={RUN_ID}" in errors[0] and "already finished" in errors[0]
    assert where in errors[0], errors[0]
    print(errors[0])


def test_finished_offline_run_is_not_reopened(tiny_data: Path, tmp_path: Path) -> None:
    first = run_cli(ARGS, job_env(tmp_path, tiny_data, tmp_path, tmp_path / "out1"), tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = offline_runs(tmp_path)
    before = read_offline_run(run_dir).counts()
    record = json.loads((tmp_path / "out1" / RUN_ID / "run.json").read_text())
    assert record["exit_code"] == 0 and record["run_id"] == RUN_ID

    # The same WANDB_DIR, another output folder: the run folder's exit record tells.
    second = run_cli(ARGS, job_env(tmp_path, tiny_data, tmp_path, tmp_path / "out2"), tmp_path)
    refused(second, str(run_dir))
    # Another WANDB_DIR, the same output folder: trainjob's run record tells.
    other = tmp_path / "elsewhere"
    third = run_cli(ARGS, job_env(tmp_path, tiny_data, other, tmp_path / "out1"), tmp_path)
    refused(third, str(tmp_path / "out1" / RUN_ID / "run.json"))

    assert offline_runs(tmp_path) == [run_dir] and not offline_runs(other)  # no second run
    assert read_offline_run(run_dir).counts() == before  # the finished run is untouched


def test_finished_online_run_is_not_reopened(tiny_data: Path, tmp_path: Path) -> None:
    online = {
        "WANDB_MODE": "online",
        "WANDB_API_KEY": f"canary-{secrets.token_hex(20)}",
        "TRAINJOB_WANDB_INIT_TIMEOUT": "10",
    }
    with fake_wandb("ok", tmp_path) as server:
        a, b = tmp_path / "a", tmp_path / "b"  # separate folders: only the server knows
        a.mkdir(), b.mkdir()
        env = job_env(a, tiny_data, a, a / "out", WANDB_BASE_URL=server.url, **online)
        first = run_cli(ARGS, env, a)
        assert first.returncode == 0, first.stderr
        upserts = [r for r in server.requests() if r.get("op") == "UpsertBucket"]
        env = job_env(b, tiny_data, b, b / "out", WANDB_BASE_URL=server.url, **online)
        second = run_cli(ARGS, env, b)
        refused(second, f"{server.url} fake-entity/pytorch-demo/{RUN_ID}")
        # the second job asked about the run and did not reopen it
        assert [r for r in server.requests() if r.get("op") == "UpsertBucket"] == upserts
    assert not (b / "wandb").exists() or not list((b / "wandb").glob(f"*-{RUN_ID}"))
