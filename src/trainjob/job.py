"""One training job, top to bottom: claim the run -> data -> model and optimizer -> resume ->
the W&B run -> train -> evaluate -> export -> finish. Each step is a short function below, in
that order; what a step does in depth lives in its module.

    python -m trainjob train --epochs 1     # preflight.py checks the input, then calls run()
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint, data, export, identity, metrics, records, runtime
from .data import Data
from .epoch_end import EpochEnd
from .errors import ConfigError, ExitCode, Preempted, StorageError, TrainjobError, TrialStopped
from .identity import Claim
from .interrupt import Interrupt
from .log import logger
from .model import ConvNet
from .progress import display
from .settings import Settings
from .step import LoopConfig
from .tracking import run as tracking
from .tracking.history import History, history_floor
from .tracking.watch import Watcher
from .train import LoopStats, Progress, Report, evaluate, make_optimizer, train

log = logger()


@dataclass
class Job:
    """What the steps after the W&B run's start share: the run, its parts, where it logs."""

    settings: Settings
    claim: Claim
    interrupt: Interrupt
    started: float  # when the process began the job: perf/trial_s counts from here
    dataset: Data
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    tracker: tracking.Tracker
    history: History


def run(settings: Settings, interrupt: Interrupt, started: float | None = None) -> int:
    """One job, its input already checked (preflight.py). The run id's lease is held from the
    claim to the very end."""
    started = time.perf_counter() if started is None else started
    wandb_mode = tracking.choose_mode(settings)  # bad key: exit 2 here; no server: offline
    claim = identity.claim(settings, wandb_mode)  # which run this is (identity.py)
    tracking.prestart(wandb_mode)  # W&B's service starts while the data loads
    try:
        device, threads = setup_device(settings)
        dataset = load_data(settings, device)
        model, optimizer, criterion = build_model(settings, device)
        interrupt.arm()  # from here on SIGTERM means "checkpoint and exit 143", not "die"
        progress = resume(settings, claim.state, model, optimizer, interrupt)
        environment = runtime.environment(device, threads)
        log.info(json.dumps(environment))
        tracker = tracking.start(
            settings,
            {"data": dataset.metadata(), "model": {"parameters": count(model)}, "env": environment},
            run_id=claim.run_id,
            mode=wandb_mode,
            on_stop=interrupt.from_wandb,
        )
        history, watcher = continue_history(settings, claim.state, tracker, model, criterion)
        job = Job(settings, claim, interrupt, started, dataset, model, optimizer, criterion,
                  tracker, history)  # fmt: skip
        return train_and_finish(job, progress, watcher)
    finally:
        claim.lease.release()


def setup_device(settings: Settings) -> tuple[torch.device, int]:
    """The device and the CPU threads (runtime.py)."""
    device = runtime.select_device(settings.device)
    threads = runtime.configure(settings.threads, device)
    if settings.amp == "bf16" and device.type == "cpu" and not runtime.cpu_has_native_bf16():
        log.warning(runtime.BF16_SLOW_CPU)
    return device, threads


def load_data(settings: Settings, device: torch.device) -> Data:
    """The dataset, checked and on the device (data.py)."""
    dataset = data.load(
        settings.dataset, settings.data_dir, settings.data_slice, device, settings.cache_dir
    )
    if settings.batch_size > len(dataset.train):
        raise ConfigError(
            f"TRAINJOB_BATCH_SIZE={settings.batch_size} is larger than the {len(dataset.train)} "
            f"training examples left by TRAINJOB_DATA_SLICE={settings.data_slice}"
        )
    return dataset


def build_model(
    settings: Settings, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    """The seeded ConvNet, its optimizer and its loss."""
    torch.manual_seed(settings.seed)
    model = ConvNet(settings.kernels, settings.classes).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, make_optimizer(model, settings.learning_rate), nn.CrossEntropyLoss()


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resume(
    settings: Settings,
    state: dict[str, Any] | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    interrupt: Interrupt,
) -> Progress:
    """Model and optimizer from the claimed run's checkpoint ``state``, if it has one."""
    progress = Progress()
    if state is not None:
        saved = dict(state.get("config", {}))
        now = settings.run_config()
        differ = sorted(k for k in now if k != "epochs" and k in saved and saved[k] != now[k])
        if differ:
            detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in differ)
            raise ConfigError(
                f"checkpoint {state['path']} was written with other settings ({detail}); use "
                "another TRAINJOB_CHECKPOINT_DIR or delete it to start over"
            )
        progress = checkpoint.restore(state, model, optimizer)
        log.info(f"resuming from {state['path']} at step {progress.step}")
    if interrupt.signal is not None:  # stopped during setup: exit before a W&B run exists
        raise Preempted("stopped by a signal before training started; rerun the same command")
    return progress


