"""W&B failures against a real local HTTP server (tests/fake_wandb.py) as WANDB_BASE_URL, in
online mode with a canary API key: refused, 500, hanging, dying mid-run, rejecting the key.
Each job is a real ``python -m trainjob``; its offline/online run files are read back, the
printed ``trainjob sync`` / ``wandb sync`` command is run against a live fake server, and every
byte the jobs wrote is searched for the key."""

from __future__ import annotations

import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_wandb import fake_wandb
from helpers import clean_env, offline_runs, read_offline_run, run_cli, wandb_cli

from trainjob.tracking.sync import hint

CANARY = f"canary-{secrets.token_hex(20)}"  # a well-formed key (40+ chars) no server knows
EPOCHS, BATCH, LOG_EVERY, TRAIN = 2, 64, 2, 512
LOSS_ROWS = TRAIN // BATCH * EPOCHS // LOG_EVERY
ALL_STEPS = [BATCH * LOG_EVERY * (i + 1) for i in range(LOSS_ROWS)]  # step = examples seen
TIMEOUT_S = "3"  # TRAINJOB_WANDB_INIT_TIMEOUT / _FINISH_TIMEOUT in these tests (default 15/60)


def online_env(tmp: Path, data: Path, url: str, **extra: str) -> dict[str, str]:
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    return clean_env(
        tmp,
        WANDB_MODE="online",
        WANDB_API_KEY=CANARY,
        WANDB_BASE_URL=url,
        TMPDIR=str(tmp / "tmp"),  # so that every file the job writes is under ``tmp``
        TRAINJOB_DATA_DIR=str(data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_LOG_EVERY=str(LOG_EVERY),
        TRAINJOB_WANDB_INIT_TIMEOUT=TIMEOUT_S,
        TRAINJOB_WANDB_FINISH_TIMEOUT=TIMEOUT_S,
        **extra,
    )


def run_job(tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(["--epochs", str(EPOCHS), "--batch_size", str(BATCH)], env, tmp, timeout=300)


def loss_steps(run_dir: Path) -> list[int]:
    return [h["_step"] for h in read_offline_run(run_dir).history if "loss" in h]


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("trainjob: error:")]


# Every job of this module, for the secrets scan at the end: (tmp dir, result).
JOBS: list[tuple[Path, subprocess.CompletedProcess[str]]] = []


@pytest.fixture(scope="module", params=["refuse", "500", "hang"])
def outage(
    request: pytest.FixtureRequest, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
):
    tmp = tmp_path_factory.mktemp(f"outage-{request.param}")
    with fake_wandb(request.param, tmp) as server:
        result = run_job(tmp, online_env(tmp, tiny_data, server.url))
        requests = server.requests()
    JOBS.append((tmp, result))
    return request.param, tmp, result, requests


def test_unreachable_server_goes_offline_trains_to_the_end(outage) -> None:
    mode, tmp, result, requests = outage
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "unreachable" in result.stderr and "continuing offline" in result.stderr
    (run_dir,) = offline_runs(tmp)  # one run, offline, in this same process
    assert f"upload it with: {hint(run_dir)}\n" in result.stdout
    run = read_offline_run(run_dir)
    assert loss_steps(run_dir) == ALL_STEPS  # every step is in the offline files
    assert run.exit_code == 0 and run.summary["test_accuracy"] > 0.5
    assert (tmp / "outputs" / "model.onnx").is_file()
    if mode != "refuse":
        # the credential check is the only contact: wandb.init's own identity check is off,
        # and no run was upserted against a server that never answered
        graphql = [r["op"] for r in requests if r["path"] == "/graphql"]
        assert graphql and set(graphql) == {"Viewer"}


def sync_printed_command(result, tmp: Path, data: Path) -> tuple[list[int], list[int]]:
    """Run the exact ``trainjob sync ...`` / ``wandb sync ...`` the job printed against a live
    fake server; returns (steps the server received, steps in the local run files)."""
    line = next(line for line in result.stdout.splitlines() if "upload it with: " in line)
    argv = shlex.split(line.split("upload it with: ", 1)[1])
    assert argv[0] in ("trainjob", "wandb") and argv[1] == "sync", argv
    local = [h["_step"] for h in read_offline_run(Path(argv[-1])).history]
    program = [sys.executable, "-m", "trainjob"] if argv[0] == "trainjob" else [wandb_cli()]
    with fake_wandb("ok", tmp) as server:  # the server is back
        synced = subprocess.run(
            [*program, *argv[1:]],
            env=online_env(tmp, data, server.url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert synced.returncode == 0, synced.stderr
        return server.uploaded_steps(), local


@pytest.mark.parametrize("outage", ["refuse"], indirect=True)  # the same job as above
def test_printed_sync_command_uploads_every_step(outage, tmp_path: Path, tiny_data: Path) -> None:
    _, _, result, _ = outage
    uploaded, local = sync_printed_command(result, tmp_path, tiny_data)
    assert uploaded == local and set(ALL_STEPS) <= set(uploaded)


@pytest.fixture(scope="module")
def died_mid_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("died")
    with fake_wandb("ok", tmp, die_on_stream=1) as server:
        result = run_job(tmp, online_env(tmp, tiny_data, server.url))
        alive, requests = server.alive, server.requests()
    JOBS.append((tmp, result))
    return tmp, result, alive, requests


def test_server_dying_mid_run_loses_no_history(died_mid_run) -> None:
    tmp, result, alive, requests = died_mid_run
    assert not alive  # it really died ...
    assert "UpsertBucket" in {r.get("op") for r in requests}  # ... after the run was created
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "stopped answering; the model artifact was not logged" in result.stderr
    assert "did not take the run's data within TRAINJOB_WANDB_FINISH_TIMEOUT=3s" in result.stderr
    (run_dir,) = sorted((tmp / "wandb").glob("run-*"))  # an online run folder
    assert f"upload it with: wandb sync --no-skip-online {run_dir}\n" in result.stdout
    assert loss_steps(run_dir) == ALL_STEPS
    assert read_offline_run(run_dir).exit_code == 0
    assert (tmp / "outputs" / "model.onnx").is_file()


def test_sync_after_death_uploads_every_step(died_mid_run, tmp_path: Path, tiny_data: Path) -> None:
    _, result, _, _ = died_mid_run
    uploaded, local = sync_printed_command(result, tmp_path, tiny_data)
    assert uploaded == local and set(ALL_STEPS) <= set(uploaded)


def test_rejected_key_exits_2_before_any_training(tmp_path: Path, tiny_data: Path) -> None:
    with fake_wandb("401", tmp_path) as server:
        started = time.monotonic()
        result = run_job(tmp_path, online_env(tmp_path, tiny_data, server.url))
        print(f"401: exit {result.returncode} after {time.monotonic() - started:.1f}s")
    JOBS.append((tmp_path, result))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = error_lines(result)
    assert f"the W&B server {server.url} rejected WANDB_API_KEY (HTTP 401)" in line
    # before any data was loaded (the env line follows the data) and before any run existed
    assert '"torch"' not in result.stderr and not (tmp_path / "wandb").exists()
    assert not (tmp_path / "outputs" / "model.onnx").exists()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("short", "API key must have 40+ characters"),
        (None, "WANDB_MODE=online but no W&B API key is configured"),
    ],
)
def test_malformed_or_missing_key_exits_2(
    key: str | None, expected: str, tmp_path: Path, tiny_data: Path
) -> None:
    with fake_wandb("refuse", tmp_path) as server:
        env = online_env(tmp_path, tiny_data, server.url)
    if key is None:
        del env["WANDB_API_KEY"]
    else:
        env["WANDB_API_KEY"] = key
    result = run_job(tmp_path, env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert expected in line and (key is None or key not in line)


def test_api_key_never_written_anywhere(died_mid_run) -> None:
    """Every byte under every job's folder (run files incl. the binary .wandb, W&B's logs, the
    ONNX model, checkpoints, temp files) plus stdout/stderr: no canary. Covers the job that
    talked to a live server (and then lost it), and every other job this module ran before."""
    canary = CANARY.encode()
    scanned = 0
    for tmp, result in JOBS:
        assert CANARY not in result.stdout + result.stderr
        for path in tmp.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert canary not in path.read_bytes(), path
                scanned += 1
    kinds = {p.suffix for tmp, _ in JOBS for p in tmp.rglob("*") if p.is_file()}
    assert {".wandb", ".onnx", ".log"} <= kinds  # the scan did cover the files that matter
    assert scanned > 20
