"""Offline sweeps with several trials at once (``--parallel_trials``), end to end on tiny data.

Every trial is still a real ``trainjob train`` process of its own (forked from the pre-imported
server) with its own offline W&B run, run id, folder, checkpoint and exit code; the sweep driver
runs them two at a time. Sweeps run in this pytest process (``main([...])``), as in
tests/test_sweep_run.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from pathlib import Path

import pytest
from fake_wandb import silent_listener
from helpers import offline_runs, read_offline_run
from test_sweep_run import METRIC, table, trial_records, write

from trainjob.__main__ import main


def spans(records: dict[str, dict]) -> list[tuple[float, float]]:
    """Each trial's training, as (first, last) wall-clock time of its W&B history rows."""
    out = []
    for record in records.values():
        history = read_offline_run(Path(record["run_dir"])).history
        times = [float(h["_timestamp"]) for h in history if "_timestamp" in h]
        out.append((min(times), max(times)))
    return sorted(out)


def test_two_at_once_with_a_stop_and_a_failure(
    sweep_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A 2-slot grid of 6: two trials train at the same time, the one with a learning rate far
    too small is stopped by hyperband against the others' per-epoch values (running ones too),
    those with a batch larger than the data fail alone (exit 2); each has its own run, folder
    and record."""
    monkeypatch.setenv("TRAINJOB_EPOCHS", "4")
    monkeypatch.setenv("TRAINJOB_WATCH_LOG", "none")
    monkeypatch.setenv("TRAINJOB_MAX_CONSECUTIVE_FAILURES", "5")
    monkeypatch.delenv("TRAINJOB_THREADS")  # the sweep divides the CPU threads itself
    config = {
        "name": "par",
        "method": "grid",
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {
            "learning_rate": {"values": [0.01, 0.005, 0.00001]},
            "batch_size": {"values": [64, 4096]},
        },
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    }
    path = write(sweep_env / "par.yaml", config)
    assert main(["sweep", "run", str(path), "--parallel_trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s) at once, 1 CPU thread(s) each" in out
    rows = table(out)  # every point once (3 learning rates x 2 batch sizes), with its exit
    assert sorted(int(r[1]) for r in rows) == [0, 0, 2, 2, 2, 6], out
    # batch 4096 > 512 examples: each fails alone (exit 2, before any run exists); the tiny
    # learning rate trails the trials that ran beside and before it: stopped between epochs.
    records = trial_records(sweep_env, "par")
    assert sorted(r["exit_code"] for r in records.values()) == [0, 0, 6]
    stopped = next(r for r in records.values() if r["exit_code"] == 6)
    assert "early termination" in stopped["summary"]["stopped"]
    # Nothing shared: one run id, one W&B run folder per trial that started one.
    run_ids = [r["run_id"] for r in records.values()]
    assert len(set(run_ids)) == len(run_ids)
    started = [r for r in records.values() if r["run_dir"]]
    assert len({r["run_dir"] for r in started}) == len(started) == len(offline_runs(sweep_env))
    # Two trials really ran at the same time.
    finished = {k: r for k, r in records.items() if r["exit_code"] == 0}
    (a, b) = spans(finished)
    assert b[0] < a[1], (a, b)
    assert "cost: 6 trial(s) run here" in out and "with 2 slot(s)" in out


def test_sigterm_stops_both_trials_and_a_rerun_resumes_them(
    sweep_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TRAINJOB_EPOCHS", "60")
    monkeypatch.setenv("TRAINJOB_WATCH_LOG", "none")
    monkeypatch.setenv("TRAINJOB_CHECKPOINT_EVERY_STEPS", "4")
    config = {"name": "term2", "method": "grid", "parameters": {"seed": {"values": [1, 2, 3]}}}
    path = write(sweep_env / "t2.yaml", config)

    def terminate_when_both_train() -> None:
        deadline = time.monotonic() + 240
        while len(offline_runs(sweep_env)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGTERM)  # as Kubernetes signals the pod's PID 1

    killer = threading.Thread(target=terminate_when_both_train, daemon=True)
    killer.start()
    assert main(["sweep", "run", str(path), "--parallel_trials=2"]) == 143
    killer.join()
    first = trial_records(sweep_env, "term2")
    assert sorted(r["exit_code"] for r in first.values()) == [143, 143]  # both checkpointed
    assert len(offline_runs(sweep_env)) == 2  # the third point never started
    capsys.readouterr()

    monkeypatch.setenv("TRAINJOB_EPOCHS", "60")
    assert main(["sweep", "run", str(path), "--parallel_trials=2"]) == 0
    done = trial_records(sweep_env, "term2")
    assert sorted(r["exit_code"] for r in done.values()) == [0, 0, 0]
    for key, record in first.items():  # the interrupted ones resumed into their own runs
        assert done[key]["run_id"] == record["run_id"]
        parts = sorted(p for p in offline_runs(sweep_env) if p.name.endswith(record["run_id"]))
        assert len(parts) == 2
        steps = [h["_step"] for p in parts for h in read_offline_run(p).history if "loss" in h]
        assert len(steps) == len(set(steps))  # every row once across the two processes
    assert len(offline_runs(sweep_env)) == 5


def test_random_run_cap_is_exact_and_repeated_points_are_skipped(
    sweep_env: Path, capsys: pytest.CaptureFixture
) -> None:
    config = {
        "name": "rnd2",
        "method": "random",
        "run_cap": 6,
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {"seed": {"values": [1, 2]}, "batch_size": {"values": [32, 64]}},
    }
    path = write(sweep_env / "r2.yaml", config)
    assert main(["sweep", "run", str(path), "--parallel_trials", "2"]) == 0
    out = capsys.readouterr().out
    records = trial_records(sweep_env, "rnd2")
    ran = out.count("trainjob sweep: rnd2 trial ")
    skipped = out.count("has the parameters of trial")
    assert ran + skipped == 6 and len(records) == ran  # run_cap proposals, each run once
    params = [(r["run_id"], k[4:]) for k, r in records.items()]
    assert len({p for _, p in params}) == len(params)  # no two trials with the same parameters
    assert 1 <= len(records) <= 4  # a 2x2 space


def test_a_silent_server_is_asked_once_per_sweep(
    sweep_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Online against a server that accepts and never answers: the driver asks once, within
    TRAINJOB_WANDB_INIT_TIMEOUT, and every trial runs offline from its start, instead of each
    trial waiting that long before it falls back."""
    config = {"name": "silent", "method": "grid", "parameters": {"seed": {"values": [1, 2, 3]}}}
    path = write(sweep_env / "s.yaml", config)
    with silent_listener() as server:
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.setenv("WANDB_API_KEY", f"canary-{secrets.token_hex(20)}")
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        monkeypatch.setenv("TRAINJOB_WANDB_INIT_TIMEOUT", "3")
        began = time.monotonic()
        assert main(["sweep", "run", str(path)]) == 0
        seconds = time.monotonic() - began
        asked = server.connections
    out, err = capsys.readouterr()
    assert out.count("unreachable") == 1 and "every trial runs offline" in out
    runs = [read_offline_run(p) for p in offline_runs(sweep_env)]
    assert len(runs) == 3 and all(r.exit_code == 0 for r in runs)
    assert "going offline" not in err and "continuing offline" not in err  # no trial waited
    assert asked <= 3, asked  # the driver's question only (TCP probe, its W&B client)
    print(f"3 trials against a silent server: {seconds:.1f} s, {asked} connection(s)")