def continue_history(
    settings: Settings,
    state: dict[str, Any] | None,
    tracker: tracking.Tracker,
    model: nn.Module,
    criterion: nn.Module,
) -> tuple[History, Watcher | None]:
    """The run's history, continued where the interrupted process left it
    (tracking/history.py): only steps after the rows it has are logged, watched from the first
    new row on; rows lost with the process (SIGKILL) are logged again from the checkpoint, with
    their original values."""
    watcher = None
    if settings.watcher == "trainjob" and settings.watch_log != "none" and tracker.enabled:
        watcher = Watcher(model, settings.watch_log, settings.watch_freq)

    def watch() -> None:
        tracker.watch(model, criterion, settings.watch_log, settings.watch_freq, watcher)

    floor = history_floor(tracker)
    if floor < 0:
        watch()
    history = History(tracker, floor, on_first_row=watch if floor >= 0 else None)
    if state is not None:
        replayed = history.replay(state.get("history", []))
        held = f"has steps up to {history.floor}" if history.floor >= 0 else "is empty"
        log.info(f"W&B history {held}; {replayed} row(s) logged again from the checkpoint")
    return history, watcher


def train_and_finish(job: Job, progress: Progress, watcher: Watcher | None) -> int:
    """Train, evaluate and export; whatever happens, close the W&B run and write run.json."""
    settings, interrupt, tracker = job.settings, job.interrupt, job.tracker
    saver = checkpoint.Checkpointer(
        job.claim.checkpoint_folder,
        job.model,
        job.optimizer,
        interrupt,
        every_steps=settings.checkpoint_every_steps,
        every_s=settings.checkpoint_every_s,
        meta={"run_id": tracker.run_id, "config": settings.run_config()},
        extra=lambda: {"history": list(job.history.rows)},
    )
    cfg = LoopConfig.from_settings(settings)
    model = torch.compile(job.model) if settings.compile else job.model
    epoch_end = EpochEnd(
        interrupt,
        lambda: evaluate(model, job.dataset.test, cfg.channels_last, cfg.bf16),
        job.history,
        settings.epochs,
        settings.output_dir,
        records.run_folder(settings.output_dir, tracker.run_id),
        progress,
    )
    report = Report(
        job.history,
        progress,
        hooks=[interrupt, epoch_end, saver],  # the sweep's stop, the sweep metric, checkpoints
        bar=display(progress, settings.epochs, settings.progress, settings.progress_every_s),
        watcher=watcher,
    )
    exit_code, summary = ExitCode.CRASHED, {}
    try:
        summary, model_path = train_evaluate_export(job, model, cfg, report, saver, epoch_end)
        exit_code = ExitCode.OK
    except TrainjobError as exc:
        exit_code = exc.exit_code
        summary = failed(exc, tracker, epoch_end.values, job.claim.checkpoint_folder)
        raise
    finally:
        finish(settings, tracker, exit_code, summary, interrupt)
    # A finished job leaves no checkpoint behind, so running the command again starts a new run
    # instead of "resuming" a completed one. Only now: a job killed before its run was finished
    # resumes from the last checkpoint and finishes it.
    checkpoint.remove(job.claim.checkpoint_folder)
    done(job, summary, report.stats, model_path)
    return int(ExitCode.OK)


