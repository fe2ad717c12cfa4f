"""One training job: settings -> data -> model -> train -> tracking -> export.

python -m trainjob --epochs 1
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, ExitCode, Preempted, StorageError, TrainjobError
from .settings import Settings
from .wandb_env import resolve_mode


def check_writable(*dirs: Path) -> None:
    """Fail before any training when an output folder cannot be written (issue: a job that
    trains for an hour and then cannot save its model)."""
    for directory in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".trainjob-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"{directory} is not writable ({exc.strerror or exc}); point the setting for it "
                "at a writable folder"
            ) from None


def job_checkpoint_dir(settings: Settings) -> Path:
    """Trials of a W&B sweep share TRAINJOB_CHECKPOINT_DIR; each gets its own folder under it,
    keyed by the run id the agent assigns (the same id when W&B requeues a preempted run)."""
    sweep_run = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    return settings.ckpt_dir / sweep_run if sweep_run else settings.ckpt_dir


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


def run(settings: Settings) -> int:
    import torch
    from tqdm.auto import tqdm

    from . import checkpoint, data, export, runtime, tracking
    from .model import ConvNet
    from .train import LoopConfig, LoopStats, Progress, evaluate, make_optimizer, train

    started = time.perf_counter()
    resolve_mode()  # a bad WANDB_MODE fails here, before any data is touched
    ckpt_dir = job_checkpoint_dir(settings)
    check_writable(settings.output_dir, ckpt_dir, Path(os.environ.get("WANDB_DIR") or "."))

    device = runtime.select_device(settings.device)
    threads = runtime.configure(settings.threads, device)
    dataset = data.load(settings.dataset, settings.data_dir, settings.data_slice, device)
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

    saver = checkpoint.Checkpointer(
        ckpt_dir,
        model,
        optimizer,
        every_steps=settings.checkpoint_every_steps,
        every_s=settings.checkpoint_every_s,
    )
    saver.install()  # from here on SIGTERM means "checkpoint and exit 143", not "die"
    progress = Progress()
    state = checkpoint.load_latest(ckpt_dir)
    if state is not None:
        _check_resumable(state, settings)
        progress = saver.restore(state)
        print(f"trainjob: resuming from {state['path']} at step {progress.step}", file=sys.stderr)
    run_id = (state or {}).get("run_id") or settings.run_id

    extra = {
        "data": dataset.metadata(),
        "model": {"parameters": sum(p.numel() for p in model.parameters())},
        "env": runtime.environment(device, threads),
    }
    print(f"trainjob: {json.dumps(extra['env'])}", file=sys.stderr)
    tracker = tracking.start(settings, extra, run_id=run_id)
    saver.meta = {"run_id": tracker.run_id, "config": settings.run_config()}
    tracker.watch(model, criterion, settings.watch_log, settings.watch_freq)

    train_model = torch.compile(model) if settings.compile else model
    cfg = LoopConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        log_every=settings.log_every,
        seed=settings.seed,
        channels_last=settings.channels_last,
        bf16=settings.amp == "bf16",
        progress_bar=settings.progress,
        lr_schedule=settings.lr_schedule,
    )
    exit_code = ExitCode.CRASHED
    try:
        train_start = time.perf_counter()
        start_examples = progress.examples_seen
        stats = LoopStats()
        progress = train(
            train_model,
            optimizer,
            criterion,
            dataset.train,
            cfg,
            tracker,
            progress,
            saver,
            tqdm,
            stats,
        )
        train_s = time.perf_counter() - train_start
        accuracy = evaluate(train_model, dataset.test, cfg.channels_last, cfg.bf16, saver, progress)
        tracker.log({"test_accuracy": accuracy}, step=progress.examples_seen)
        samples_per_s = (progress.examples_seen - start_examples) / max(train_s, 1e-9)

        model_path = settings.output_dir / "model.onnx"
        sample = data.to_float(dataset.test.images[:16])
        export.export_onnx(model, sample, model_path, settings.onnx_exporter)
        diff = export.check_onnx(model, model_path, data.to_float(dataset.test.images[:37]))
        summary = {
            "test_accuracy": accuracy,
            "perf/samples_per_s": samples_per_s,
            "perf/train_s": train_s,
            "perf/steady_samples_per_s": stats.steady_samples_per_s(),
            # steps that met a new batch shape; with compile on, that is the compile time
            f"perf/{'compile' if settings.compile else 'warmup'}_s": stats.warmup_s,
            "onnx/max_abs_diff": diff,
            "examples_seen": progress.examples_seen,
        }
        tracker.summary(summary)
        tracker.save_model(model_path, {"test_accuracy": accuracy, **settings.run_config()})
        # A finished job leaves no checkpoint behind: running the command again starts a new
        # run instead of "resuming" a completed one.
        for path in checkpoint.checkpoints(ckpt_dir):
            path.unlink(missing_ok=True)
        exit_code = ExitCode.OK
    except Preempted:
        exit_code = ExitCode.PREEMPTED
        if tracker.enabled:
            tracker.run.mark_preempting()
        raise
    except TrainjobError as exc:
        exit_code = exc.exit_code
        raise
    finally:
        saver.uninstall()
        tracker.finish(exit_code=int(exit_code))
        if tracker.sync_command():
            print(f"trainjob: offline run saved; upload it later with: {tracker.sync_command()}")

    wall = time.perf_counter() - started
    print(
        f"trainjob: done. test_accuracy={accuracy:.4f}  samples/s={samples_per_s:,.0f}  "
        f"steady_samples/s={stats.steady_samples_per_s():.0f}  wall={wall:.1f}s\n"
        f"  run:   {tracker.run_dir or '(tracking disabled)'}\n"
        f"  model: {model_path.resolve()}"
    )
    return int(ExitCode.OK)
