"""One training job: settings -> data -> model -> train -> tracking -> export.

python -m trainjob --epochs 1
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import env_dirs, metrics, records
from .errors import (
    ConfigError,
    ExitCode,
    Preempted,
    StorageError,
    TrainjobError,
    TrialStopped,
    as_exit_code,
)
from .settings import Settings, load_settings
from .wandb_env import resolve_mode

if TYPE_CHECKING:  # the heavy imports (torch, wandb) stay inside the phases that need them
    import torch

    from .checkpoint import Checkpointer, Signals
    from .data import Data
    from .history import History
    from .identity import Claim
    from .stopping import StopRequest
    from .tracking import Tracker
    from .train import LoopStats, Progress
    from .watch import Watcher


def check_writable(dirs: dict[str, Path]) -> None:
    """Fail before any training when a folder the job writes to cannot be written (a job that
    trains for an hour and then cannot save its model). ``dirs`` maps the setting or variable
    that names each folder to the folder."""
    for name, directory in dirs.items():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".trainjob-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"{name}={directory} is not writable ({exc.strerror or exc}); point {name} at a "
                "writable folder (or fix its permissions / free space)"
            ) from None


def writable_dirs(settings: Settings) -> dict[str, Path]:
    """Every folder a job writes to: ours, W&B's (those set; WANDB_DIR defaults to the current
    folder) and the temp folder."""
    dirs = {
        "TRAINJOB_OUTPUT_DIR": settings.output_dir,
        "TRAINJOB_CHECKPOINT_DIR": settings.ckpt_dir,
        "WANDB_DIR": Path(os.environ.get("WANDB_DIR") or "."),
    }
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "TMPDIR"):
        if os.environ.get(var):
            dirs[var] = Path(os.environ[var])
    return dirs


def _check_resumable(state: dict[str, Any], settings: Settings) -> None:
    saved = dict(state.get("config", {}))
    now = settings.run_config()
    differ = sorted(k for k in now if k != "epochs" and k in saved and saved[k] != now[k])
    if differ:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in differ)
        raise ConfigError(
            f"checkpoint {state['path']} was written with other settings ({detail}); use another "
            "TRAINJOB_CHECKPOINT_DIR or delete it to start over"
        )


@dataclass
class _Built:
    """What the job trains: the device, the data, the model and its optimizer."""

    device: torch.device
    threads: int
    dataset: Data
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer


@dataclass
class _Started:
    """A job ready to train: where it starts from and where it logs to."""

    state: dict[str, Any] | None  # the checkpoint resumed from, None for a new run
    progress: Progress
    tracker: Tracker
    history: History
    watcher: Watcher | None
    # The sweep metric's per-epoch values (stopping.EpochEnd's list, filled while training).
    epoch_values: list[float] = field(default_factory=list)


@dataclass
class _Result:
    accuracy: float
    samples_per_s: float
    model_path: Path


def main(argv: Sequence[str]) -> int:
    """The ``train`` command as its process runs it, from the command line or as a sweep trial
    (sweep/trials.py forks one per trial): the environment's folders, the early stop listener,
    settings from the environment and ``argv``, one job; an error is one line and its exit code."""

    started = time.perf_counter()  # the trial's start: perf/trial_s counts from here

    def command() -> int:
        env_dirs.prepare()
        from .stopping import listen_early

        listen_early()  # a sweep's stop (SIGUSR2) during start-up must not kill the job
        return run(load_settings(argv), started)

    return as_exit_code(command)


def run(settings: Settings, started: float | None = None) -> int:
    """One job: preflight, claim its run id (identity.py), then build, resume-or-start,
    train-and-export and finish; the run id's lease is held until the very end. ``started``:
    when the process began the job (``perf/trial_s`` counts from it)."""
    started = time.perf_counter() if started is None else started
    wandb_mode = _preflight(settings)
    from . import identity, tracking

    claim = identity.claim(settings, wandb_mode)
    tracking.prestart(wandb_mode)  # W&B's service starts while the data loads
    try:
        return _run_claimed(settings, claim, wandb_mode, started)
    finally:
        claim.lease.release()


def _run_claimed(settings: Settings, claim: Claim, wandb_mode: str, started: float) -> int:
    from . import checkpoint, stopping

    built = _build(settings)
    signals = checkpoint.Signals()
    signals.install()  # from here on SIGTERM means "checkpoint and exit 143", not "die"
    stop = stopping.StopRequest()  # a sweep's stop: end after this step, exit 6, no checkpoint
    stop.install()
    job = _resume_or_start(settings, built, claim, wandb_mode, signals, stop)
    saver = checkpoint.Checkpointer(
        claim.ckpt_dir,
        built.model,
        built.optimizer,
        every_steps=settings.checkpoint_every_steps,
        every_s=settings.checkpoint_every_s,
        meta={"run_id": job.tracker.run_id, "config": settings.run_config()},
        extra=lambda: {"history": list(job.history.rows)},
        signals=signals,
    )
    exit_code = ExitCode.CRASHED
    summary: dict[str, Any] = {}
    try:
        result, summary, stats = _train_and_export(settings, built, job, saver, stop, started)
        exit_code = ExitCode.OK
    except TrainjobError as exc:
        exit_code = exc.exit_code
        summary = _failed(exc, job, claim.ckpt_dir)
        raise
    finally:
        _finish(settings, job.tracker, exit_code, summary, saver, stop)

    # A finished job leaves no checkpoint behind, so running the command again starts a new run
    # instead of "resuming" a completed one. Only now: a job killed before its run was finished
    # resumes from the last checkpoint and finishes it.
    _remove_checkpoints(claim.ckpt_dir)

    wall = time.perf_counter() - started
    print(
        f"trainjob: done. test_accuracy={result.accuracy:.4f}  "
        f"samples/s={result.samples_per_s:,.0f}  "
        f"steady_samples/s={stats.steady_samples_per_s():.0f}  wall={wall:.1f}s\n"
        f"  run:   {job.tracker.run_dir or '(tracking disabled)'}\n"
        f"  model: {result.model_path.resolve()}"
    )
    return int(ExitCode.OK)


def _preflight(settings: Settings) -> str:
    """Everything that can fail before any data is touched: the W&B mode, the folders the job
    writes to, the W&B key. Returns the W&B mode to run in."""
    from . import tracking

    resolve_mode()  # a bad WANDB_MODE fails here, before any data is touched
    check_writable(writable_dirs(settings))
    return tracking.choose_mode(settings)  # bad key: exit 2 here; no server: offline


def _build(settings: Settings) -> _Built:
    """The device, the data on it, the seeded model, its loss and its optimizer."""
    import torch

    from . import data, runtime
    from .model import ConvNet
    from .train import make_optimizer

    device = runtime.select_device(settings.device)
    threads = runtime.configure(settings.threads, device)
    if settings.amp == "bf16" and device.type == "cpu" and not runtime.cpu_has_native_bf16():
        print(runtime.BF16_SLOW_CPU, file=sys.stderr)
    dataset = data.load(
        settings.dataset, settings.data_dir, settings.data_slice, device, settings.cache_dir
    )
    if settings.batch_size > len(dataset.train):
        raise ConfigError(
            f"TRAINJOB_BATCH_SIZE={settings.batch_size} is larger than the {len(dataset.train)} "
            f"training examples left by TRAINJOB_DATA_SLICE={settings.data_slice}"
        )

    torch.manual_seed(settings.seed)
    model = ConvNet(settings.kernels, settings.classes).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = make_optimizer(model, settings.learning_rate)
    return _Built(device, threads, dataset, model, criterion, optimizer)


def _resume_or_start(
    settings: Settings,
    built: _Built,
    claim: Claim,
    wandb_mode: str,
    signals: Signals,
    stop: StopRequest,
) -> _Started:
    """Restore the claimed run's checkpoint (if any), start the W&B run and continue its
    history where the interrupted process left it."""
    from . import checkpoint, runtime, tracking
    from .history import History, history_floor
    from .train import Progress
    from .watch import Watcher

    progress = Progress()
    state = claim.state
    if state is not None:
        _check_resumable(state, settings)
        progress = checkpoint.restore(state, built.model, built.optimizer)
        print(f"trainjob: resuming from {state['path']} at step {progress.step}", file=sys.stderr)
    if signals.signal is not None:  # stopped during setup: exit before creating a W&B run
        raise Preempted("stopped by a signal before training started; rerun the same command")

    model = built.model
    extra = {
        "data": built.dataset.metadata(),
        "model": {"parameters": sum(p.numel() for p in model.parameters())},
        "env": runtime.environment(built.device, built.threads),
    }
    print(f"trainjob: {json.dumps(extra['env'])}", file=sys.stderr)
    tracker = tracking.start(
        settings, extra, run_id=claim.run_id, mode=wandb_mode, on_stop=stop.from_wandb
    )
    watcher = None
    if settings.watcher == "trainjob" and settings.watch_log != "none" and tracker.enabled:
        watcher = Watcher(model, settings.watch_log, settings.watch_freq)

    def watch() -> None:
        tracker.watch(model, built.criterion, settings.watch_log, settings.watch_freq, watcher)

    # Resuming into a run whose history already has rows: log only the steps after them, and
    # watch from the first new row on (see history.py).
    floor = history_floor(tracker)
    if floor < 0:
        watch()
    history = History(tracker, floor, on_first_row=watch if floor >= 0 else None)
    if state is not None:
        # Rows the interrupted process logged before its checkpoint but that never reached the
        # W&B file or server (SIGKILL) are logged again, with their original values.
        replayed = history.replay(state.get("history", []))
        held = f"has steps up to {history.floor}" if history.floor >= 0 else "is empty"
        print(
            f"trainjob: W&B history {held}; {replayed} row(s) logged again from the checkpoint",
            file=sys.stderr,
        )
    return _Started(state, progress, tracker, history, watcher)


def _train_and_export(
    settings: Settings,
    built: _Built,
    job: _Started,
    saver: Checkpointer,
    stop: StopRequest,
    started: float,
) -> tuple[_Result, dict[str, Any], LoopStats]:
    """Train, evaluate, export to ONNX and check it, record the summary and save the model.
    Returns the result, the summary and the loop's timing."""
    import torch

    from . import checkpoint, data, export, stopping
    from .progress import display
    from .step import LoopConfig
    from .train import LoopStats, evaluate, train

    model, dataset, tracker, history = built.model, built.dataset, job.tracker, job.history
    progress = job.progress
    train_model = torch.compile(model) if settings.compile else model
    cfg = LoopConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        log_every=settings.log_every,
        seed=settings.seed,
        channels_last=settings.channels_last,
        bf16=settings.amp == "bf16",
        progress_bar=True,  # a bar on a terminal, plain lines elsewhere (progress.display)
        lr_schedule=settings.lr_schedule,
        cuda_graphs=settings.cuda_graphs,
    )
    # Per-epoch test_accuracy (the sweep metric hyperband compares) and sweep stops, around
    # the checkpointing hooks (stopping.py).
    hooks = stopping.EpochEnd(
        saver,
        stop,
        lambda: evaluate(train_model, dataset.test, cfg.channels_last, cfg.bf16),
        history,
        settings.epochs,
        settings.output_dir,
        records.run_folder(settings.output_dir, tracker.run_id),
        progress,
    )
    job.epoch_values = hooks.values  # for the summary of a trial stopped while training
    saver.stop_if_signalled(progress)
    if job.state is not None:
        checkpoint.restore_rng(job.state["rng"])  # last, so that nothing in setup draws from it
    stats = LoopStats()
    progress = train(
        train_model,
        built.optimizer,
        built.criterion,
        dataset.train,
        cfg,
        history,
        progress,
        hooks=hooks,
        bar=display(progress, settings.epochs, settings.progress, settings.progress_every_s),
        stats=stats,
        watcher=job.watcher,
    )
    saver.evaluating()  # a signal from here on: stop; training's end is already checkpointed
    accuracy = evaluate(train_model, dataset.test, cfg.channels_last, cfg.bf16, hooks, progress)
    hooks.record(accuracy)
    saver.finishing()  # a signal from here on: the job completes (exit 0)
    # A row of its own after the last training row (which may sit at examples_seen): a job
    # resumed during evaluation must not write to a step the history already has.
    history.log({metrics.TEST_ACCURACY: accuracy}, step=progress.examples_seen + 1)
    # Over the whole run, every process of it: a job resumed after its last step trains none.
    samples_per_s = progress.examples_seen / max(progress.train_s, 1e-9)

    # One folder per run: a later job (another run id) never overwrites this model.
    model_path = records.run_folder(settings.output_dir, tracker.run_id) / "model.onnx"
    sample = data.to_float(dataset.test.images[:16])
    cache_dir = settings.cache_dir or data.default_cache_dir()  # the ONNX template's too
    export.export_onnx(model, sample, model_path, settings.onnx_exporter, cache_dir)
    try:
        records.point_latest(settings.output_dir / "model.onnx", model_path)
    except OSError as exc:
        raise StorageError(
            f"could not write {settings.output_dir / 'model.onnx'}: {exc.strerror or exc}; "
            f"the model itself is complete in {model_path}"
        ) from None
    diff = export.check_onnx(model, model_path, data.to_float(dataset.test.images[:37]))
    summary = {
        metrics.TEST_ACCURACY: accuracy,
        metrics.SAMPLES_PER_S: samples_per_s,
        metrics.TRAIN_S: progress.train_s,
        metrics.STEADY_SAMPLES_PER_S: stats.steady_samples_per_s(),
        metrics.COMPILE_S if settings.compile else metrics.WARMUP_S: stats.warmup_s,
        metrics.ONNX_MAX_ABS_DIFF: diff,
        metrics.EXAMPLES_SEEN: progress.examples_seen,
        metrics.WEIGHTS_SHA256: checkpoint.weights_sha256(model),
        # This process's part: from its start to here (the trial's wall time but W&B's finish).
        metrics.TRIAL_S: time.perf_counter() - started,
    }
    tracker.summary(summary)
    tracker.save_model(model_path, {metrics.TEST_ACCURACY: accuracy, **settings.run_config()})
    return _Result(accuracy, samples_per_s, model_path), summary, stats


