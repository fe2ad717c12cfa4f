"""Agent mode up to the W&B server call (there is no server here).

``trainjob agent`` hands ``AgentTrial`` to ``wandb.agent(function=...)``; W&B's agent then puts
the trial's run id, sweep id and parameter file in the environment and calls it. Here the
parameter file is written by wandb's own writer and the environment set as W&B's agent sets it;
everything from there on is real: the trial process, its offline run, the failure counting that
stops the agent. The argument and environment checks before the server call are in
tests/test_sweep.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import adopt_env, offline_runs, read_offline_run
from wandb.sdk.lib.config_util import save_config_file_from_dict

from trainjob.records import EPOCHS_FILE
from trainjob.settings import load_settings
from trainjob.sweep.agent import AgentTrial, TooManyFailures
from trainjob.sweep.trials import FailureCounter, SignalForwarder, TrialRunner


@pytest.fixture
def agent_env(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return adopt_env(
        monkeypatch,
        tmp_path,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_EPOCHS="1",
        TRAINJOB_BATCH_SIZE="64",
        # What the agent process itself has (and the trial must not inherit).
        TRAINJOB_SWEEP_ID="me/pytorch-demo/sw33p",
        TRAINJOB_RUN_ID="agent-pod-1",
    )


def wait_for(ready: Callable[[], bool], what: str, thread: threading.Thread) -> None:
    """Poll until ``ready()``; fail, naming ``what``, when the trial's thread ended first or
    four minutes passed (the trial never got there)."""
    deadline = time.monotonic() + 240
    while not ready():
        if not thread.is_alive():
            pytest.fail(f"the trial ended before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no sign of {what} within 240 s")
        time.sleep(0.1)


def give_trial(tmp: Path, monkeypatch: pytest.MonkeyPatch, run_id: str, params: dict) -> None:
    """What W&B's agent does before calling the trial function (wandb/agents/pyagent.py)."""
    path = tmp / "wandb" / "sweep-sw33p" / f"config-{run_id}.yaml"
    save_config_file_from_dict(str(path), {k: {"value": v} for k, v in params.items()})
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p")
    monkeypatch.setenv("WANDB_RUN_ID", run_id)
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(path))


def test_agent_trials_run_in_their_own_process_and_failures_stop_it(
    agent_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    signals = SignalForwarder()
    trial = AgentTrial(load_settings([]), TrialRunner(), FailureCounter(2), signals)
    with signals.active():
        # A value the W&B server proposed but Settings refuses: that trial fails (exit 2) alone.
        give_trial(agent_env, monkeypatch, "bad00001", {"learning_rate": -1.0})
        assert trial.argv() == ["train", "--learning_rate=-1.0"]
        trial()
        # A good one, with a list value spelled as W&B's agent spells it.
        give_trial(agent_env, monkeypatch, "good0001", {"kernels": [4, 8], "learning_rate": 0.01})
        assert trial.argv() == ["train", "--kernels=[4, 8]", "--learning_rate=0.01"]
        trial()
        give_trial(agent_env, monkeypatch, "bad00002", {"batch_size": 0})
        trial()
        give_trial(agent_env, monkeypatch, "bad00003", {"epochs": 0})
        with pytest.raises(TooManyFailures, match="2 trials failed in a row"):
            trial()  # W&B's agent stops when its function raises; agent() then exits 7
    assert trial.results == [2, 0, 2, 2]

    (run_dir,) = offline_runs(agent_env)
    run = read_offline_run(run_dir)
    assert run.run_info["run_id"] == "good0001"  # the id W&B's agent assigned, not the pod's
    assert run.config["kernels"] == [4, 8] and run.config["learning_rate"] == 0.01
    assert run.exit_code == 0 and run.summary["test_accuracy"] > 0
    record = json.loads((agent_env / "outputs/sweeps/sw33p/good0001/run.json").read_text())
    assert record["exit_code"] == 0 and record["run_dir"] == str(run_dir)  # its own folder
    # Exit 2 above is the one-line bad-config path (a traceback exits 1); the trials' own output
    # goes to the fork server's stdout/stderr, which pytest cannot capture per test.
    out = capsys.readouterr().out
    assert "trial good0001: train --kernels=[4, 8] --learning_rate=0.01" in out
    assert "trial bad00003 exited 2" in out


def test_wandb_stop_command_stops_the_trial_process(
    agent_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B's agent stops a run (UI "stop", early termination) by raising in the thread that runs
    the trial function (pyagent._stop_run -> _terminate_thread). The trial process must then
    end as stopped (exit 6, no checkpoint), not train on as an orphan, and the trial function
    returns normally: W&B's agent already marked the run stopped, not failed."""
    from wandb.agents.pyagent import _terminate_thread

    monkeypatch.setenv("TRAINJOB_EPOCHS", "400")  # long enough to be stopped mid-training
    monkeypatch.setenv("TRAINJOB_WATCH_LOG", "none")
    give_trial(agent_env, monkeypatch, "stop0001", {"learning_rate": 0.01})
    trial = AgentTrial(load_settings([]), TrialRunner(), FailureCounter(3), SignalForwarder())
    raised: list[BaseException] = []

    def run_trial() -> None:
        try:
            trial()
        except Exception as exc:  # what W&B's agent catches
            raised.append(exc)

    thread = threading.Thread(target=run_trial)
    thread.start()
    # Stop it mid-training: once its first epoch is over (its run folder, inside the trial's
    # output folder, records each epoch's test accuracy in epochs.json), 399 before its end.
    run_folder = agent_env / "outputs/sweeps/sw33p/stop0001/stop0001"
    wait_for(lambda: (run_folder / EPOCHS_FILE).is_file(), "the trial's first epoch", thread)
    _terminate_thread(thread)
    thread.join(timeout=240)
    assert not thread.is_alive() and raised == []
    record = json.loads((agent_env / "outputs/sweeps/sw33p/stop0001/run.json").read_text())
    assert record["exit_code"] == 6 and trial.results == [6]  # stopped, not preempted
    assert trial.failures.consecutive == 0  # and not a failure
    assert not list((agent_env / "outputs" / "checkpoints").rglob("ckpt-*.pt"))  # none kept
    run = read_offline_run(Path(record["run_dir"]))
    assert run.exit_code == 6 and "stopped by its sweep" in run.summary["stopped"]
    ended = re.search(r"ended at step (\d+) \(epoch (\d+)\)", run.summary["stopped"])
    assert ended and int(ended[2]) >= 1, run.summary["stopped"]  # after the awaited epoch
