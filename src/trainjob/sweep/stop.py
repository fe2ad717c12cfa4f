"""How a sweep stops a trial: what the sweep processes and their trials agree on (no torch here).

``interrupt.STOP_SIGNAL``: sent to a trial by ``trainjob agent`` (W&B's ``stop``) and ``trainjob
sweep run``; the trial ends between two steps, closes its run, keeps no checkpoint and exits 6
(interrupt.py). SIGTERM stays "preempted: checkpoint".

Offline early termination, in files the sweep driver and its trials share (records.py):
``RULE_FILE``, written by ``trainjob sweep run`` into a trial's output folder before it starts:
the sweep's ``method``, ``metric`` and ``early_terminate`` and each earlier trial's per-epoch
values; ``EPOCHS_FILE``, in the trial's run folder, written at each epoch end: its own values.
At each epoch end the trial asks W&B's engine (``sweeps.stop_runs``, what W&B's server runs
for a sweep) whether it trails the earlier trials, as the server would with their histories.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import records

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
        blob = records.read_rule(folder)
        return cls(blob["config"], blob["runs"], folder) if blob is not None else None

    def others(self) -> dict[str, list[float]]:
        """Each other trial's per-epoch values, by trial: the longest known."""
        found = {str(r["name"]): list(r["history"]) for r in self.runs}
        siblings = self.folder.parent.iterdir() if self.folder is not None else []
        for sibling in siblings:
            if sibling == self.folder or not sibling.is_dir():
                continue
            for run in sibling.iterdir():  # <trial>/<run id>/epochs.json
                values = records.read_epoch_values(run, self.metric) if run.is_dir() else []
                if len(values) > len(found.get(sibling.name, [])):
                    found[sibling.name] = values
        return found

    @staticmethod
    def write(folder: Path, config: Mapping[str, Any], runs: list[Mapping[str, Any]]) -> None:
        records.write_rule(folder, config, runs)

    def trails(self, values: list[float]) -> str | None:
        """Why this trial should stop now (W&B's hyperband line), or None to go on."""
        from ..tracking.sweeps import engine

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
