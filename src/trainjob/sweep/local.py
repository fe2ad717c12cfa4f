"""Offline sweeps: ``sweep.yaml`` run locally by W&B's own sweep engine, with no server.

W&B's agent cannot run air-gapped (wandb/wandb#6234): ``wandb.sweep``/``wandb.agent`` need the
server even with WANDB_MODE=offline. The engine behind the server is the PyPI package ``sweeps``
(grid, random and bayes proposals in-process, <0.5 s). Here it proposes each trial; the trial is
``python -m trainjob train --param=value ...`` in its own process (trials.py), an offline W&B run
grouped under the sweep's name; at the end a table sorted by the metric and the ``trainjob sync``
command for all runs.

    trainjob sweep run sweep.yaml --count 4
    trainjob sweep run sweep.yaml --worker 1/3        # worker 1 of 3: every 3rd point
    JOB_COMPLETION_INDEX=1 JOB_COMPLETIONS=3 trainjob sweep run sweep.yaml  # Indexed Job pod

Grid and random sweeps split over N workers with no coordination: proposal k is a pure function of
(sweep name, k) (random draws are seeded by it), and worker i runs the k with k % N == i. Bayes
needs every earlier result, so it runs on one worker. Each trial's outputs live in
``<output_dir>/sweeps/<name>/<k>-<hash>/``; a finished trial (its ``run.json`` says exit 0) is
not run again, and an interrupted one resumes from its checkpoint: rerunning a preempted worker
continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import metrics, records
from ..errors import ConfigError, ExitCode, Interrupted, SweepGaveUp
from ..log import logger
from ..settings import Scope, Settings, env_name, fields_in
from ..tracking.env import resolve_mode
from ..tracking.sync import hint
from .parallel import SEQUENTIAL, Parallel, Slots, plan
from .spec import TRIAL_COMMAND, flag, load_sweep, plain, sweep_engine
from .trials import FailureCounter, SignalForwarder, TrialRunner, trial_env

# Each trial's names: set by the sweep, so not flags of `sweep run` (folders are: trials go under).
PER_TRIAL_FIELDS = fields_in(Scope.IDENTITY)
log = logger("sweep")  # stdout, beside the table it ends with


# --- options ----------------------------------------------------------------------------------


@dataclass
class Options:
    """The command line's own options of ``sweep run`` (cli.py parses them)."""

    worker: int = 0
    workers: int = 1
    count: int | None = None
    dry_run: bool = False


def flags_as_env(settings: Settings, names: Sequence[str]) -> dict[str, str]:
    """Settings flags given to ``sweep run`` -> TRAINJOB_* variables for every trial (flags
    would beat the per-trial values the sweep sets through the environment)."""
    data = settings.model_dump(mode="json")
    env = {}
    for name in names:
        value = data[name]
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, list | bool) else str(value)
        env[env_name(name)] = text
    return env


# --- proposals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    index: int  # k: the k-th proposal of the sweep, the same on every worker
    params: dict[str, Any]

    @property
    def params_key(self) -> str:
        blob = json.dumps(self.params, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:8]

    @property
    def key(self) -> str:
        return f"{self.index:03d}-{self.params_key}"

    def argv(self) -> list[str]:
        return [*TRIAL_COMMAND, *(flag(k, v) for k, v in self.params.items())]


def _params(run: Any) -> dict[str, Any]:
    return {k: plain(v["value"]) for k, v in run.config.items()}


def _seed(name: str, index: int) -> None:
    """The engine draws from ``random`` (random search) and ``numpy.random`` (bayes): seeding
    both with (sweep, k) makes proposal k the same on every worker and on every rerun."""
    import numpy as np

    random.seed(f"{name}:{index}")
    np.random.seed(zlib.crc32(f"{name}:{index}".encode()))


