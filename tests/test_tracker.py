"""The job's W&B run (tracking/run.py ``Tracker``): rows go to W&B from a thread of their own,
and W&B sees the same calls, in the same order, as if the training thread made them.

A stand-in for the W&B run records every call and the thread it came from; its ``log`` can be
held closed, so that rows queue up behind it (no test times anything).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from trainjob.tracking import run as tracking
from trainjob.tracking.watch import Watcher


class Run:
    """The calls ``Tracker`` makes on a W&B run, recorded with the calling thread's name."""

    id = "abc123"
    dir = "/nonexistent/files"
    starting_step = 0

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, Any, str]] = []
        self.fail_at, self.logged = fail_at, 0
        self.gate = threading.Event()  # log waits until the test opens it
        self.gate.set()
        self.summary = Summary(self)

    def record(self, name: str, value: Any) -> None:
        self.calls.append((name, value, threading.current_thread().name))

    def log(self, data: dict[str, Any], step: int) -> None:
        self.gate.wait()
        self.logged += 1
        if self.logged == self.fail_at:
            raise RuntimeError("the service went away")
        self.record("log", (step, sorted(data)))

    def watch(self, *args: Any, **kwargs: Any) -> None:
        self.record("watch", kwargs)

    def mark_preempting(self) -> None:
        self.record("mark_preempting", None)

    def finish(self, exit_code: int = 0) -> None:
        self.record("finish", exit_code)


class Summary:
    def __init__(self, run: Run) -> None:
        self.run = run

    def __setitem__(self, key: str, value: Any) -> None:
        self.run.record("summary", key)


def test_rows_reach_wandb_in_order_and_before_any_other_call() -> None:
    run = Run()
    tracker = tracking.Tracker(run, "offline")
    model = torch.nn.Linear(3, 2)
    watcher = Watcher(model, "parameters", 1)
    tracker.watch(model, torch.nn.MSELoss(), "parameters", 1, watcher)
    run.gate.clear()  # W&B takes nothing until every row is queued: the loop never waits
    for step in range(1, 21):
        model(torch.ones(1, 3))  # a firing: the parameters' histograms join the open row
        tracker.log({"train/loss": 1.0 / step}, step=step)
    assert run.logged == 0
    run.gate.set()
    model(torch.ones(1, 3))  # after the last row (an evaluation): logged at finish
    tracker.summary({"test_accuracy": 0.9})
    tracker.mark_preempting()
    tracker.finish(exit_code=143)
    logs = [value for name, value, _ in run.calls if name == "log"]
    # each firing's histograms join the row open when it fired (the one before the step's own
    # row; W&B's row 0 before the first), logged when the next row closes it, the last ones at
    # finish: exactly the calls the training thread made before rows had a thread of their own
    histograms = ["parameters/bias", "parameters/weight"]
    expected = [(0, histograms)]
    for step in range(1, 21):
        expected += [(step, ["train/loss"]), (step, histograms)]
    assert logs == expected
    order = [name for name, _, _ in run.calls[-4:]]
    assert order == ["summary", "mark_preempting", "log", "finish"]  # finish's flush, then W&B's
    assert {thread for name, _, thread in run.calls if name == "log"} == {"trainjob-wandb-log"}


def test_an_error_in_run_log_is_raised_on_the_training_thread() -> None:
    run = Run(fail_at=3)
    tracker = tracking.Tracker(run, "offline")
    run.gate.clear()
    for step in range(1, 6):
        tracker.log({"train/loss": 0.5}, step=step)  # all five queued, none taken yet
    run.gate.set()
    with pytest.raises(RuntimeError, match="the service went away"):
        tracker.summary({"test_accuracy": 0.9})  # waits for the rows: the third one failed
    tracker.log({"train/loss": 0.5}, step=6)  # raised once: the job decides what follows
    tracker.finish(exit_code=1)
    steps = [value[0] for name, value, _ in run.calls if name == "log"]
    assert steps == [1, 2, 6]  # 4 and 5, queued behind the failing row, were dropped
    assert run.calls[-1][0] == "finish"


def test_wandbs_own_hooks_get_the_rows_on_the_training_thread() -> None:
    """``run.watch``'s hooks log into the row open when they fire, from the training thread:
    once they are installed, rows are logged on that thread too."""
    run = Run()
    tracker = tracking.Tracker(run, "offline")
    tracker.log({"train/loss": 1.0}, step=1)  # before watch: a resumed job's first row
    tracker.watch(torch.nn.Linear(3, 2), torch.nn.MSELoss(), "all", 10)
    tracker.log({"train/loss": 0.5}, step=2)
    assert [name for name, _, _ in run.calls] == ["log", "watch", "log"]
    assert run.calls[-1][2] == threading.current_thread().name


def test_a_disabled_run_logs_on_the_calling_thread() -> None:
    run = Run()
    tracker = tracking.Tracker(run, "disabled")
    assert tracker.sender is None
    tracker.log({"train/loss": 1.0}, step=1)
    assert run.calls == [("log", (1, ["train/loss"]), threading.current_thread().name)]
