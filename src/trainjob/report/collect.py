"""What ``trainjob report`` shows, gathered from the folders it is given: W&B's offline run folders
(one per process; a resumed run has several) and trainjob's own records (``run.json``,
``epochs.json`` and the sweep file ``sweep run`` leaves in its folder), joined by run id.

Nothing here raises for what it finds: an unreadable, cut or damaged file becomes a note on its
run (``Run.notes``), and a folder without a readable run file a note on the report.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import metrics, records
from ..errors import ExitCode
from ..tracking.runfile import (
    RUN_FOLDER,
    RunFile,
    RunFolder,
    folders_of_run,
    read_run_file,
    run_folder,
)

PARALLEL_FROM = 16  # run files from which reading them is worth a pool of processes
# Folders a walk never needs to enter: W&B's caches and per-run scratch, checkpoints.
SKIP = {"files", "tmp", "logs", ".cache", "artifacts", "media", "node_modules", ".git"}

STATES = {
    ExitCode.OK: "finished",
    ExitCode.STOPPED: "stopped",
    ExitCode.PREEMPTED: "preempted",
}


@dataclass
class Trial:
    """trainjob's records of one job: its run.json (and the sweep trial folder it sits in)."""

    record: records.RunRecord
    folder: Path  # the job's output_dir (a sweep trial's own folder)
    sweep_dir: Path | None = None  # <output_dir>/sweeps/<name>, for a sweep trial

    @property
    def epochs(self) -> list[float]:
        folder = records.run_folder(self.folder, self.record.run_id)
        return records.read_epoch_values(folder, metrics.TEST_ACCURACY)