def _propose(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the engine (sklearn's Gaussian-process convergence notes silenced); what it refuses
    (e.g. a distribution in a grid) is a bad sweep file, reported before any trial runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"W&B's sweep engine refuses the sweep: {exc}") from None


def grid_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    sweeps = sweep_engine()

    # The engine stops at the end of the grid; n only bounds absurdly large grids.
    runs = _propose(sweeps.next_runs, config, [], n=config.get("run_cap") or 1_000_000)
    return [_params(run) for run in runs if run is not None]


def random_point(config: dict[str, Any], index: int) -> dict[str, Any]:
    sweeps = sweep_engine()

    _seed(config["name"], index)
    return _params(_propose(sweeps.next_run, config, []))


def bayes_point(config: dict[str, Any], index: int, done: Sequence[Result]) -> dict[str, Any]:
    sweeps = sweep_engine()

    metric = config["metric"]["name"]
    runs = [
        sweeps.SweepRun(
            name=r.point.key,
            config={k: {"value": v} for k, v in r.point.params.items()},
            # The alias: under pydantic 2 sweeps 0.2.0 silently drops summary_metrics=...
            summaryMetrics={metric: r.metric} if r.metric is not None else {},
            # A stopped trial is "killed", as on W&B's server: its config counts, with the
            # worst metric imputed (the engine's default); a preempted one is still pending.
            state=r.engine_state,
        )
        for r in done
    ]
    _seed(config["name"], index)
    return _params(_propose(sweeps.next_run, config, runs))


def planned(cap: int | None, opts: Options) -> Iterator[int]:
    """The proposal indices k this worker runs, in order: k = worker, worker + N, ... below
    ``cap`` (run_cap, or the grid's size), at most ``opts.count`` of them."""
    k, mine = opts.worker, 0
    while (cap is None or k < cap) and (opts.count is None or mine < opts.count):
        yield k
        k += opts.workers
        mine += 1


# --- results ----------------------------------------------------------------------------------


STATES = {int(ExitCode.OK): "finished", int(ExitCode.STOPPED): "stopped"}
STATES[int(ExitCode.PREEMPTED)] = "preempted"
ENGINE_STATES = {"finished": "finished", "stopped": "killed", "preempted": "preempted"}
DONE_CODES = (int(ExitCode.OK), int(ExitCode.STOPPED))  # a rerun keeps these trials
# A driver's claim on a point (records.Lease) in the point's folder, held while its trial runs.
CLAIM_FILE = "claim.json"
CLAIM_POLL_S = 1.0  # how often a driver waiting for another driver's point looks again


@dataclass
class Result:
    point: Point
    exit_code: int
    metric: float | None = None
    run_dir: str | None = None
    mode: str | None = None
    seconds: float = 0.0  # the trial's wall time, as this driver saw it (0: kept, not run)
    reused: bool = False
    epochs: list[float] = field(default_factory=list)  # the per-epoch metric values
    train_s: float | None = None  # its summary's perf/train_s: seconds in training steps

    @property
    def state(self) -> str:
        return STATES.get(self.exit_code, "failed")

    @property
    def engine_state(self) -> str:
        return ENGINE_STATES.get(self.state, "failed")


def read_result(folder: Path) -> records.RunRecord | None:
    """The trial's run record (job.py writes it when a job ends: exit code, run folder,
    summary), or None when the trial died before writing it."""
    return records.RunRecord.read(records.run_record_path(folder))


def _metric_of(record: records.RunRecord | None, metric: str) -> float | None:
    value = (record.summary if record else {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def _epochs_of(folder: Path, record: records.RunRecord | None, metric: str) -> list[float]:
    """The per-epoch values the trial's run left in its run folder."""
    if record is None or not record.run_id:
        return []
    return records.read_epoch_values(records.run_folder(folder, record.run_id), metric)


def sweep_group(name: str, source: bytes) -> str:
    """The W&B group of the sweep's runs: its name and a short hash of its file, so that two
    different sweeps that share a name stay apart after ``wandb sync``."""
    return f"{name}-{hashlib.sha256(source).hexdigest()[:8]}"


def _live_here(path: Path) -> records.Holder | None:
    """The claim's holder when it is a live process on this host: known without watching its
    heartbeat for ``ttl / 3`` s (``Lease.try_acquire``), so waiting drivers poll cheaply."""
    holder = records.Holder.parse(records.read_json(path))
    if holder is None or holder.host != socket.gethostname() or holder.pid == os.getpid():
        return None
    return None if holder.dead_here() else holder


class LocalSweep:
    def __init__(
        self,
        config: dict[str, Any],
        settings: Settings,
        opts: Options,
        base_env: dict[str, str],
        source: bytes = b"",
        parallel: Parallel = SEQUENTIAL,
    ) -> None:
        self.config = config
        self.settings = settings
        self.opts = opts
        self.metric = (config.get("metric") or {}).get("name", metrics.TEST_ACCURACY)
        self.maximize = (config.get("metric") or {}).get("goal", "maximize") == "maximize"
        self.name = str(config["name"])
        self.group = sweep_group(self.name, source)
        self.source = source
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name).strip("-") or "sweep"
        self.out = settings.output_dir / "sweeps" / slug
        self.ckpt = settings.checkpoint_root / "sweeps" / slug
        self.base_env = base_env
        self.results: list[Result] = []
        self.failures = FailureCounter(settings.max_consecutive_failures)
        self.parallel = parallel
        self.seen: dict[str, str] = {}  # parameters' hash -> the first trial with them
        self.lock = threading.Lock()  # results and failures, shared by parallel trials
        self.started = time.perf_counter()

    def env(self, point: Point) -> dict[str, str]:
        return trial_env(
            self.base_env,
            **{
                env_name("group"): self.group,
                env_name("run_name"): f"{self.name}-{point.key}",
                env_name("tags"): json.dumps([self.name[:64], point.key]),  # W&B: <= 64 chars
                env_name("output_dir"): str(self.out / point.key),
                env_name("checkpoint_dir"): str(self.ckpt / point.key),
                **self.parallel.env(),  # its share of the CPU threads
            },
        )

    def points(self) -> Iterator[Point]:
        method, cap = self.config["method"], self.config.get("run_cap")
        if method == "bayes":  # one worker (check_local); each point sees every earlier result
            for k in planned(cap, self.opts):
                with self.lock:  # trials running in parallel add theirs as they end
                    done = list(self.results)
                yield Point(k, bayes_point(self.config, k, done))
        elif method == "grid":
            grid = grid_points(self.config)
            for k in planned(min(cap or len(grid), len(grid)), self.opts):
                yield Point(k, grid[k])
        else:
            for k in planned(cap, self.opts):
                yield Point(k, random_point(self.config, k))

    def run(self, runner: TrialRunner, signals: SignalForwarder) -> int:
        """One pass over this driver's points, claiming each (``attempt``), up to
        ``parallel.trials`` of them at once; then the points other live drivers held are waited
        for (``wait_for``). See docs/sweeps.md, "Several drivers on one sweep"."""
        skipped: list[Point] = []
        try:
            with Slots(self.parallel.trials, signals.check) as slots:
                for point in self.points():
                    if self.announce(point):
                        slots.submit(self.settle, point, runner, signals, skipped)
                    elif self.opts.dry_run and self.config["method"] == "bayes":
                        log.info("(bayes: later points depend on this one's result)")
                        break
            self.wait_for(skipped, runner, signals)
        except (Interrupted, SweepGaveUp):
            self.report()
            raise
        self.report()
        return int(ExitCode.OK)

    def announce(self, point: Point) -> bool:
        """Say which trial comes; False when it is not to be run here (a dry run, or the same
        parameters as a trial this sweep already has: random and bayes search may propose a
        point twice, and a second run of it would teach the sweep nothing)."""
        if self.opts.dry_run:
            self.say_trial(point)
            return False
        same = self.seen.get(point.params_key)
        if same is not None:
            log.info(f"trial {point.key} has the parameters of trial {same}; skipped")
            return False
        self.seen[point.params_key] = point.key
        return True

    def say_trial(self, point: Point) -> None:
        who = f" (worker {self.opts.worker}/{self.opts.workers})" if self.opts.workers > 1 else ""
        log.info(f"{self.name} trial {point.key}{who}: {' '.join(point.argv())}")

    def settle(
        self, point: Point, runner: TrialRunner, signals: SignalForwarder, skipped: list[Point]
    ) -> None:
        """Run or keep ``point``; one another live driver holds is waited for in place (bayes:
        the next proposal needs its result) or left for ``wait_for`` (grid, random)."""
        self.say_trial(point)
        holder = self.attempt(point, runner, signals, rerun_failed=True)
        if holder is None:
            return
        if self.config["method"] == "bayes":
            log.info(f"trial {point.key} is being run by {holder}; waiting")
            self.wait_for([point], runner, signals)
        else:
            log.info(f"trial {point.key} is being run by {holder}; skipped")
            skipped.append(point)

    def wait_for(self, points: list[Point], runner: TrialRunner, signals: SignalForwarder) -> None:
        """Points another live driver held: each is kept once its result is written, or claimed
        and run (resumed) once its claim is free or expired (that driver was stopped or died).
        Waiting, not leaving: a driver that is stopped later would otherwise leave its point
        to nobody, and the sweep would end with it unfinished."""
        if points:
            keys = ", ".join(p.key for p in points)
            log.info(f"waiting for trial(s) other drivers run: {keys}")
        while points:
            points = [p for p in points if self.attempt(p, runner, signals, rerun_failed=False)]
            if points:
                signals.check()
                time.sleep(CLAIM_POLL_S)

    def attempt(
        self, point: Point, runner: TrialRunner, signals: SignalForwarder, rerun_failed: bool
    ) -> str | None:
        """Settle ``point`` (keep its result, or claim it and run its trial) and return None, or
        describe the live driver that holds its claim. ``rerun_failed``: a failed result left by
        an earlier sweep is retried; while waiting for another driver, its result is kept (it
        removed the old one before running the trial, so this one is its)."""
        folder = self.out / point.key
        if self._settled(read_result(folder), rerun_failed):
            self.keep(point, folder)
            return None
        claim_file = folder / CLAIM_FILE
        live = _live_here(claim_file)
        if live is not None:
            return live.describe()
        claim = records.Lease(claim_file, self.settings.lease_ttl_s, "sweep point")
        holder = claim.try_acquire()
        if holder is not None:
            return holder.describe()
        try:
            # It may have ended between the first look and the claim; a killed driver's trial
            # may still be training (see wait_for_orphans), and may end now.
            if not self._settled(read_result(folder), rerun_failed):
                self.wait_for_orphans(point, signals)
            if self._settled(read_result(folder), rerun_failed):
                self.keep(point, folder)
            else:
                self.add(self.run_trial(point, runner, signals))
        finally:
            claim.release()
        return None

    def _settled(self, record: records.RunRecord | None, rerun_failed: bool) -> bool:
        if record is None or record.exit_code in DONE_CODES:
            return record is not None
        return not rerun_failed and record.exit_code != ExitCode.PREEMPTED

    def wait_for_orphans(self, point: Point, signals: SignalForwarder) -> None:
        """A driver killed alone (``kill -9`` of its pid, not of its pod or process group)
        leaves its trial training: the claim is dead, but the trial still holds its run's lease
        (identity.py). A trial started now would not resume that run but start a second one, so
        wait until every run lease in the point's checkpoint folder is free."""
        for path in sorted((self.ckpt / point.key).glob(f"*/{records.LEASE_FILE}")):
            said = False
            while True:
                lease = records.Lease(path, self.settings.lease_ttl_s, "sweep point")
                holder = lease.try_acquire()
                if holder is None:
                    lease.release()
                    break
                if not said:
                    log.info(
                        f"trial {point.key}: run {path.parent.name} is still "
                        f"being trained by {holder.describe()}; waiting for it to end"
                    )
                    said = True
                signals.check()
                time.sleep(CLAIM_POLL_S)

    def keep(self, point: Point, folder: Path) -> None:
        record = read_result(folder)
        assert record is not None  # settled
        result = Result(point, record.exit_code, _metric_of(record, self.metric), reused=True)
        result.train_s = _metric_of(record, metrics.TRAIN_S)
        result.run_dir, result.mode = record.run_dir, record.mode
        result.epochs = _epochs_of(folder, record, self.metric)
        log.info(f"trial {point.key} already {result.state} in {folder}; kept")
        self.add(result)

    def run_trial(self, point: Point, runner: TrialRunner, signals: SignalForwarder) -> Result:
        # The sweep's own file beside its trials, for `trainjob report` (tiny, atomic: every
        # trial may write it; a sweep refused before its first trial leaves nothing).
        records.write_atomic(self.out / records.SWEEP_FILE, self.source)
        folder = self.out / point.key
        records.run_record_path(folder).unlink(missing_ok=True)
        self.leave_rule(folder)
        started = time.perf_counter()
        code = signals.run(runner, point.argv(), self.env(point))
        record = read_result(folder)
        result = Result(point, code, _metric_of(record, self.metric))
        result.train_s = _metric_of(record, metrics.TRAIN_S)
        result.run_dir = record.run_dir if record else None
        result.mode = record.mode if record else None
        result.seconds = time.perf_counter() - started
        result.epochs = _epochs_of(folder, record, self.metric)
        value = "-" if result.metric is None else f"{result.metric:.4f}"
        what = " (stopped early)" if code == ExitCode.STOPPED else ""
        log.info(
            f"trial {point.key} exited {code}{what}; {self.metric}={value} "
            f"after {len(result.epochs)} epoch(s) ({result.seconds:.1f} s)"
        )
        return result

    def add(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)
            self.failures.record(result.exit_code)
            if self.failures.exhausted:
                raise SweepGaveUp(self.failures.message())

    def leave_rule(self, folder: Path) -> None:
        """With ``early_terminate``: the rule and every earlier trial's per-epoch values, for
        the trial to check at each epoch end (epoch_end.py); without: no file."""
        (folder / records.RULE_FILE).unlink(missing_ok=True)
        if "early_terminate" not in self.config:
            return
        with self.lock:
            runs = [{"name": r.point.key, "history": r.epochs} for r in self.results if r.epochs]
        records.write_rule(folder, self.config, runs)

    def ranked(self) -> list[Result]:
        def key(r: Result) -> tuple[int, float]:
            if r.metric is None:
                return (1, 0.0)
            return (0, -r.metric if self.maximize else r.metric)

        return sorted(self.results, key=key)

    def cost(self) -> str:
        """Where this driver's time went: the trials it ran, their training (perf/train_s)
        against their wall time, and the sweep's wall time with ``parallel.trials`` slots."""
        ran = [r for r in self.results if r.seconds]
        train = sum(r.train_s or 0.0 for r in ran)
        trials = sum(r.seconds for r in ran)
        wall = time.perf_counter() - self.started
        slots = self.parallel.trials
        share = f"{train / trials:.0%}" if trials else "-"
        busy = f"{train / (wall * slots):.0%}" if wall else "-"
        return (
            f"cost: {len(ran)} trial(s) run here, training {train:.1f} s of "
            f"{trials:.1f} s trial time ({share}); sweep wall {wall:.1f} s with {slots} "
            f"slot(s): training {busy} of the slots' time"
        )

    def report(self) -> None:
        if self.opts.dry_run:
            return
        if not self.results:
            log.info(f"{self.name}: no trial for this worker")
            return
        names = list(self.config["parameters"])
        header = ["trial", "exit", self.metric, "state", "epochs", "train s", "wall s", *names]
        rows = [
            [
                r.point.key,
                str(r.exit_code),
                "-" if r.metric is None else f"{r.metric:.4f}",
                r.state,
                str(len(r.epochs)),
                "-" if r.train_s is None else f"{r.train_s:.1f}",
                f"{r.seconds:.1f}" if r.seconds else "-",
                *(json.dumps(r.point.params.get(n)) for n in names),
            ]
            for r in self.ranked()
        ]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        first = "highest" if self.maximize else "lowest"
        stopped = sum(r.state == "stopped" for r in self.results)
        early = f", {stopped} stopped early" if stopped else ""
        print()
        log.info(f"{self.name}: {len(rows)} trial(s){early}, {first} {self.metric} first")
        for row in [header, *rows]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        log.info(self.cost())
        offline = [r.run_dir for r in self.ranked() if r.run_dir and r.mode == "offline"]
        if offline:
            print(f"\nupload the offline runs with:\n  {hint(*map(Path, offline))}")


def server_once(settings: Settings) -> dict[str, str]:
    """Online, the W&B server is asked once for the whole sweep: one that does not answer would
    otherwise cost every trial its own ``TRAINJOB_WANDB_INIT_TIMEOUT`` wait before it goes
    offline. Then every trial runs offline (``WANDB_MODE`` in its environment), said in one
    line; a rejected key is exit 2 before any trial, as for a job."""
    from ..tracking.env import base_url, has_api_key
    from ..tracking.server import probe

    if not has_api_key():
        return {}  # each trial says it (exit 2): the same message as a plain job
    reason = probe(settings.wandb_init_timeout)
    if reason is None:
        return {}
    log.info(
        f"W&B server {base_url()} unreachable ({reason}); every trial runs "
        "offline: upload them later with the trainjob sync line at the end"
    )
    return {"WANDB_MODE": "offline"}


def check_local(config: dict[str, Any], opts: Options) -> None:
    method = config["method"]
    if method == "bayes" and opts.workers > 1:
        raise ConfigError(
            f"a bayes sweep needs every earlier result, so it cannot be split over "
            f"{opts.workers} workers; use --worker 0/1 or method grid/random"
        )
    if method != "grid" and not config.get("run_cap") and not opts.count:
        raise ConfigError(
            f"a {method} sweep never runs out of points: set run_cap in the sweep file or pass "
            "--count N"
        )


def run_local(file: str, settings: Settings, given: Sequence[str], opts: Options) -> int:
    """Run the sweep ``file`` on this worker: ``settings`` from the environment and the command
    line's flags, ``given`` the names of those flags (they apply to every trial)."""
    names = list(given)
    if settings.sweep_id:
        raise ConfigError(
            f"TRAINJOB_SWEEP_ID={settings.sweep_id} names a sweep on the W&B server (run it with "
            "trainjob agent); unset it to run the sweep file locally"
        )
    mode = resolve_mode()
    config = load_sweep(file, allowed=metrics.SUMMARY)
    clash = sorted(set(names) & (set(config["parameters"]) | set(PER_TRIAL_FIELDS)))
    if clash:
        raise ConfigError(
            f"--{clash[0]} is set by the sweep per trial; remove it from the command line"
        )
    if opts.count is None and settings.sweep_count:
        opts.count = settings.sweep_count  # TRAINJOB_SWEEP_COUNT, as for the agent
    check_local(config, opts)
    base = {k: v for k, v in os.environ.items()}
    base.update(flags_as_env(settings, [n for n in names if n in Settings.model_fields]))
    if mode in ("online", "shared") and not opts.dry_run:
        base.update(server_once(settings))
    par = plan(settings, explicit_threads="threads" in names or env_name("threads") in os.environ)
    if par.trials > 1:
        log.info(par.why)
    sweep = LocalSweep(config, settings, opts, base, Path(file).read_bytes(), par)
    runner = TrialRunner()  # its fork server starts with the first trial that has to run
    signals = SignalForwarder()
    with signals.active():
        return sweep.run(runner, signals)
