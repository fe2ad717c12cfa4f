"""Create the folders that the environment names (TMPDIR, WANDB_*) before anything uses them.

In the container everything writable lives on one volume (``/workspace``) that may be mounted
empty (a new named volume, a bind mount, a Kubernetes emptyDir) under a read-only root. A
missing ``$TMPDIR`` is not an error for Python, which silently falls back to another folder
(the current one, at best), but it is for native code that trusts the variable (Go's
``os.TempDir`` in wandb-core, ``mkstemp`` in C libraries). So the entrypoint creates them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from .errors import StorageError

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
