"""The ``train`` command up to the heavy imports: everything that can fail on bad input fails
here, in a fraction of a second, before torch and wandb are imported (1-2 s) and before any data
is touched. Then ``job.run``.

    python -m trainjob train --epochs 1     # __main__ -> preflight.main -> job.run

A sweep trial (sweep/trials.py forks one per trial) runs ``main`` too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from . import env_dirs
from .errors import StorageError, as_exit_code
from .interrupt import Interrupt
from .settings import Settings, load_settings
from .tracking.env import resolve_mode


def main(argv: Sequence[str]) -> int:
    """The ``train`` command as its process runs it: the environment's folders, a sweep's stop
    listened for, settings from the environment and ``argv``, the checks below, one job; an
    error is one line and its exit code."""
    started = time.perf_counter()  # the trial's start: perf/trial_s counts from here
    interrupt = Interrupt()

    def command() -> int:
        env_dirs.prepare()
        interrupt.listen()  # a sweep's stop (SIGUSR2) during start-up must not kill the job
        settings = load_settings(argv)
        check(settings)
        from .job import run  # torch, wandb, onnx: imported once the input is known to be good

        return run(settings, interrupt, started)

    return as_exit_code(command)


def check(settings: Settings) -> None:
    """The W&B mode variable and the folders the job writes to (the key is checked with W&B,
    in ``job.run``)."""
    resolve_mode()  # a bad WANDB_MODE fails here, before any data is touched
    check_writable(writable_dirs(settings))


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