@dataclass
class Run:
    """One W&B run: its processes' run files, oldest first, and trainjob's record of it."""

    run_id: str
    parts: list[RunFile] = field(default_factory=list)
    trial: Trial | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def last(self) -> RunFile | None:
        return self.parts[-1] if self.parts else None

    @property
    def name(self) -> str:
        named = [p.name for p in self.parts if p.name]
        return named[-1] if named else self.run_id

    @property
    def group(self) -> str:
        """Its W&B group; a W&B agent's trial without one: its sweep's id."""
        group = next((p.group for p in reversed(self.parts) if p.group), "")
        sweep = next((p.sweep_id for p in reversed(self.parts) if p.sweep_id), "")
        return group or (f"sweep {sweep}" if sweep else "")

    @property
    def config(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for part in self.parts:
            merged.update(part.config)
        return merged

    @property
    def summary(self) -> dict[str, Any]:
        merged: dict[str, Any] = dict(self.trial.record.summary) if self.trial else {}
        for part in self.parts:
            merged.update(part.summary)
        return merged

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every process's rows in step order, each step once (the first process to log it)."""
        seen: set[int] = set()
        rows = []
        for part in self.parts:
            for row in part.history:
                if row["_step"] not in seen:
                    seen.add(row["_step"])
                    rows.append(row)
        return sorted(rows, key=lambda r: r["_step"])

    @property
    def exit_code(self) -> int | None:
        """How the last process ended: its run file's exit record; else trainjob's run.json when
        that process wrote it (it names the process's folder), as after a cut run file; else
        None (the process is still running, or was killed)."""
        last = self.last
        if last is not None and last.exit_code is not None:
            return last.exit_code
        record = self.trial.record if self.trial else None
        if record is None:
            return None
        if last is None or Path(record.run_dir or "").name == last.path.parent.name:
            return record.exit_code
        return None

    @property
    def state(self) -> str:
        code = self.exit_code
        if code is None:
            return "running or killed"
        if code == ExitCode.STOPPED and "early termination" in str(self.summary.get("stopped")):
            return "stopped by hyperband"
        return STATES.get(code, "failed")

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of one scalar, e.g. ``loss`` against the examples seen."""
        return [
            (row["_step"], float(row[key]))
            for row in self.history
            if isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool)
        ]

    @property
    def epoch_values(self) -> list[float]:
        """``test_accuracy`` after each epoch, from the history; trainjob's epochs.json when the
        run files are missing (a trial whose W&B folder was not found)."""
        logged = [v for _, v in self.series(metrics.TEST_ACCURACY)]
        return logged or (self.trial.epochs if self.trial else [])

    def value(self, name: str = metrics.TEST_ACCURACY) -> float | None:
        """A summary value (the sweep's metric); None when missing or not finite (diverged)."""
        value = self.summary.get(name)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and math.isfinite(value) else None

    @property
    def wall_s(self) -> float | None:
        times = [p.wall_s for p in self.parts if p.wall_s is not None]
        return sum(times) if times else None

    @property
    def train_s(self) -> float | None:
        value = self.summary.get(metrics.TRAIN_S)
        return float(value) if isinstance(value, int | float) else None

    @property
    def onnx(self) -> Path | None:
        """The exported model: the copy saved with the run, else the job's output file."""
        for part in reversed(self.parts):
            path = part.path.parent / "files" / "model.onnx"
            if path.is_file():
                return path
        if self.trial is not None:
            path = records.run_folder(self.trial.folder, self.run_id) / "model.onnx"
            if path.is_file():
                return path
        return None

    @property
    def readable(self) -> bool:
        return any(p.records for p in self.parts) or self.trial is not None


@dataclass
class Group:
    """The runs of one sweep (or one W&B group, or the runs in none)."""

    name: str
    runs: list[Run]
    sweep: dict[str, Any] | None = None  # the sweep file, when it was found

    @property
    def metric(self) -> str:
        return str(((self.sweep or {}).get("metric") or {}).get("name") or metrics.TEST_ACCURACY)

    @property
    def maximize(self) -> bool:
        return ((self.sweep or {}).get("metric") or {}).get("goal", "maximize") == "maximize"

    @property
    def early_terminate(self) -> dict[str, Any] | None:
        rule = (self.sweep or {}).get("early_terminate")
        return rule if isinstance(rule, dict) else None

    @property
    def parameters(self) -> list[str]:
        """The swept parameters: the sweep file's that take more than one value; without the
        file, the config keys whose values differ between the runs."""
        if self.sweep and isinstance(self.sweep.get("parameters"), dict):
            return [
                name
                for name, spec in self.sweep["parameters"].items()
                if not (isinstance(spec, dict) and set(spec) <= {"value"})
            ]
        configs = [r.config for r in self.runs]
        keys = dict.fromkeys(k for c in configs for k in c)
        return [
            k
            for k in keys
            if not any(isinstance(c.get(k), dict) for c in configs)
            and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
        ]

    def log_scale(self, name: str) -> bool:
        spec = ((self.sweep or {}).get("parameters") or {}).get(name)
        return isinstance(spec, dict) and "log" in str(spec.get("distribution", ""))

    def value(self, run: Run) -> float | None:
        """The run's value of this group's metric."""
        return run.value(self.metric)

    def ranked(self) -> list[Run]:
        """Best first by the metric (the sweep's goal), runs without a value last."""

        def key(run: Run) -> tuple[int, float]:
            value = self.value(run)
            if value is None:
                return (1, 0.0)
            return (0, -value if self.maximize else value)

        return sorted(self.runs, key=key)


@dataclass
class Found:
    """Everything under the report's paths."""

    groups: list[Group]
    notes: list[str] = field(default_factory=list)  # about folders, not runs

    @property
    def runs(self) -> list[Run]:
        return [r for g in self.groups for r in g.runs]


# --- finding -----------------------------------------------------------------------------------


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Every folder under ``paths`` that can hold a run file or a record, each once."""
    seen: set[Path] = set()
    for given in paths:
        path = given.absolute()
        if path.is_file() and RUN_FOLDER.match(path.parent.name):  # a run file: its folder
            path = path.parent
        for top, dirs, _files in os.walk(path, followlinks=False):
            here = Path(top)
            real = here.resolve()
            if real in seen:
                dirs.clear()
                continue
            seen.add(real)
            yield here
            if RUN_FOLDER.match(here.name):
                dirs.clear()  # a run folder holds no other run
            else:
                dirs[:] = sorted(d for d in dirs if d not in SKIP)


@dataclass
class _Scan:
    """What a walk over the paths found, before any run file is read."""

    # run id -> {folder name: folder}: one process each, though two copies of it be found
    folders: dict[str, dict[str, RunFolder]] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)
    sweeps: dict[Path, dict[str, Any]] = field(default_factory=dict)  # sweep folder -> file

    def add_folder(self, folder: RunFolder) -> None:
        self.folders.setdefault(folder.run_id, {}).setdefault(folder.path.name, folder)


def _scan(paths: Iterable[Path]) -> _Scan:
    scan = _Scan()
    for folder in _walk(paths):
        found = run_folder(folder)
        if found is not None:
            scan.add_folder(found)
            continue
        trial = _trial(folder)
        if trial is not None:
            scan.trials.append(trial)
        sweep = _sweep_file(folder / records.SWEEP_FILE)
        if sweep is not None:
            scan.sweeps[folder.resolve()] = sweep
    # A sweep folder given alone: its trials' W&B folders are where their run.json says.
    for trial in scan.trials:
        _add_named_folders(trial, scan)
    return scan


def read_all(files: list[Path], workers: int | None = None) -> list[RunFile]:
    """``read_run_file`` of each file, in order; over several processes when there are many
    (parsing is CPU-bound Python: 100 tutorial-sized runs are 200 MiB of records). Forked, so
    the workers start with wandb's protobufs already imported."""
    workers = workers or (min(os.cpu_count() or 1, 8) if len(files) >= PARALLEL_FROM else 1)
    if workers <= 1:
        return [read_run_file(f) for f in files]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(read_run_file, files, chunksize=max(1, len(files) // (4 * workers))))


def gather(paths: Iterable[Path], workers: int | None = None) -> Found:
    """Read everything under ``paths`` into groups of runs, each run once; ``workers``: the
    processes reading run files (default: one, or every core for many files)."""
    scan = _scan(paths)
    runs: dict[str, Run] = {}
    # Each run's processes, oldest first.
    ordered = [
        f for found in scan.folders.values() for f in sorted(found.values(), key=lambda f: f.order)
    ]
    present = [folder for folder in ordered if folder.log.exists()]
    parts = read_all([folder.log for folder in present], workers)
    read = set(present)
    for folder in ordered:
        runs.setdefault(folder.run_id, Run(folder.run_id))
        if folder not in read:
            runs[folder.run_id].notes.append(
                f"{folder.path.name}: no run file (died before writing one)"
            )
    for folder, part in zip(present, parts, strict=True):
        _add_part(runs[folder.run_id], folder.path, part)
    for trial in scan.trials:
        _add_trial(runs.setdefault(trial.record.run_id, Run(trial.record.run_id)), trial, scan)
    readable = [r for r in runs.values() if r.readable]
    notes = [
        f"{r.run_id}: nothing readable ({'; '.join(r.notes)})"
        for r in runs.values()
        if not r.readable
    ]
    return Found(_grouped(readable, scan.sweeps), notes)


def _add_part(run: Run, folder: Path, part: RunFile) -> None:
    """One process's run file, with a note for whatever kept it from being read whole."""
    if part.error:
        run.notes.append(f"{part.path}: {part.error}")
        return
    for problem in part.damage.describe():
        run.notes.append(f"{folder.name}: {problem}; {part.records} record(s) read")
    if part.records == 0 and not part.damage.describe():
        run.notes.append(f"{folder.name}: no records yet (a process that just started)")
    if part.records and part.run_id and part.run_id != run.run_id:
        run.notes.append(f"{part.path} holds run {part.run_id}, not {run.run_id}")
    run.parts.append(part)


def _add_trial(run: Run, trial: Trial, scan: _Scan) -> None:
    """trainjob's record of the run; an older sweep's file from its trials' rule file."""
    run.trial = trial
    if trial.sweep_dir is not None:
        rule = records.read_json(trial.folder / records.RULE_FILE)
        if rule and isinstance(rule.get("config"), dict):
            scan.sweeps.setdefault(trial.sweep_dir.resolve(), rule["config"])
    if not run.parts:
        named = f" (run.json names {trial.record.run_dir})" if trial.record.run_dir else ""
        run.notes.append(f"no W&B run folder found for it{named}")


def _trial(folder: Path) -> Trial | None:
    """The job whose run.json is ``<output_dir>/<run id>/run.json`` in ``folder`` (the output
    folder's own run.json only leads to the latest job's); a sweep trial's output_dir is
    ``<output_dir>/sweeps/<sweep>/<trial>``."""
    path = records.run_record_path(folder)
    if not path.is_file() or path.is_symlink():
        return None
    record = records.RunRecord.read(path)
    if record is None or not record.run_id or folder.name != record.run_id:
        return None
    output_dir = folder.parent
    sweep_dir = output_dir.parent if output_dir.parent.parent.name == "sweeps" else None
    return Trial(record, output_dir, sweep_dir)


def _sweep_file(path: Path) -> dict[str, Any] | None:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) and "parameters" in value else None


def _add_named_folders(trial: Trial, scan: _Scan) -> None:
    """Every folder of the trial's run id beside the one its run.json names, unless a folder of
    that name was found under the paths given (a copied volume: its run.json names the old
    place)."""
    if not trial.record.run_dir:
        return
    named = Path(trial.record.run_dir)
    if not named.parent.is_dir():
        return
    for folder in folders_of_run(named.parent, trial.record.run_id):
        if folder.path.is_dir():
            scan.add_folder(folder)


def _grouped(runs: list[Run], sweeps: dict[Path, dict[str, Any]]) -> list[Group]:
    """Sweeps first (by their sweep folder, else their W&B group), then groups, then the rest."""
    by_key: dict[str, list[Run]] = {}
    files: dict[str, dict[str, Any]] = {}
    for run in runs:
        sweep_dir = run.trial.sweep_dir.resolve() if run.trial and run.trial.sweep_dir else None
        if sweep_dir is not None:
            config = sweeps.get(sweep_dir)
            key = str((config or {}).get("name") or sweep_dir.name)
            if config:
                files[key] = config
        else:
            key = _sweep_name(run) or run.group
        by_key.setdefault(key, []).append(run)
    groups = [Group(k or "runs", v, files.get(k)) for k, v in by_key.items()]
    return sorted(groups, key=lambda g: (g.sweep is None, g.name == "runs", g.name))


def _sweep_name(run: Run) -> str | None:
    """A ``sweep run`` trial's sweep, from its W&B group (``<name>-<hash>``) and first tag."""
    tags = next((p.tags for p in reversed(run.parts) if p.tags), [])
    if tags and run.group.startswith(f"{tags[0]}-"):
        return tags[0]
    return None
