"""The W&B server's side of a sweep: ``trainjob sweep create`` registers ``sweep.yaml`` and
prints the agent commands; ``check_server`` asks the server before the agent or ``sweep create``
relies on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, ExitCode, WandbUnreachable
from ..settings import load_settings
from ..wandb_env import base_url, redact, resolve_mode
from ..wandb_server import check_server as ask_server
from .spec import load_sweep, read_yaml

IMAGE = "ghcr.io/trainjob/trainjob:0.1.0"  # the image the printed agent commands use


def agent_commands(sweep_path: str) -> list[str]:
    return [
        f"docker run --rm --gpus all -e WANDB_API_KEY -e TRAINJOB_SWEEP_ID={sweep_path} {IMAGE}",
        f"kubectl -n trainjob create configmap trainjob-sweep "
        f"--from-literal=TRAINJOB_SWEEP_ID={sweep_path} --dry-run=client -o yaml "
        "| kubectl apply -f -",
        "kubectl apply -k k8s/overlays/sweep-agents",
        f"TRAINJOB_SWEEP_ID={sweep_path} trainjob          # an agent on this machine",
    ]


def create(file: str, rest: list[str]) -> int:
    """Register ``file`` with W&B and print the sweep path and the commands to start agents."""
    settings = load_settings(rest)
    config = read_yaml(Path(file))  # W&B gets the file as written, after the checks below
    load_sweep(file)
    mode = resolve_mode()
    if mode != "online":
        raise ConfigError(
            f"sweep create needs the W&B server, but W&B is {mode} (WANDB_MODE or no "
            f"WANDB_API_KEY); run the sweep offline with: trainjob sweep run {file}"
        )
    check_server(settings.wandb_init_timeout)
    import wandb

    project = config.get("project") or settings.resolved_project
    entity = config.get("entity") or os.environ.get("WANDB_ENTITY")
    try:
        sweep_id = wandb.sweep(config, entity=entity, project=project)
    except wandb.errors.AuthenticationError:
        raise ConfigError(f"the W&B server {base_url()} rejected WANDB_API_KEY") from None
    except wandb.errors.CommError as exc:
        raise ConfigError(f"W&B refused the sweep: {redact(' '.join(str(exc).split()))}") from None
    sweep_path = "/".join(p for p in (entity, project, sweep_id) if p)
    print(f"sweep: {sweep_path}")
    print("start agents with (each runs trials until the sweep ends; add --sweep_count N):")
    for command in agent_commands(sweep_path):
        print(f"  {command}")
    return int(ExitCode.OK)


# --- the server, before the agent or sweep create talk to it ----------------------------------


def check_server(timeout: float) -> None:
    """The agent and ``sweep create`` cannot fall back offline: find out first, within
    ``timeout`` seconds, whether the server at WANDB_BASE_URL answers (else exit 8, one line)
    and takes the key (else exit 2). A refused connection fails at once."""
    why = ask_server(timeout)
    if why is not None:
        raise WandbUnreachable(_unreachable(base_url(), why))


def _unreachable(url: str, why: str) -> str:
    return (
        f"no answer from the W&B server at WANDB_BASE_URL={url} ({why}); the agent and sweep "
        "create need it: check the URL and the network, or run the sweep offline with: "
        "trainjob sweep run sweep.yaml"
    )
