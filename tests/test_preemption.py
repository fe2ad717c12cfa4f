"""Preemption end to end: real processes, real signals, real offline W&B files read back.

One job is interrupted four times in a row (SIGTERM mid-epoch, SIGTERM on the last step of an
epoch, SIGKILL of the process and its wandb-core, SIGINT during the evaluation), its newest
checkpoint is truncated, and it is run to the end; the result must be bit-identical to an
uninterrupted run of the same seed, and the five W&B folders together must hold every history
row exactly once. ``preempt_driver.py`` delivers each signal at an exact step; one more test sends
SIGTERM from outside at whatever moment the job is in.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_wandb import fake_wandb
from helpers import ROOT, clean_env, offline_runs, read_offline_run

from trainjob.tracking import history, sync

ARGS = ["--epochs", "2", "--batch_size", "32"]  # 512 examples: 16 steps per epoch, 32 in all
STEPS, BATCH, LOG_EVERY, EVERY_STEPS = 32, 32, 2, 5
DRIVER = ROOT / "tests" / "preempt_driver.py"
SENT = re.compile(r"driver: sent (SIG\w+) at ([\d.]+)")


def job_env(tmp: Path, data: Path, **extra: str) -> dict[str, str]:
    settings = {
        "TRAINJOB_DATA_DIR": str(data),
        "TRAINJOB_DATA_SLICE": "1",
        "TRAINJOB_LOG_EVERY": str(LOG_EVERY),
        "TRAINJOB_WATCH_LOG": "gradients",
        "TRAINJOB_WATCH_FREQ": "5",
        "TRAINJOB_CHECKPOINT_EVERY_S": "0",
        "TRAINJOB_CHECKPOINT_EVERY_STEPS": str(EVERY_STEPS),
    }
    return clean_env(tmp, **{**settings, **extra})


class Result:
    """A finished process: exit code, output, and seconds from the driver's signal to exit."""

    def __init__(self, proc: subprocess.Popen[str], exited_at: float) -> None:
        self.stdout, self.stderr = proc.communicate()
        self.rc = proc.returncode
        sent = SENT.search(self.stderr)
        self.signal = sent.group(1) if sent else None
        self.latency = exited_at - float(sent.group(2)) if sent else None

    def __repr__(self) -> str:
        return f"Result(rc={self.rc}, stderr={self.stderr[-2000:]!r})"


