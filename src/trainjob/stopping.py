"""Early stopping at epoch ends: the sweep metric per epoch, and the sweep's rule asked.

Per epoch: ``test_accuracy`` on the test split after every epoch but the last (the job's own
final evaluation is the last one), each a history row of its own at ``examples_seen + 1``, so
that W&B's hyperband (server or ``sweeps.stop_runs``) has one value per epoch to compare.

Offline early termination (``trainjob sweep run``): the sweep driver leaves its rule
(records.RULE_FILE) in the trial's output folder: the sweep's ``metric`` and
``early_terminate`` and every earlier trial's per-epoch values. At each epoch end this trial
asks W&B's engine (``sweeps.stop_runs``) whether it trails, and if so asks the job's
``Interrupt`` to stop it (exit 6, no checkpoint) before the epoch is checkpointed (sweep/stop.py).
The run folder's ``epochs.json`` (records.EPOCHS_FILE) holds its own values. A stop from outside
(a signal, W&B) is the ``Interrupt``'s (interrupt.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from .errors import StorageError
from .interrupt import Interrupt
from .metrics import PER_EPOCH
from .records import read_epoch_values, write_epoch_values
from .sweep.stop import EarlyTermination
from .train import HistoryLog, Hook, Progress


class EpochEnd(Hook):
    """The loop's hook for the sweep metric: evaluated, logged and recorded at each epoch end
    but the last, then the sweep's early-termination rule (if the driver left one) asked."""

    def __init__(
        self,
        interrupt: Interrupt,
        evaluate: Callable[[], float],
        history: HistoryLog,
        epochs: int,
        rule_folder: Path,
        run_folder: Path,
        progress: Progress,
    ) -> None:
        self.interrupt = interrupt
        self.evaluate = evaluate
        self.history = history
        self.epochs = epochs
        self.run_folder = run_folder
        self.rule = EarlyTermination.load(rule_folder)
        # A resumed job keeps the values of the epochs it does not run again.
        self.values: list[float] = read_epoch_values(run_folder, PER_EPOCH[0])[: progress.epoch]

    def after_epoch(self, progress: Progress) -> None:
        if progress.epoch < self.epochs:
            value = self.evaluate()
            self.history.log({PER_EPOCH[0]: value}, step=progress.examples_seen + 1)
            self.record(value)
            reason = self.rule.trails(self.values) if self.rule is not None else None
            if reason is not None:
                self.interrupt.request_stop(reason)
                self.interrupt.raise_if_stopped(progress)

    def record(self, value: float) -> None:
        """One epoch's value, kept in the run folder's ``epochs.json`` for the sweep driver."""
        self.values.append(float(value))
        with contextlib.suppress(StorageError):  # best effort: the W&B history has every value
            write_epoch_values(self.run_folder, PER_EPOCH[0], self.values)
