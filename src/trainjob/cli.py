"""Command line: which subcommand, and ``--help``.

Kept free of torch/wandb imports so that ``--help`` and every bad-input error answer in well
under a second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .settings import ENV_PREFIX, Settings, env_name

COMMANDS = ("train", "agent", "sync", "sweep")
USAGE = """usage: trainjob [train | agent | sync [PATH ...] | sweep create [FILE] | sweep run
       [FILE]] [--FIELD V ...]

  train         run one training job (the default without TRAINJOB_SWEEP_ID)
  agent         run a W&B sweep agent for TRAINJOB_SWEEP_ID (the default when it is set)
  sync          upload the offline runs under PATH (WANDB_DIR, wandb/ or a run folder; default
                $WANDB_DIR or .) with `wandb sync`: resumed runs in order, each folder once,
                stopped after TRAINJOB_SYNC_STALL_S s without progress (exit 8)
  sweep create  register sweep.yaml with W&B and print the agent commands
  sweep run     run sweep.yaml locally, offline, with W&B's own sweep engine;
                [--worker I/N] [--count N] [--dry-run] (default worker: JOB_COMPLETION_INDEX
                of JOB_COMPLETIONS); settings flags given here apply to every trial

Every setting is an environment variable and a flag (flags win):"""


def help_text() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, list):
            default = "[" + ", ".join(map(str, default)) + "]"
        rows.append((f"--{name}", env_name(name), f"{field.description} (default: {default})"))
    width_flag = max(len(r[0]) for r in rows)
    width_env = max(len(r[1]) for r in rows)
    lines = [USAGE, ""]
    lines += [f"  {f:<{width_flag}}  {e:<{width_env}}  {d}" for f, e, d in rows]
    lines += [
        "",
        "W&B reads its own variables (WANDB_API_KEY, WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY,",
        "WANDB_DIR, WANDB_BASE_URL, ...). Without a key and without WANDB_MODE the run is offline.",
        "Exit codes: 0 done, 1 crashed, 2 bad config, 3 data, 4 diverged, 5 storage,",
        "6 stopped by the sweep, 7 sweep gave up (agent, sweep run), 8 W&B unreachable,",
        "9 run id in use by a live job, 10 history without checkpoint, 143 preempted (see README).",
    ]
    return "\n".join(lines)


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``['sweep', 'run', 'sweep.yaml', '--epochs', '1']`` -> (['sweep', 'run', 'sweep.yaml'],
    ['--epochs', '1']). Without a subcommand: ``agent`` if TRAINJOB_SWEEP_ID is set."""
    args = list(argv)
    if args and args[0] in COMMANDS:
        if args[0] == "sweep":
            head = args[:2]
            rest = args[2:]
            if rest and not rest[0].startswith("-"):
                head.append(rest.pop(0))
            return head, rest
        return args[:1], args[1:]
    default = "agent" if os.environ.get(f"{ENV_PREFIX}SWEEP_ID") else "train"
    return [default], args


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def print_help() -> None:
    try:
        print(help_text(), file=sys.stdout, flush=True)
    except BrokenPipeError:  # `trainjob --help | head`: the reader left, which is fine
        sys.stdout = None  # type: ignore[assignment]  # no second error at interpreter exit
