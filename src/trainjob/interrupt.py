"""Every way a job is asked to stop, owned by one object, ``Interrupt``.

Two kinds of request, each only a flag set where it arrives and acted on by the loop between
two steps (never in the middle of an ``optimizer.step``):

- **preemption**: SIGTERM (a pod's eviction, a spot node going away), SIGINT (Ctrl-C), SIGUSR1
  (a scheduler's warning). The job checkpoints after the current step and exits 143
  (``Preempted``); the same command resumes it.
- **a sweep's stop**: ``STOP_SIGNAL`` (SIGUSR2, sent by ``trainjob agent`` on W&B's ``stop``
  command and by ``trainjob sweep run``), W&B's own stop check (the SDK polls the run's stop
  status and calls ``wandb.Settings(stop_fn=...)``; its default, SIGINT to the main thread, would
  look like a preemption here) and offline early termination (the epoch-end hook). The trial
  ends after its current step, keeps no checkpoint and exits 6 (``TrialStopped``).

Phases, in order, each entered by the job (``enter``):

    listening    from the process's start: only a sweep's stop is caught (SIGUSR2's default action
                 would kill a trial still loading its data, which would look like a crash);
                 SIGTERM keeps its default, so a job killed before it has anything to save dies
    training     ``arm``: the preemption signals are caught too; a signal from here on means
                 "checkpoint and exit 143" (a signal before the loop: at its first hook)
    evaluating   training is over and its end checkpointed: a signal stops the evaluation
    finishing    training and evaluation are done: a signal only lets the job complete (exit 0),
                 instead of throwing a finished training away halfway through W&B's finish

What the loop's hooks do about a request is theirs (``epoch_end.py``, ``checkpoint.py``): this
module only records it, says it once in the log, and builds the exception that ends the job.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

from .errors import Preempted, TrialStopped
from .log import logger

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_SIGNAL = signal.SIGUSR2
PHASES = ("listening", "training", "evaluating", "finishing")

# What a preemption signal does in each phase, as the job says it when the signal arrives.
_ANSWERS = {
    "training": "checkpointing after this step",
    # The last epoch's end is already checkpointed: the job stops, a rerun evaluates again.
    "evaluating": "stopping the evaluation; training is checkpointed",
    "finishing": "finishing: training is done, the run completes (exit 0)",
}

log = logger()


class Where(Protocol):
    """Where the loop stands (train.Progress): what the stop messages name."""

    step: int
    epoch: int


class Interrupt:
    """The job's stop requests and phase. The first request of each kind wins; later ones only
    change nothing."""

    def __init__(self) -> None:
        self.phase = "listening"
        self.signal: int | None = None  # the preemption signal that arrived, if any
        self.stop_reason: str | None = None  # why the sweep stops this trial, if it does
        self._previous: dict[int, Any] = {}

    # --- phases --------------------------------------------------------------------------------
    def listen(self) -> None:
        """From the process's start: keep a sweep's stop that arrives during start-up."""
        self._install(STOP_SIGNAL, self._on_stop_signal)

    def arm(self) -> None:
        """From here on a preemption signal means "checkpoint and exit 143", not "die"."""
        self.listen()
        for sig in PREEMPT_SIGNALS:
            self._install(sig, self._on_preempt_signal)
        self.enter("training")

    def enter(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
        self.phase = phase

    def evaluating(self) -> None:
        self.enter("evaluating")

    def finishing(self) -> None:
        self.enter("finishing")

    def disarm(self) -> None:
        """Every handler back as it was (the process may go on: tests, a sweep's fork server)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _install(self, sig: int, handler: Any) -> None:
        previous = signal.signal(sig, handler)
        self._previous.setdefault(sig, previous)  # the handler from before the job, once

    # --- requests ------------------------------------------------------------------------------
    def _on_preempt_signal(self, signum: int, _frame: object) -> None:
        if self.signal is None:
            self.signal = signum
            name = signal.Signals(signum).name
            log.info(f"got {name}; {_ANSWERS[self.phase]}")

    def _on_stop_signal(self, _signum: int, _frame: object) -> None:
        self.request_stop("stopped by its sweep")

    def from_wandb(self) -> None:
        """``wandb.Settings(stop_fn=...)``: called from one of W&B's threads."""
        self.request_stop("stopped from W&B (the run's stop status)")

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info(f"{reason}; ending after this step")

    # --- answers -------------------------------------------------------------------------------
    def raise_if_stopped(self, where: Where) -> None:
        """End a trial its sweep stopped (exit 6): no checkpoint, the run closed."""
        if self.stop_reason is not None:
            raise TrialStopped(
                f"{self.stop_reason}: ended at step {where.step} (epoch {where.epoch}); not a "
                "failure, no checkpoint kept"
            )

    # The loop's first hook (train.Hook's methods): a stopped trial ends before any other hook
    # runs, so it writes no checkpoint.
    def after_step(self, where: Where) -> None:
        self.raise_if_stopped(where)

    def after_epoch(self, where: Where) -> None:
        self.raise_if_stopped(where)

    def during_eval(self, where: Where) -> None:
        self.raise_if_stopped(where)

    def preempted(self, where: Where, checkpoints: object) -> Preempted:
        """The exception that ends a preempted job, naming the signal and the checkpoints."""
        name = signal.Signals(self.signal).name if self.signal else "signal"
        return Preempted(
            f"{name}: stopped at step {where.step} (epoch {where.epoch}); checkpoint in "
            f"{checkpoints}; rerun the same command to resume"
        )
