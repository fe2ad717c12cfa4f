"""How a sweep trial ends early: the sweep metric at every epoch end, and a stop from the sweep.

Per epoch: ``test_accuracy`` on the test split after every epoch but the last (the job's own
final evaluation is the last one), each a history row of its own at ``examples_seen + 1``, so
that W&B's hyperband (server or ``sweeps.stop_runs``) has one value per epoch to compare.

A stop comes from outside, any time: ``STOP_SIGNAL`` (SIGUSR2, sent by ``trainjob agent`` on W&B's
``stop`` command and by ``trainjob sweep run``) or W&B's own stop check (the SDK polls the run's
stop status and calls ``wandb.Settings.stop_fn``, wandb/sdk/lib/run_stopping.py; its default,
SIGINT to the main thread, would look like a preemption here). Either only sets a flag; the loop
ends after its current step with ``TrialStopped`` (exit 6): no checkpoint, the run closed.

Offline early termination (``trainjob sweep run``): the sweep driver leaves its rule
(records.RULE_FILE) in the trial's output folder: the sweep's ``metric`` and
``early_terminate`` and every earlier trial's per-epoch values. At each epoch end this trial
asks W&B's engine (``sweeps.stop_runs``) whether it trails, and stops between two epochs if so
(sweep/stop.py). The run folder's ``epochs.json`` (records.EPOCHS_FILE) holds its own values.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StorageError, TrialStopped
from .metrics import PER_EPOCH
from .records import read_epoch_values, write_epoch_values
from .sweep.stop import STOP_SIGNAL, EarlyTermination
from .train import Hooks, Progress

# A stop that came before the job installed its ``StopRequest`` (during start-up, data loading):
# SIGUSR2's default action would kill the process, which would then look like a crash.
_EARLY: list[str] = []


def listen_early() -> None:
    """Keep a stop that arrives from now on until the job's ``StopRequest`` takes over."""
    signal.signal(STOP_SIGNAL, lambda *_: _EARLY.append("stopped by its sweep"))


class StopRequest:
    """A stop asked for from outside the loop (a signal, W&B's stop check): a flag, read by the
    loop between steps. The first request wins; later ones change nothing."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(STOP_SIGNAL, self._on_signal)
        if _EARLY:
            self.request(_EARLY[0])

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(STOP_SIGNAL, self._previous)
            self._previous = None

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.request("stopped by its sweep")

    def from_wandb(self) -> None:
        """``wandb.Settings(stop_fn=...)``: called from one of W&B's threads."""
        self.request("stopped from W&B (the run's stop status)")

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            print(f"trainjob: {reason}; ending after this step", file=sys.stderr, flush=True)

    def check(self, progress: Progress) -> None:
        if self.reason is not None:
            raise TrialStopped(
                f"{self.reason}: ended at step {progress.step} (epoch {progress.epoch}); not a "
                "failure, no checkpoint kept"
            )


class EpochEnd(Hooks):
    """The loop's hooks for a job: per-epoch metric and stops, then ``inner`` (checkpoints).

    A stop is checked before ``inner`` runs, so a stopped trial writes no checkpoint."""

    def __init__(
        self,
        inner: Hooks,
        stop: StopRequest,
        evaluate: Callable[[], float],
        history: Any,
        epochs: int,
        rule_folder: Path,
        run_folder: Path,
        progress: Progress,
    ) -> None:
        self.inner = inner
        self.stop = stop
        self.evaluate = evaluate
        self.history = history
        self.epochs = epochs
        self.run_folder = run_folder
        self.rule = EarlyTermination.load(rule_folder)
        # A resumed job keeps the values of the epochs it does not run again.
        self.values: list[float] = read_epoch_values(run_folder, PER_EPOCH[0])[: progress.epoch]

    def after_step(self, progress: Progress) -> None:
        self.stop.check(progress)
        self.inner.after_step(progress)

    def after_epoch(self, progress: Progress) -> None:
        self.stop.check(progress)
        if progress.epoch < self.epochs:
            value = self.evaluate()
            self.history.log({PER_EPOCH[0]: value}, step=progress.examples_seen + 1)
            self.record(value)
            reason = self.rule.trails(self.values) if self.rule is not None else None
            if reason is not None:
                self.stop.request(reason)
                self.stop.check(progress)
        self.inner.after_epoch(progress)

    def during_eval(self, progress: Progress) -> None:
        self.stop.check(progress)
        self.inner.during_eval(progress)

    def record(self, value: float) -> None:
        """One epoch's value, kept in the run folder's ``epochs.json`` for the sweep driver."""
        self.values.append(float(value))
        with contextlib.suppress(StorageError):  # best effort: the W&B history has every value
            write_epoch_values(self.run_folder, PER_EPOCH[0], self.values)
