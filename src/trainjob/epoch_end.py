"""Early stopping at epoch ends: the sweep metric per epoch, and the sweep's rule asked.

Per epoch: ``test_accuracy`` on the test split after every epoch but the last (the job's own
final evaluation is the last one), each a history row of its own at ``examples_seen + 1``, so
that W&B's hyperband (server or ``sweeps.stop_runs``) has one value per epoch to compare.

Offline early termination (``trainjob sweep run``): the sweep driver leaves its rule
(records.RULE_FILE) in the trial's output folder: the sweep's ``metric`` and
``early_terminate`` and every earlier trial's per-epoch values. At each epoch end this trial
asks W&B's engine (``sweeps.stop_runs``) whether it trails, and if so asks the job's
``Interrupt`` to stop it (exit 6, no checkpoint) before the epoch is checkpointed. The rule is
read from the files the driver and its trials share (records.py), the other trials' values
from their ``epochs.json`` at each check.
The run folder's ``epochs.json`` (records.EPOCHS_FILE) holds its own values. A stop from outside
(a signal, W&B) is the ``Interrupt``'s (interrupt.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import StorageError
from .interrupt import Interrupt
from .metrics import PER_EPOCH
from .records import read_epoch_values, read_rule, write_epoch_values
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


THIS_RUN = "this-trial"


class EarlyTermination:
    """The sweep's early-termination rule against the other trials' per-epoch values: those the
    driver knew when it started this trial (the rule file's ``runs``) and, read again at each
    check, those the sibling trial folders hold now (trials running in parallel, or run by
    another driver on the same folders), as W&B's server compares a run with every run of its
    sweep, running ones included."""

    def __init__(
        self, config: Mapping[str, Any], runs: list[Mapping[str, Any]], folder: Path | None = None
    ) -> None:
        self.config = dict(config)
        self.metric = str(self.config["metric"]["name"])
        self.runs = runs
        self.folder = folder  # this trial's folder: its siblings are the sweep's other trials

    @classmethod
    def load(cls, folder: Path) -> EarlyTermination | None:
        blob = read_rule(folder)
        return cls(blob["config"], blob["runs"], folder) if blob is not None else None

    def others(self) -> dict[str, list[float]]:
        """Each other trial's per-epoch values, by trial: the longest known."""
        found = {str(r["name"]): list(r["history"]) for r in self.runs}
        siblings = self.folder.parent.iterdir() if self.folder is not None else []
        for sibling in siblings:
            if sibling == self.folder or not sibling.is_dir():
                continue
            for run in sibling.iterdir():  # <trial>/<run id>/epochs.json
                values = read_epoch_values(run, self.metric) if run.is_dir() else []
                if len(values) > len(found.get(sibling.name, [])):
                    found[sibling.name] = values
        return found

    def trails(self, values: list[float]) -> str | None:
        """Why this trial should stop now (W&B's hyperband line), or None to go on."""
        from .tracking.sweeps import engine

        def run(name: str, state: str, history: list[float]) -> Any:
            rows = [{self.metric: v} for v in history]
            # The alias: under pydantic 2, sweeps 0.2.0 silently drops history=...
            return engine.SweepRun(name=name, state=state, sampledHistory=rows)

        earlier = [run(name, "finished", history) for name, history in self.others().items()]
        this = run(THIS_RUN, "running", values)
        stop = engine.stop_runs(self.config, [*earlier, this])
        if not any(r.name == THIS_RUN for r in stop):
            return None
        lines = (this.early_terminate_info or {}).get("lines") or ["hyperband"]
        return f"early termination ({lines[-1].removeprefix(f'Run: {THIS_RUN} ')})"
