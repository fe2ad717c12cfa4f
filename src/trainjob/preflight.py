"""The ``train`` command up to the heavy imports: everything that can fail on bad input fails
here, in a fraction of a second, before torch and wandb are imported (1-2 s) and before any data
is touched. Then ``job.run``.

    python -m trainjob train --epochs 1     # __main__ -> preflight.main -> job.run

A sweep trial (sweep/trials.py forks one per trial) runs ``main`` too.

Every command first creates the folders the environment names (``prepare``): in the container
everything writable lives on one volume (``/workspace``) that may be mounted empty (a new named
volume, a bind mount, a Kubernetes emptyDir) under a read-only root. A missing ``$TMPDIR`` is
not an error for Python, which silently falls back to another folder (the current one, at
best), but it is for native code that trusts the variable (Go's ``os.TempDir`` in wandb-core,
``mkstemp`` in C libraries).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

from .errors import StorageError, as_exit_code
from .interrupt import Interrupt
from .settings import Settings, env_name, load_settings
from .tracking.env import resolve_mode


def main(argv: Sequence[str]) -> int:
    """The ``train`` command as its process runs it: the environment's folders, a sweep's stop
    listened for, settings from the environment and ``argv``, the checks below, one job; an
    error is one line and its exit code."""
    started = time.perf_counter()  # the trial's start: perf/trial_s counts from here
    interrupt = Interrupt()

    def command() -> int:
        prepare()
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
        env_name("output_dir"): settings.output_dir,
        env_name("checkpoint_dir"): settings.checkpoint_root,
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


ENV_DIRS = ("TMPDIR", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")

# W&B's folders for artifact files (staged copies to upload, the download cache, downloads),
# by default in the home folder (~/.local/share/wandb, ~/.cache/wandb) or the current one: an
# offline run's artifact then lives outside WANDB_DIR, and copying WANDB_DIR to a connected
# machine leaves it behind (wandb/server#149). Unless set, they go under WANDB_DIR's wandb/.
WANDB_DIR_DEFAULTS = {
    "WANDB_DATA_DIR": ".data",
    "WANDB_CACHE_DIR": ".cache",
    "WANDB_ARTIFACT_DIR": "artifacts",
}


def default_wandb_dirs(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each of WANDB_DIR_DEFAULTS that is not set to ``<WANDB_DIR or .>/wandb/<name>``."""
    root = Path(environ.get("WANDB_DIR") or ".").absolute() / "wandb"
    for name, folder in WANDB_DIR_DEFAULTS.items():
        if not environ.get(name):
            environ[name] = str(root / folder)


def create_env_dirs(environ: Mapping[str, str] = os.environ) -> None:
    """``mkdir -p`` each folder named by ENV_DIRS that is set; StorageError (exit 5) if one
    cannot be created."""
    for name in ENV_DIRS:
        value = environ.get(name)
        if not value:
            continue
        try:
            Path(value).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"{name}={value} is not writable ({exc.strerror or exc}); point {name} at a "
                "writable folder (in the container: under the /workspace volume)"
            ) from None


def prepare(environ: MutableMapping[str, str] = os.environ) -> None:
    """What every command does first, before anything reads TMPDIR (an empty volume has none of
    these folders): create the folders the environment names, and W&B's artifact folders go
    under WANDB_DIR unless set (W&B creates those itself)."""
    create_env_dirs(environ)
    default_wandb_dirs(environ)
