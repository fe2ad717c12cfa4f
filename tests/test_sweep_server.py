"""Sweeps against a W&B server: ``trainjob sweep create`` and ``trainjob agent`` as real processes,
driven by W&B's own client code (wandb.sweep, wandb.agent, wandb-core) against the local
stand-in tests/fake_wandb.py, which hands out the trials of a plan, ``stop`` and ``exit``.

What the stand-in cannot show: W&B's real server deciding *when* hyperband stops a run (its
scheduler; offline, the same engine is exercised in tests/test_sweep_run.py) and the state
the web UI then shows. Every call wandb makes must be one the stand-in knows
(``unknown_ops``), so a wandb upgrade that talks differently fails here by name.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from fake_wandb import WANDB_VERSION, FakeServer, fake_wandb
from helpers import ROOT, clean_env, run_cli

KEY = f"canary-{secrets.token_hex(20)}"  # well-formed; the stand-in takes any key
SWEEP = "fake-entity/p/sw0001"
LONG = {"epochs": 400, "learning_rate": 0.01}  # runs until stopped


def env_for(tmp: Path, data: Path, url: str, **extra: str) -> dict[str, str]:
    settings = {
        "TRAINJOB_DATA_DIR": str(data),
        "TRAINJOB_DATA_SLICE": "1",
        "TRAINJOB_EPOCHS": "1",
        "TRAINJOB_BATCH_SIZE": "64",
        "TRAINJOB_WATCH_LOG": "none",
        "TRAINJOB_WANDB_INIT_TIMEOUT": "3",
        "TRAINJOB_WANDB_FINISH_TIMEOUT": "5",
        **extra,
    }
    return clean_env(tmp, WANDB_MODE="online", WANDB_API_KEY=KEY, WANDB_BASE_URL=url, **settings)


def start_agent(tmp: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    env = {**env, "TRAINJOB_SWEEP_ID": SWEEP}
    cmd = [sys.executable, "-m", "trainjob", "agent"]
    return subprocess.Popen(
        cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def records(tmp: Path) -> dict[str, dict]:
    folder = tmp / "outputs" / "sweeps" / "sw0001"
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/run.json"))}


def wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def training(server: FakeServer, run: str) -> bool:
    """The trial's run exists and has sent history (it is in its training loop)."""
    return any(r.get("run") == run and r.get("history") for r in server.requests())


