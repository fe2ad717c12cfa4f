"""W&B's sweeps as trainjob uses them: register a sweep with the server (``register``), run W&B's
agent (``run_agent``), format a trial's ``${args}`` as W&B's CLI agent does (``command_args``),
and W&B's sweep engine (``engine``, the PyPI package ``sweeps``), which ``trainjob sweep run``
and offline early termination run locally.

The engine is imported here, at module import, with the warnings its pydantic-v1 style models
raise at import silenced: the trial fork server preloads this module (sweep/trials.py), and
offline early termination asks the engine at every epoch end. wandb itself is imported only by
the function that needs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from .env import base_url, redact

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import sweeps as engine

__all__ = ["command_args", "engine", "register", "run_agent"]


def register(config: Mapping[str, Any], entity: str | None, project: str | None) -> str:
    """Create a sweep on the W&B server; its id. A rejected key or a refused sweep is a
    ConfigError (exit 2)."""
    import wandb

    try:
        return str(wandb.sweep(dict(config), entity=entity, project=project))
    except wandb.errors.AuthenticationError:
        raise ConfigError(f"the W&B server {base_url()} rejected WANDB_API_KEY") from None
    except wandb.errors.CommError as exc:
        raise ConfigError(f"W&B refused the sweep: {redact(' '.join(str(exc).split()))}") from None


def run_agent(
    sweep_id: str, trial: Callable[[], None], project: str | None, count: int | None
) -> None:
    """W&B's agent for ``sweep_id``, calling ``trial`` once per run the server hands out, until
    the sweep ends, ``count`` trials ran or ``trial`` raises: ``trial`` raises only to stop the
    agent, and with ``max_consecutive_failed_runs=1`` W&B's agent stops after that one failure."""
    import wandb

    wandb.agent(
        sweep_id, function=trial, project=project, count=count, max_consecutive_failed_runs=1
    )


def command_args(params: Mapping[str, Any]) -> list[str]:
    """A trial's ``${args}`` from W&B's parameter file (``{name: {"value": v}}``), formatted by
    W&B itself: exactly what its CLI agent would run."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return list(create_sweep_command_args({"args": dict(params)})["args"])
