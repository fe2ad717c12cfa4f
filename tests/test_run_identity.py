"""One run id, one training: real jobs, real signals, real offline W&B files read back.

- a run id with history but no checkpoint is refused (exit 10), offline and online, before any
  W&B run is created: a new training never lands in the old run's curve;
- two live jobs with one run id: the second exits 9 naming the holder, the first is untouched;
  a dead holder's lease is taken over (at once on this host, after the ttl elsewhere);
- checkpoints are kept per run id: another run id never resumes them;
- an output folder that turns read-only mid-run ends in exit 5 and one line;
- a job resumed after its last step reports the run's real throughput, not 0.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from fake_wandb import fake_wandb
from helpers import ROOT, clean_env, offline_runs, read_offline_run, run_cli
from storage_helpers import readonly_in_place

from trainjob import records
from trainjob.errors import ExitCode, RunInUse

ARGS = ["--batch_size", "32", "--data_slice", "1", "--log_every", "2"]  # 16 steps an epoch
DRIVER = ROOT / "tests" / "preempt_driver.py"


def job_env(tmp: Path, data: Path, **extra: str) -> dict[str, str]:
    settings = {
        "TRAINJOB_DATA_DIR": str(data),
        "TRAINJOB_CHECKPOINT_EVERY_S": "0",
        "TRAINJOB_CHECKPOINT_EVERY_STEPS": "4",
    }
    return clean_env(tmp, **{**settings, **extra})


def signalled(
    env: dict[str, str], tmp: Path, where: str, *args: str
) -> subprocess.CompletedProcess:
    """The job with a signal at an exact point (tests/preempt_driver.py)."""
    return subprocess.run(
        [sys.executable, str(DRIVER), where, *ARGS, *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )


def long_job(env: dict[str, str], tmp: Path) -> subprocess.Popen[str]:
    """A job that trains far longer than a test waits for it (500 tiny epochs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainjob", *ARGS, "--epochs", "500"],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(proc: subprocess.Popen[str], ready, poll_s: float = 0.05) -> None:
    """Wait (at most 120 s) until ``ready()`` while ``proc`` runs."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(poll_s)


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("trainjob: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- 1. history without a checkpoint -------------------------------------------------------------


def test_history_without_checkpoint_is_refused_offline(tiny_data: Path, tmp_path: Path) -> None:
    env = job_env(tmp_path, tiny_data, TRAINJOB_RUN_ID="lost-ckpt")
    first = signalled(env, tmp_path, "TERM@step:10", "--epochs", "2")
    assert first.returncode == 143, first.stderr
    (run_dir,) = offline_runs(tmp_path)
    before = read_offline_run(run_dir).counts()
    ckpt = tmp_path / "outputs" / "checkpoints" / "lost-ckpt"
    assert list(ckpt.glob("ckpt-*.pt"))
    for path in ckpt.iterdir():  # a pod rescheduled onto a node without its emptyDir
        path.unlink()

    again = run_cli([*ARGS, "--epochs", "2", "--learning_rate", "0.001"], env, tmp_path)
    assert again.returncode == ExitCode.HISTORY_WITHOUT_CHECKPOINT == 10, again.stderr
    line = error_line(again.stderr)
    assert "W&B run lost-ckpt already has history up to step" in line
    assert str(run_dir) in line and "set a new TRAINJOB_RUN_ID" in line
    assert offline_runs(tmp_path) == [run_dir]  # no second folder: nothing was appended
    assert read_offline_run(run_dir).counts() == before

    # The advice works: another run id trains from scratch and finishes.
    fresh = run_cli([*ARGS, "--epochs", "1"], {**env, "TRAINJOB_RUN_ID": "lost-ckpt-2"}, tmp_path)
    assert fresh.returncode == 0, fresh.stderr


def test_history_without_checkpoint_is_refused_online(tiny_data: Path, tmp_path: Path) -> None:
    """Only the server knows the run's history (fresh folders): it is asked before wandb.init."""
    online = {
        "WANDB_MODE": "online",
        "WANDB_API_KEY": f"canary-{secrets.token_hex(20)}",
        "TRAINJOB_WANDB_INIT_TIMEOUT": "10",
        "TRAINJOB_RUN_ID": "server-knows",
    }
    with fake_wandb("ok", tmp_path) as server:
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir(), b.mkdir()
        env = job_env(a, tiny_data, WANDB_BASE_URL=server.url, **online)
        first = signalled(env, a, "TERM@step:10", "--epochs", "2")
        assert first.returncode == 143, first.stderr
        assert server.uploaded_steps(), "the first job's rows reached the server"
        upserts = len(server.ops("UpsertBucket"))
        env = job_env(b, tiny_data, WANDB_BASE_URL=server.url, **online)
        again = run_cli([*ARGS, "--epochs", "2"], env, b)
        assert again.returncode == 10, again.stderr
        line = error_line(again.stderr)
        assert f"{server.url} fake-entity/pytorch-demo/server-knows" in line
        assert len(server.ops("UpsertBucket")) == upserts  # no run was created or reopened
        assert "canary-" not in again.stderr + again.stdout


# --- 2. one live job per run id -----------------------------------------------------------------


def test_second_live_job_with_the_same_run_id_exits_9(tiny_data: Path, tmp_path: Path) -> None:
    env = job_env(tmp_path, tiny_data, TRAINJOB_RUN_ID="twice", TRAINJOB_LEASE_TTL_S="3")
    lease = tmp_path / "outputs" / "checkpoints" / "twice" / records.LEASE_FILE
    first = long_job(env, tmp_path)
    try:
        wait_until(first, lambda: offline_runs(tmp_path))  # the W&B run exists: it trains
        holder = records.Holder.parse(records.read_json(lease))
        assert holder is not None and holder.pid == first.pid

        began = time.monotonic()
        second = run_cli([*ARGS, "--epochs", "1"], env, tmp_path)
        waited = time.monotonic() - began
        assert second.returncode == ExitCode.RUN_IN_USE == 9, second.stderr
        line = error_line(second.stderr)
        assert f"pid {first.pid}" in line and "W&B run twice is being trained" in line
        print(f"second job refused after {waited:.1f} s: {line}")
        assert len(offline_runs(tmp_path)) == 1  # no second W&B run was created
        assert not (tmp_path / "outputs" / "twice" / "run.json").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr  # the first job checkpointed as usual
    assert not lease.exists()  # released on exit: a rerun resumes at once
    record = records.RunRecord.read(tmp_path / "outputs" / "twice" / "run.json")
    assert record is not None and record.exit_code == 143  # the first job's, not overwritten


def test_lease_of_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    # A holder on this host whose process is gone (SIGKILL): taken at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = records.Holder(socket.gethostname(), dead.pid, time.time(), 7, "t1", 30.0, "train")
    records.write_json(path, asdict(stale))
    lease = records.Lease(path, ttl=30.0)
    began = time.monotonic()
    assert lease.try_acquire() is None
    assert time.monotonic() - began < 5
    lease.release()
    # A holder elsewhere that stopped beating: taken after one ttl of no change (our clock).
    elsewhere = records.Holder("other-node", 1, time.time() - 3600 * 24, 3, "t2", 1.0, "train")
    records.write_json(path, asdict(elsewhere))
    began = time.monotonic()
    assert lease.try_acquire() is None
    assert 0.9 <= time.monotonic() - began < 10
    assert records.Holder.parse(records.read_json(path)).token != "t2"
    lease.release()
    assert not path.exists()


def test_live_holder_elsewhere_keeps_its_lease(tmp_path: Path) -> None:
    """A heartbeat that keeps changing means alive, whatever its host's clock says."""
    path = tmp_path / "lease.json"
    holder = records.Holder("other-node", 1, 0.0, 0, "t3", 0.6, "train", pod="agent-0")
    records.write_json(path, asdict(holder))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.2):
            holder.beat += 1
            records.write_json(path, asdict(holder))

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        with pytest.raises(RunInUse, match="pod agent-0 on other-node, pid 1"):
            records.Lease(path, ttl=0.6).acquire()
    finally:
        stop.set()
        thread.join()


