"""Several sweep trials at once (``--parallel_trials``): real agents, real trials, real signals.

Online, ``trainjob agent --parallel_trials 2`` runs two W&B agents (W&B's own client against the
local stand-in tests/fake_wandb.py); each trial is still its own process with its own run,
checkpoint, signal handling and exit code. The local (offline) sweep's parallel trials are in
tests/test_sweep_parallel.py.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fake_wandb import fake_wandb
from test_sweep_server import LONG, SWEEP, env_for, no_unknown_calls, records, training, wait_for

from trainjob.settings import Settings
from trainjob.sweep import parallel
from trainjob.sweep.agent import _overall, _shares, _without


def start_agent(tmp: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    env = {**env, "TRAINJOB_SWEEP_ID": SWEEP}
    return subprocess.Popen(
        [sys.executable, "-m", "trainjob", "agent", *args],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_agents_share_the_plan_and_train_at_once(tmp_path: Path, tiny_data: Path) -> None:
    plan = [{"learning_rate": lr, "epochs": 3} for lr in (0.01, 0.02, 0.03, 0.004)]
    with fake_wandb("ok", tmp_path, plan=plan) as server:
        env = env_for(tmp_path, tiny_data, server.url)
        del env["TRAINJOB_THREADS"]  # the agent divides the CPU threads itself
        agent = start_agent(tmp_path, env, "--parallel_trials", "2")
        out, err = agent.communicate(timeout=400)
        assert agent.returncode == 0, err[-3000:]
        assert "2 trial(s) at once" in out and "1 CPU thread(s) each" in out
        done = records(tmp_path)
        assert sorted(done) == ["trial001", "trial002", "trial003", "trial004"]  # each once
        assert {r["exit_code"] for r in done.values()} == {0}
        assert server.exit_codes() == dict.fromkeys(done, 0)
        # Two trials trained at the same time: their history uploads overlap.
        spans = {
            run: (min(ts), max(ts))
            for run in done
            if (ts := [r["t"] for r in server.requests() if r.get("run") == run and "t" in r])
        }
        ordered = sorted(spans.values())
        assert any(b[0] < a[1] for a, b in itertools.pairwise(ordered)), spans
        no_unknown_calls(server)


def test_sigterm_reaches_every_parallel_trial(tmp_path: Path, tiny_data: Path) -> None:
    with fake_wandb("ok", tmp_path, plan=[LONG, LONG]) as server:
        env = env_for(tmp_path, tiny_data, server.url, TRAINJOB_CHECKPOINT_EVERY_STEPS="5")
        agent = start_agent(tmp_path, env, "--parallel_trials=2")
        wait_for(lambda: training(server, "trial001") and training(server, "trial002"), "2 trials")
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=240)
    assert agent.returncode == 143, err[-3000:]
    done = records(tmp_path)
    assert {k: r["exit_code"] for k, r in done.items()} == {"trial001": 143, "trial002": 143}
    for run in ("trial001", "trial002"):  # each checkpointed in its own run id's folder
        assert list((tmp_path / "outputs" / "checkpoints" / run).glob("ckpt-*.pt")), run


def test_split_of_counts_flags_and_exit_codes() -> None:
    assert _shares(None, 3) == [None, None, None]
    assert _shares(5, 2) == [3, 2] and sum(_shares(7, 3)) == 7
    assert _shares(1, 3) == [1]  # agents with no share are not started
    argv = ["--sweep_count", "4", "--epochs=2", "--parallel_trials=2", "--seed", "3"]
    assert _without(argv, ("--sweep_count", "--parallel_trials")) == ["--epochs=2", "--seed", "3"]
    assert _overall([0, 0], False) == 0
    assert _overall([0, 7], False) == 7 and _overall([2, 8], False) == 8
    assert _overall([0, -15], False) == 143 and _overall([0, 0], True) == 143
    assert _overall([0, 4], False) == 4


def test_auto_picks_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # what thread_count reads first
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu = parallel.plan(Settings(parallel_trials="auto"), explicit_threads=False)
    assert (cpu.trials, cpu.threads) == (6, 1) and "auto: 6 trial(s)" in cpu.why
    assert cpu.env() == {"TRAINJOB_THREADS": "1"}
    two = parallel.plan(Settings(parallel_trials=2), explicit_threads=False)
    assert (two.trials, two.threads) == (2, 3)
    kept = parallel.plan(Settings(parallel_trials=2, threads=4), explicit_threads=True)
    assert kept.threads is None and kept.env() == {}  # the user's TRAINJOB_THREADS stays
    one = parallel.plan(Settings(), explicit_threads=False)
    assert (one.trials, one.threads) == (1, None)  # the default: as before