def _failed(exc: TrainjobError, job: _Started, ckpt_dir: Path) -> dict[str, Any]:
    """How a job that raised ends: its summary, and which checkpoints go."""
    summary: dict[str, Any] = {}
    if isinstance(exc, TrialStopped):
        # Recorded as stopped in the run and in run.json; the metric's last per-epoch value is
        # the run's summary value, as W&B keeps the last logged one.
        summary = {metrics.STOPPED: str(exc)}
        if job.epoch_values:
            summary[metrics.PER_EPOCH[0]] = job.epoch_values[-1]
        job.tracker.summary({metrics.STOPPED: str(exc)})
        # Nothing will resume a stopped trial: its checkpoints would only be left behind.
        _remove_checkpoints(ckpt_dir)
    elif isinstance(exc, Preempted):
        job.tracker.mark_preempting()
    elif exc.exit_code == ExitCode.DIVERGED:
        # Resuming a diverged run diverges again: its checkpoints would only stand in the
        # way of a rerun with a lower learning rate (a settings change refuses to resume).
        _remove_checkpoints(ckpt_dir)
    return summary


def _finish(
    settings: Settings,
    tracker: Tracker,
    exit_code: int,
    summary: dict[str, Any],
    saver: Checkpointer,
    stop: StopRequest,
) -> None:
    """Close the W&B run and write run.json, whatever happened."""
    # Handlers stay installed through finish: a SIGTERM after training only sets the flag
    # and the job completes (exit 0) instead of dying halfway through W&B's finish.
    tracker.finish(exit_code=int(exit_code))
    record = records.RunRecord(int(exit_code), tracker.run_id, tracker.mode, None, summary)
    record.run_dir = str(tracker.run_dir) if tracker.run_dir else None
    try:  # best effort: never masks the job's own error; the W&B run has everything
        record.write(settings.output_dir)
    except StorageError as exc:
        print(f"trainjob: warning: {exc}", file=sys.stderr)
    saver.uninstall()
    stop.uninstall()
    # `trainjob sync RUN_DIR`: a resumed offline run's folders (one per process) go together.
    command = tracker.sync_command()
    if command:
        print(f"trainjob: run saved locally; upload it with: {command}")


def _remove_checkpoints(ckpt_dir: Path) -> None:
    from . import checkpoint

    for path in checkpoint.checkpoints(ckpt_dir):
        path.unlink(missing_ok=True)