# --- 3. checkpoints per run id --------------------------------------------------------------------


def test_another_run_id_never_resumes_a_foreign_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    env = job_env(tmp_path, tiny_data)
    old = signalled(env, tmp_path, "TERM@step:10", "--epochs", "2", "--run_id", "old-run")
    assert old.returncode == 143, old.stderr
    old_ckpt = tmp_path / "outputs" / "checkpoints" / "old-run"
    kept = sorted(p.name for p in old_ckpt.glob("ckpt-*.pt"))
    assert kept

    new = run_cli([*ARGS, "--epochs", "1", "--run_id", "new-run"], env, tmp_path)
    assert new.returncode == 0, new.stderr
    assert "resuming" not in new.stderr  # trained from scratch, as its own run
    assert sorted(p.name for p in old_ckpt.glob("ckpt-*.pt")) == kept  # untouched

    # A checkpoint moved under another run id's folder is refused, not resumed as that run.
    moved = tmp_path / "outputs" / "checkpoints" / "third-run"
    moved.mkdir()
    newest = sorted(old_ckpt.glob("ckpt-*.pt"))[-1]
    (moved / newest.name).write_bytes(newest.read_bytes())
    third = run_cli([*ARGS, "--epochs", "2", "--run_id", "third-run"], env, tmp_path)
    assert third.returncode == 2, third.stderr
    assert "belongs to W&B run old-run, not third-run" in error_line(third.stderr)

    # Without a run id, the same command resumes the interrupted run, and says which.
    (moved / newest.name).unlink()
    again = run_cli([*ARGS, "--epochs", "2"], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming interrupted run old-run" in again.stderr
    assert records.RunRecord.read(tmp_path / "outputs" / "old-run" / "run.json").exit_code == 0


# --- 7. smaller defects --------------------------------------------------------------------------


def test_output_folder_turning_read_only_mid_run_exits_5(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    out.mkdir()
    env = job_env(tmp_path, tiny_data, TRAINJOB_RUN_ID="ro", TRAINJOB_CHECKPOINT_EVERY_STEPS="0")
    proc = long_job(env, tmp_path)
    try:
        wait_until(proc, (out / "ro" / records.EPOCHS_FILE).exists)  # an epoch ended: training
        with readonly_in_place(out):  # the same folder, now read-only (EROFS, root too)
            _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.STORAGE == 5, stderr
    assert "Read-only file system" in error_line(stderr)


def test_resumed_after_the_last_step_reports_the_runs_throughput(
    tiny_data: Path, tmp_path: Path
) -> None:
    env = job_env(tmp_path, tiny_data, TRAINJOB_RUN_ID="late")
    first = signalled(env, tmp_path, "INT@eval", "--epochs", "1")
    assert first.returncode == 143, first.stderr
    again = run_cli([*ARGS, "--epochs", "1"], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "at step 16" in again.stderr  # resumed after the last step: nothing left to train
    summary = json.loads((tmp_path / "outputs" / "late" / "run.json").read_text())["summary"]
    assert summary["perf/train_s"] > 0 and summary["examples_seen"] == 512
    assert summary["perf/samples_per_s"] == pytest.approx(512 / summary["perf/train_s"])
    resumed = offline_runs(tmp_path)[-1]  # offline-run-<date>_<time>-late: the newer folder
    assert read_offline_run(resumed).summary["perf/samples_per_s"] > 0


def test_epoch_values_are_kept_per_run_id(tiny_data: Path, tmp_path: Path) -> None:
    env = job_env(tmp_path, tiny_data)
    for run_id in ("e1", "e2"):
        done = run_cli([*ARGS, "--epochs", "2", "--run_id", run_id], env, tmp_path)
        assert done.returncode == 0, done.stderr
    values = {
        r: records.read_epoch_values(tmp_path / "outputs" / r, "test_accuracy")
        for r in ("e1", "e2")
    }
    assert len(values["e1"]) == len(values["e2"]) == 2  # each run its own two epochs
    assert not (tmp_path / "outputs" / records.EPOCHS_FILE).exists()


def test_help_says_a_sweep_gives_up_with_exit_7() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trainjob", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if "--max_consecutive_failures" in ln)
    assert "(exit 7)" in line and "exit 1" not in line