def run_job(env: dict[str, str], cwd: Path, *args: str, signal_at: str | None = None) -> Result:
    command = [sys.executable, "-m", "trainjob"]
    if signal_at:
        command = [sys.executable, str(DRIVER), signal_at]
    proc = subprocess.Popen(
        [*command, *ARGS, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return Result(proc, time.time())


def checkpoint_steps(directory: Path) -> list[int]:
    """The steps of the checkpoints under ``directory``: ``<checkpoint_dir>/<run id>/``, one run
    id per test folder here."""
    return sorted(int(p.name[5:17]) for p in directory.glob("*/ckpt-*.pt"))


def resumed_at(result: Result) -> int:
    found = re.search(r"resuming from \S+ at step (\d+)", result.stderr)
    assert found, result
    return int(found.group(1))


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same job, never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    result = run_job(job_env(tmp, tiny_data), tmp)
    assert result.rc == 0, result
    (run_dir,) = offline_runs(tmp)
    return read_offline_run(run_dir)


@pytest.fixture(scope="module")
def gauntlet(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """One job through every kind of interruption, in one folder (one checkpoint dir)."""
    tmp = tmp_path_factory.mktemp("gauntlet")
    env = job_env(tmp, tiny_data)
    ckpt = tmp / "outputs" / "checkpoints"
    stages: dict[str, Result] = {}
    ckpts: dict[str, list[int]] = {}
    for name, where in [
        ("mid_epoch", "TERM@step:3"),
        ("epoch_end", "TERM@step:16"),  # the last step of the first epoch
        ("sigkill", "KILL@step:24"),  # 4 steps after the periodic checkpoint at 20
        ("eval", "INT@eval"),
    ]:
        stages[name] = run_job(env, tmp, signal_at=where)
        ckpts[name] = checkpoint_steps(ckpt)
        if name == "sigkill":  # resuming with other hyperparameters is refused, nothing changes
            stages["mismatch"] = run_job(env, tmp, "--learning_rate", "0.01")
            ckpts["mismatch"] = checkpoint_steps(ckpt)
    (run_ckpt,) = ckpt.iterdir()  # <checkpoint_dir>/<run id>: every stage resumed one run
    newest = run_ckpt / f"ckpt-{max(ckpts['eval']):012d}.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    stages["final"] = run_job(env, tmp)
    ckpts["final"] = checkpoint_steps(ckpt)
    runs = [read_offline_run(d) for d in offline_runs(tmp)]
    runs.sort(key=lambda r: r.path.name)  # offline-run-<date>_<time>-<id>: oldest first
    return tmp, stages, ckpts, runs


def test_signals_checkpoint_and_exit_143(gauntlet) -> None:
    _, stages, ckpts, _ = gauntlet
    for name, signame in [("mid_epoch", "SIGTERM"), ("epoch_end", "SIGTERM"), ("eval", "SIGINT")]:
        result = stages[name]
        assert result.rc == 143, (name, result)
        assert result.signal == signame
        answer = "stopping the evaluation" if name == "eval" else "checkpointing after this step"
        assert f"got {signame}; {answer}" in result.stderr
        assert "rerun the same command to resume" in result.stderr
        assert "Traceback" not in result.stderr
    assert "stopped at step 3 (epoch 0)" in stages["mid_epoch"].stderr
    assert ckpts["mid_epoch"] == [3]  # the step in flight was finished, then saved
    assert "stopped at step 16 (epoch 0)" in stages["epoch_end"].stderr
    assert ckpts["epoch_end"] == [15, 16]  # periodic every 5 steps, keep the last two
    assert "stopped at step 32 (epoch 2)" in stages["eval"].stderr  # training done, eval not
    assert 32 in ckpts["eval"]  # training's end, written by the last epoch end, before eval


def test_each_restart_resumes_where_the_last_one_stopped(gauntlet) -> None:
    _, stages, _, _ = gauntlet
    assert resumed_at(stages["epoch_end"]) == 3
    assert resumed_at(stages["sigkill"]) == 16
    assert resumed_at(stages["eval"]) == 20


def test_sigkill_loses_at_most_one_checkpoint_interval(gauntlet) -> None:
    _, stages, ckpts, _ = gauntlet
    assert stages["sigkill"].rc == -signal.SIGKILL
    assert ckpts["sigkill"] == [16, 20]
    lost = 24 - resumed_at(stages["eval"])
    assert 0 < lost <= EVERY_STEPS


def test_other_hyperparameters_cannot_resume(gauntlet) -> None:
    _, stages, ckpts, _ = gauntlet
    result = stages["mismatch"]
    assert result.rc == 2, result
    assert "was written with other settings (learning_rate: 0.005 -> 0.01)" in result.stderr
    assert ckpts["mismatch"] == ckpts["sigkill"]


def test_truncated_newest_checkpoint_falls_back_with_a_warning(gauntlet) -> None:
    tmp, stages, ckpts, _ = gauntlet
    final = stages["final"]
    assert final.rc == 0, final
    assert ckpts["eval"] == [30, 32]
    assert re.search(r"warning: damaged checkpoint \S+ckpt-000000000032\.pt", final.stderr)
    assert resumed_at(final) == 30
    assert ckpts["final"] == []  # a finished job leaves no checkpoint to "resume"
    (run_ckpt,) = (tmp / "outputs" / "checkpoints").iterdir()
    assert (run_ckpt / "ckpt-000000000032.pt.damaged").is_file()


def test_interrupted_job_is_bit_identical_to_an_uninterrupted_one(gauntlet, reference) -> None:
    _, _, _, runs = gauntlet
    final = runs[-1].summary
    assert len(final["weights_sha256"]) == 64
    assert final["weights_sha256"] == reference.summary["weights_sha256"]
    assert final["test_accuracy"] == reference.summary["test_accuracy"]
    assert final["examples_seen"] == reference.summary["examples_seen"] == STEPS * BATCH


def test_one_wandb_run_in_five_folders(gauntlet) -> None:
    _, _, _, runs = gauntlet
    assert len(runs) == 5  # one folder per process that got as far as wandb.init
    ids = {r.path.name.rsplit("-", 1)[1] for r in runs}
    assert len(ids) == 1  # the id came from the checkpoint: no TRAINJOB_RUN_ID was set
    assert [r.exit_code for r in runs] == [143, 143, None, 143, 0]  # SIGKILL: no exit record
    for run in (runs[0], runs[1], runs[3]):
        assert run.counts()["preempting"] == 1  # run.mark_preempting(): a sweep requeues it


def test_history_holds_every_step_exactly_once(gauntlet, reference) -> None:
    _, _, _, runs = gauntlet
    rows = [row for run in runs for row in run.history]
    steps = Counter(row["_step"] for row in rows)
    assert steps and max(steps.values()) == 1, steps
    expected = {row["_step"]: row["loss"] for row in reference.history if "loss" in row}
    assert len(expected) == STEPS // LOG_EVERY
    got = {row["_step"]: row["loss"] for row in rows if "loss" in row}
    assert got == expected  # same steps, bit-identical losses
    # and interval means, whose device-side sums the checkpoints carry across the interruptions
    mean = "train/loss_mean"
    assert {r["_step"]: r[mean] for r in rows if "loss" in r} == {
        r["_step"]: r[mean] for r in reference.history if "loss" in r
    }
    # test_accuracy after every epoch (the sweep metric), a row of its own at examples_seen + 1,
    # identical to the uninterrupted run's
    accuracy = {row["_step"]: row["test_accuracy"] for row in rows if "test_accuracy" in row}
    epoch_ends = [STEPS // 2 * BATCH + 1, STEPS * BATCH + 1]  # 2 epochs of 16 steps
    assert sorted(accuracy) == epoch_ends
    assert accuracy == {
        r["_step"]: r["test_accuracy"] for r in reference.history if "test_accuracy" in r
    }
    assert any(k.startswith("gradients/") for row in runs[-2].history for k in row)  # watch works


def test_rows_lost_with_the_killed_process_are_logged_again(gauntlet, reference) -> None:
    # wandb-core writes its file in 32 KiB blocks: the killed process's rows never got there.
    _, stages, _, runs = gauntlet
    killed = {row["_step"] for row in runs[2].history}
    # The rows it logged between its checkpoints at steps 16 and 20: losses at steps 18 and 20,
    # and the first epoch's test_accuracy (at examples_seen + 1 after step 16).
    between = {r["_step"] for r in reference.history if 16 * BATCH < r["_step"] <= 20 * BATCH}
    assert len(between) == 3
    replayed = re.search(r"(\d+) row\(s\) logged again from the checkpoint", stages["eval"].stderr)
    assert replayed, stages["eval"]
    missing = between - killed
    assert int(replayed.group(1)) == len(missing)


def test_offline_fragments_are_synced_together(gauntlet, tmp_path: Path) -> None:
    tmp, stages, _, runs = gauntlet
    hint = re.search(r"upload it with: (trainjob sync .+)", stages["final"].stdout)
    assert hint, stages["final"].stdout
    command = shlex.split(hint.group(1))
    assert command[:2] == ["trainjob", "sync"] and len(command) == 3
    # The printed run folder selects the whole run: its folders, oldest first, except one the
    # SIGKILL left without a single record (only the file header: nothing to upload).
    with_records = [r.path for r in runs if r.records]
    assert len(with_records) >= 4
    (fragments,) = sync.find_runs([Path(command[2])]).values()
    assert [f.path for f in fragments] == with_records
    resumes = [resume for resume, _ in sync.rounds({"r": fragments})]
    assert resumes == [False, *[True] * (len(with_records) - 1)]
    local = sorted(row["_step"] for run in runs for row in run.history)
    with fake_wandb("ok", tmp_path) as server:
        env = clean_env(tmp, WANDB_MODE="online", WANDB_API_KEY="k" * 40, WANDB_BASE_URL=server.url)
        result = subprocess.run(
            [sys.executable, "-m", "trainjob", *command[1:]],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        n = len(with_records)
        assert f"{n} folder(s) ({n - 1} resumed)" in result.stdout
        assert server.uploaded_steps() == local  # each row once, in step order
        assert [r["exitcode"] for r in server.requests() if "exitcode" in r][-1] == 0


def test_transaction_log_reader(reference, tmp_path: Path) -> None:
    log = next(reference.path.glob("run-*.wandb"))
    assert history.last_history_step(log) == STEPS * BATCH + 1
    blob = log.read_bytes()
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(blob[: len(blob) // 3])  # a file cut mid-record, as after SIGKILL
    step = history.last_history_step(cut)
    assert step is None or step < STEPS * BATCH + 1
    (tmp_path / "other.wandb").write_bytes(b"not a transaction log")
    assert history.last_history_step(tmp_path / "other.wandb") is None


def test_external_sigterm_at_any_moment(tiny_data: Path, tmp_path: Path, reference) -> None:
    """SIGTERM from outside, as the kubelet sends it, while the job trains."""
    env = job_env(
        tmp_path, tiny_data, TRAINJOB_RUN_ID="k8s-job-7", TRAINJOB_CHECKPOINT_EVERY_STEPS="1"
    )
    ckpt = tmp_path / "outputs" / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainjob", *ARGS],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(ckpt.glob("k8s-job-7/ckpt-*.pt")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = proc.communicate()
    assert proc.returncode == 143, stderr
    stopped = int(re.search(r"stopped at step (\d+)", stderr).group(1))
    assert 1 <= stopped < STEPS
    print(f"SIGTERM to exit: {seconds:.2f} s (external, stopped at step {stopped})")

    result = run_job(env, tmp_path)
    assert result.rc == 0, result
    assert resumed_at(result) == stopped
    runs = [read_offline_run(d) for d in offline_runs(tmp_path)]
    assert len(runs) == 2 and all(r.path.name.endswith("-k8s-job-7") for r in runs)
    final = max(runs, key=lambda r: r.path.name).summary
    assert final["weights_sha256"] == reference.summary["weights_sha256"]
    steps = Counter(row["_step"] for run in runs for row in run.history)
    assert max(steps.values()) == 1


def test_time_from_signal_to_exit_is_reported(gauntlet) -> None:
    _, stages, _, _ = gauntlet
    latencies = {n: r.latency for n, r in stages.items() if r.latency is not None and r.rc == 143}
    assert set(latencies) == {"mid_epoch", "epoch_end", "eval"}
    assert all(v > 0 for v in latencies.values())
    report = ", ".join(f"{n} {v:.2f} s" for n, v in latencies.items())
    print(f"signal to exit: {report} (grace period: 30 s)")  # reported, never asserted


def test_sigterm_after_evaluation_lets_the_job_complete(tiny_data: Path, tmp_path: Path) -> None:
    """A SIGTERM once training and evaluation are over: the job says it is finishing (not
    "checkpointing", which it would not do) and completes: exit 0, model, complete W&B run."""
    result = run_job(job_env(tmp_path, tiny_data), tmp_path, signal_at="TERM@done")
    assert result.rc == 0 and result.signal == "SIGTERM", result
    said = [ln for ln in result.stderr.splitlines() if ln.startswith("trainjob: got SIGTERM")]
    assert said == [
        "trainjob: got SIGTERM; finishing: training is done, the run completes (exit 0)"
    ]
    (run_dir,) = offline_runs(tmp_path)
    run = read_offline_run(run_dir)
    assert run.exit_code == 0 and "test_accuracy" in run.summary
    assert (tmp_path / "outputs" / "model.onnx").is_file()
