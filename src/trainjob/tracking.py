"""Everything W&B: one run per process, created here and passed around explicitly.

W&B's tutorial calls ``wandb.init`` again inside ``train_log``; with wandb 0.31 that finishes
the active run and the ``watch`` hooks then crash (see shared/FACTS.md). So the job creates
exactly one run here and hands a ``Tracker`` to the loop. ``WANDB_MODE=disabled`` gives a
run object with the same methods: no ``if wandb:`` anywhere else.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wandb
from torch import nn

from .errors import ConfigError
from .settings import Settings
from .wandb_env import resolve_mode


class Tracker:
    """The small interface the rest of trainjob sees: log, watch, summary, model, finish."""

    def __init__(self, run: Any, mode: str) -> None:
        self.run = run
        self.mode = mode

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    @property
    def run_id(self) -> str:
        return str(self.run.id)

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (``wandb/offline-run-*`` or ``wandb/run-*``), None when disabled."""
        if not self.enabled:
            return None
        return Path(self.run.dir).parent

    def sync_command(self) -> str | None:
        if self.mode != "offline" or self.run_dir is None:
            return None
        return f"wandb sync {self.run_dir}"

    def log(self, metrics: Mapping[str, float | int], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def watch(self, model: nn.Module, criterion: nn.Module, log: str, log_freq: int) -> None:
        if log != "none":
            self.run.watch(model, criterion, log=log, log_freq=log_freq)

    def summary(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def save_model(self, path: Path, metadata: Mapping[str, Any]) -> None:
        """Store the ONNX file with the run (a real copy in ``run.dir``: ``run.save`` of an
        outside path stores a symlink) and log it as a ``model`` artifact."""
        if not self.enabled:
            return
        inside = Path(self.run.dir) / path.name
        if path.resolve() != inside.resolve():
            shutil.copyfile(path, inside)
        self.run.save(str(inside), base_path=self.run.dir, policy="now")
        artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=dict(metadata))
        artifact.add_file(str(inside), name=path.name)
        self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def start(
    settings: Settings,
    extra_config: Mapping[str, Any],
    run_id: str | None = None,
) -> Tracker:
    """Create the job's one W&B run. ``run_id`` (from a checkpoint or TRAINJOB_RUN_ID) resumes
    into that run instead of starting a duplicate."""
    mode = resolve_mode()
    config = {**settings.run_config(), **extra_config}
    kwargs: dict[str, Any] = {
        "project": settings.resolved_project,
        "config": config,
        "name": settings.run_name,
        "group": settings.group,
        "job_type": "train",
        "settings": wandb.Settings(init_timeout=settings.wandb_init_timeout),
    }
    # Inside a W&B sweep the agent owns the run id: never set one there (W&B's own rule).
    if run_id and not os.environ.get("WANDB_SWEEP_ID"):
        kwargs.update(id=run_id, resume="allow")
    try:
        run = wandb.init(mode=mode, **kwargs)
    except wandb.errors.AuthenticationError:
        raise ConfigError(
            "WANDB_API_KEY was rejected by the W&B server; set a valid key or WANDB_MODE=offline"
        ) from None
    except wandb.errors.CommError as exc:
        if mode != "online":
            raise
        print(
            f"trainjob: W&B server unreachable ({type(exc).__name__}); continuing offline",
            file=sys.stderr,
        )
        mode = "offline"
        run = wandb.init(mode=mode, **kwargs)
    return Tracker(run, mode)