def finish(agent: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = agent.communicate(timeout=timeout)
    return agent.returncode, out, err


def no_unknown_calls(server: FakeServer) -> None:
    unknown = server.unknown_ops()
    assert not unknown, f"wandb {version('wandb')} made calls the stand-in does not know: {unknown}"


def test_stand_in_speaks_this_wandb() -> None:
    assert version("wandb") == WANDB_VERSION, "re-check tests/fake_wandb.py against this wandb"


def test_sweep_create_then_agent_runs_the_plan_and_exits(tmp_path: Path, tiny_data: Path) -> None:
    plan = [{"learning_rate": 0.01, "kernels": [4, 8]}, {"batch_size": 32, "kernels": [8, 16]}]
    with fake_wandb("ok", tmp_path, plan=plan) as server:
        env = env_for(tmp_path, tiny_data, server.url)
        created = run_cli(["sweep", "create", str(ROOT / "sweep.yaml")], env, tmp_path)
        assert created.returncode == 0, created.stderr[-2000:]
        assert "sweep: pytorch-demo/sw0001" in created.stdout.splitlines()
        (upsert,) = server.ops("UpsertSweep")
        sent = upsert["variables"]["config"]
        assert "early_terminate" in sent and "hyperband" in sent  # the file as written

        code, out, err = finish(start_agent(tmp_path, env))
        assert code == 0, err[-3000:]  # the stand-in said "exit": the agent is gone
        assert "trial trial001: train --learning_rate=0.01 --kernels=[4, 8]" in out
        assert "trial trial002: train --batch_size=32 --kernels=[8, 16]" in out
        runs = {
            r["variables"]["name"]: json.loads(r["variables"]["config"])
            for r in server.ops("UpsertBucket")
        }
        assert runs["trial001"]["kernels"]["value"] == [4, 8]  # the handed-out values, lists too
        assert runs["trial002"]["batch_size"]["value"] == 32
        assert server.exit_codes() == {"trial001": 0, "trial002": 0}
        assert {k: r["exit_code"] for k, r in records(tmp_path).items()} == {
            "trial001": 0,
            "trial002": 0,
        }
        no_unknown_calls(server)


def test_stop_ends_the_trial_as_stopped_and_extra_stops_are_harmless(
    tmp_path: Path, tiny_data: Path
) -> None:
    """W&B's ``stop`` (the UI's button, hyperband on the server) for the running trial: it ends
    with exit 6 between two steps, its run closed with exit code 6, no checkpoint. Two stops
    for one trial, and a stop for a trial that already ended, change nothing."""
    with fake_wandb("ok", tmp_path, plan=[LONG, LONG]) as server:
        agent = start_agent(tmp_path, env_for(tmp_path, tiny_data, server.url))
        wait_for(lambda: training(server, "trial001"), "trial001 to train")
        server.stop("trial001")
        server.stop("trial001")  # twice
        wait_for(lambda: "trial001" in records(tmp_path), "trial001 to end")
        wait_for(lambda: training(server, "trial002"), "trial002 to train")
        server.stop("trial001")  # already ended
        server.stop("trial002")
        code, out, err = finish(agent)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    assert {k: r["exit_code"] for k, r in records(tmp_path).items()} == {
        "trial001": 6,
        "trial002": 6,
    }
    assert out.count("exited 6 (stopped by the sweep)") == 2
    assert server.exit_codes() == {"trial001": 6, "trial002": 6}
    assert "ended at step" in records(tmp_path)["trial001"]["summary"]["stopped"]
    assert not list((tmp_path / "outputs" / "checkpoints").rglob("ckpt-*.pt"))  # none kept
    no_unknown_calls(server)


def test_wandb_stop_status_stops_a_plain_job(tmp_path: Path, tiny_data: Path) -> None:
    """No agent: the W&B SDK in the job polls the run's stop status (wandb-core keeps what
    the server's file_stream answers) and calls trainjob's stop_fn instead of sending SIGINT,
    which the job would take for a preemption (checkpoint, 143)."""
    with fake_wandb("ok", tmp_path, plan=[]) as server:
        env = env_for(tmp_path, tiny_data, server.url, TRAINJOB_EPOCHS="400")
        job = subprocess.Popen(
            [sys.executable, "-m", "trainjob", "train"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: server.ops("UpsertBucket"), "the run")
        run = server.ops("UpsertBucket")[0]["variables"]["name"]
        server.stop(run)
        code, _, err = finish(job, timeout=120)
    assert code == 6, err[-3000:]
    assert "trainjob: stopped: stopped from W&B (the run's stop status)" in err
    assert server.exit_codes() == {run: 6}
    assert not list((tmp_path / "outputs" / "checkpoints").rglob("ckpt-*.pt"))
    no_unknown_calls(server)


def test_three_failed_trials_in_a_row_end_the_agent_with_7(tmp_path: Path, tiny_data: Path) -> None:
    plan = [{"batch_size": 4096}, {"batch_size": 8192}, {"batch_size": 16384}, {"batch_size": 32}]
    with fake_wandb("ok", tmp_path, plan=plan) as server:
        code, out, err = finish(start_agent(tmp_path, env_for(tmp_path, tiny_data, server.url)))
    assert code == 7, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("trainjob: error:")]
    assert lines[-1].startswith("trainjob: error: 3 trials failed in a row"), lines
    assert "trial trial004" not in out  # the fourth never ran
    no_unknown_calls(server)


def test_sigterm_to_the_agent_checkpoints_the_trial_and_exits_143(
    tmp_path: Path, tiny_data: Path
) -> None:
    with fake_wandb("ok", tmp_path, plan=[LONG]) as server:
        agent = start_agent(tmp_path, env_for(tmp_path, tiny_data, server.url))
        wait_for(lambda: training(server, "trial001"), "trial001 to train")
        agent.send_signal(signal.SIGTERM)  # as Kubernetes signals the pod's PID 1
        code, _, err = finish(agent)
    assert code == 143, err[-3000:]
    assert records(tmp_path)["trial001"]["exit_code"] == 143
    # Kept for the requeued run to resume (checkpoints are keyed by the W&B run id).
    assert list((tmp_path / "outputs" / "checkpoints" / "trial001").glob("ckpt-*.pt"))


@pytest.mark.parametrize("command", [["agent"], ["sweep", "create", str(ROOT / "sweep.yaml")]])
@pytest.mark.parametrize(
    ("mode", "exit_code", "message"),
    [
        ("refuse", 8, "no answer from the W&B server at WANDB_BASE_URL="),
        ("hang", 8, "no answer within 3s"),
        ("401", 2, "rejected WANDB_API_KEY (HTTP 401)"),
    ],
)
def test_server_unreachable_or_key_refused(
    command: list[str], mode: str, exit_code: int, message: str, tmp_path: Path, tiny_data: Path
) -> None:
    """Neither command can fall back offline: one line, exit 8 when no server answers at that
    URL (at once when the connection is refused; after TRAINJOB_WANDB_INIT_TIMEOUT when it
    hangs), exit 2 when one answers and refuses the key."""
    with fake_wandb(mode, tmp_path) as server:
        env = env_for(tmp_path, tiny_data, server.url, TRAINJOB_SWEEP_ID=SWEEP)
        started = time.monotonic()
        result = run_cli(command, env, tmp_path, timeout=60)
        took = time.monotonic() - started
    err = result.stderr.strip().splitlines()
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("trainjob: error:") and message in err[0], err
    assert KEY not in result.stderr + result.stdout
    print(f"{mode} {' '.join(command[:2])}: exit {result.returncode} after {took:.1f} s")