def train_evaluate_export(
    job: Job,
    model: nn.Module,
    cfg: LoopConfig,
    report: Report,
    saver: checkpoint.Checkpointer,
    epoch_end: EpochEnd,
) -> tuple[dict[str, Any], Path]:
    """The loop, the final evaluation, the ONNX export and its check; the run's summary and
    model recorded. ``model`` is the one trained (compiled or not), ``job.model`` its weights."""
    settings, interrupt, tracker = job.settings, job.interrupt, job.tracker
    saver.before_loop(report.progress)
    if job.claim.state is not None:
        checkpoint.restore_rng(job.claim.state["rng"])  # last: nothing in setup draws from it
    progress = train(model, job.optimizer, job.criterion, job.dataset.train, cfg, report)
    interrupt.evaluating()  # a signal from here on: stop; training's end is already checkpointed
    test = job.dataset.test
    accuracy = evaluate(model, test, cfg.channels_last, cfg.bf16, report.hooks, progress)
    epoch_end.record(accuracy)
    interrupt.finishing()  # a signal from here on: the job completes (exit 0)
    # A row of its own after the last training row (which may sit at examples_seen): a job
    # resumed during evaluation must not write to a step the history already has.
    job.history.log({metrics.TEST_ACCURACY: accuracy}, step=progress.examples_seen + 1)
    model_path, diff = export_model(settings, job.model, job.dataset, tracker.run_id)
    summary = {
        metrics.TEST_ACCURACY: accuracy,
        # Over the whole run, every process of it: a job resumed after its last step trains none.
        metrics.SAMPLES_PER_S: progress.examples_seen / max(progress.train_s, 1e-9),
        metrics.TRAIN_S: progress.train_s,
        metrics.STEADY_SAMPLES_PER_S: report.stats.steady_samples_per_s(),
        metrics.COMPILE_S if settings.compile else metrics.WARMUP_S: report.stats.warmup_s,
        metrics.ONNX_MAX_ABS_DIFF: diff,
        metrics.EXAMPLES_SEEN: progress.examples_seen,
        metrics.WEIGHTS_SHA256: checkpoint.weights_sha256(job.model),
        # This process's part: from its start to here (the trial's wall time but W&B's finish).
        metrics.TRIAL_S: time.perf_counter() - job.started,
    }
    tracker.summary(summary)
    tracker.save_model(model_path, {metrics.TEST_ACCURACY: accuracy, **settings.run_config()})
    return summary, model_path


def export_model(
    settings: Settings, model: nn.Module, dataset: Data, run_id: str
) -> tuple[Path, float]:
    """The model in ONNX, in the run's own folder (a later run never overwrites it), linked as
    ``<output_dir>/model.onnx``, and checked against PyTorch with onnxruntime (export.py)."""
    model_path = records.run_folder(settings.output_dir, run_id) / "model.onnx"
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
    return model_path, diff


def failed(
    exc: TrainjobError,
    tracker: tracking.Tracker,
    epoch_values: list[float],
    checkpoint_folder: Path,
) -> dict[str, Any]:
    """How a job that raised ends: its summary, and which checkpoints go."""
    summary: dict[str, Any] = {}
    if isinstance(exc, TrialStopped):
        # Recorded as stopped in the run and in run.json; the metric's last per-epoch value is
        # the run's summary value, as W&B keeps the last logged one.
        summary = {metrics.STOPPED: str(exc)}
        if epoch_values:
            summary[metrics.PER_EPOCH[0]] = epoch_values[-1]
        tracker.summary({metrics.STOPPED: str(exc)})
        # Nothing will resume a stopped trial: its checkpoints would only be left behind.
        checkpoint.remove(checkpoint_folder)
    elif isinstance(exc, Preempted):
        tracker.mark_preempting()
    elif exc.exit_code == ExitCode.DIVERGED:
        # Resuming a diverged run diverges again: its checkpoints would only stand in the
        # way of a rerun with a lower learning rate (a settings change refuses to resume).
        checkpoint.remove(checkpoint_folder)
    return summary


def finish(
    settings: Settings,
    tracker: tracking.Tracker,
    exit_code: int,
    summary: dict[str, Any],
    interrupt: Interrupt,
) -> None:
    """Close the W&B run and write run.json, whatever happened."""
    # The handlers stay installed through W&B's finish: a SIGTERM after training only sets the
    # flag and the job completes (exit 0) instead of dying halfway through it.
    tracker.finish(exit_code=int(exit_code))
    record = records.RunRecord(int(exit_code), tracker.run_id, tracker.mode, None, summary)
    record.run_dir = str(tracker.run_dir) if tracker.run_dir else None
    try:  # best effort: never masks the job's own error; the W&B run has everything
        record.write(settings.output_dir)
    except StorageError as exc:
        log.warning(str(exc))
    interrupt.disarm()
    # `trainjob sync RUN_DIR`: a resumed offline run's folders (one per process) go together.
    command = tracker.sync_command()
    if command:
        print(f"trainjob: run saved locally; upload it with: {command}")


def done(job: Job, summary: dict[str, Any], stats: LoopStats, model_path: Path) -> None:
    """The job's result, on stdout."""
    wall = time.perf_counter() - job.started
    print(
        f"trainjob: done. test_accuracy={summary[metrics.TEST_ACCURACY]:.4f}  "
        f"samples/s={summary[metrics.SAMPLES_PER_S]:,.0f}  "
        f"steady_samples/s={stats.steady_samples_per_s():.0f}  wall={wall:.1f}s\n"
        f"  run:   {job.tracker.run_dir or '(tracking disabled)'}\n"
        f"  model: {model_path.resolve()}"
    )
