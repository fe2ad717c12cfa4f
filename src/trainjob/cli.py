"""Command line: subcommand dispatch, ``--help``, and one-line error messages.

Kept free of torch/wandb imports so that ``--help`` and every bad-input error answer in well
under a second.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from .errors import ConfigError
from .settings import ENV_PREFIX, Settings, env_name

COMMANDS = ("train", "agent", "sweep")
USAGE = """usage: trainjob [train | agent | sweep create [FILE] | sweep run [FILE]] [--FIELD V ...]

  train         run one training job (the default without TRAINJOB_SWEEP_ID)
  agent         run a W&B sweep agent for TRAINJOB_SWEEP_ID (the default when it is set)
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
        "6 stopped by the sweep, 7 sweep gave up, 8 W&B unreachable, 143 preempted (see README).",
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


def _flag_given(argv: Sequence[str], field: str) -> bool:
    flag = f"--{field}"
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _describe(loc: str, value: Any, argv: Sequence[str]) -> str:
    if _flag_given(argv, loc):
        return f"--{loc}={value!s}"
    env = env_name(loc)
    if env in os.environ:
        return f"{env}={os.environ[env]!r}"
    return f"{loc}={value!r}"


def check_unknown_env() -> None:
    """pydantic-settings ignores unknown prefixed variables; a typo such as TRAINJOB_EPOCS=3
    would silently train with the default. Refuse it instead."""
    known = {env_name(name) for name in Settings.model_fields}
    for key in sorted(os.environ):
        if key.upper().startswith(ENV_PREFIX) and key.upper() not in known:
            close = difflib.get_close_matches(key.upper(), sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see trainjob --help"
            raise ConfigError(f"{key} is not a trainjob setting{hint}")


def _one_line(text: str) -> str:
    """A value holding a newline or another control character must not break the one-line
    error contract: such characters are shown escaped, as ``repr`` would."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def load_settings(argv: Sequence[str]) -> Settings:
    """Settings from env + flags, or a ConfigError whose message is one line (several problems
    are joined with '; '); tests/test_resilience_fuzz.py checks that nothing else escapes."""
    try:
        return _load_settings(argv)
    except ConfigError as exc:
        raise ConfigError(_one_line(str(exc))) from None


def _load_settings(argv: Sequence[str]) -> Settings:
    check_unknown_env()
    try:
        return Settings(_cli_parse_args=list(argv))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            field = str(err["loc"][0]) if err["loc"] else loc
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_describe(field, err.get('input'), argv)} is invalid: {msg}")
        raise ConfigError("; ".join(problems)) from None
    except SettingsError as exc:
        text = str(exc).removeprefix("error parsing CLI: ")
        if "unrecognized arguments" in text:
            names = [a.split("=")[0].lstrip("-") for a in text.split(":", 1)[1].split()]
            close = (
                difflib.get_close_matches(names[0], list(Settings.model_fields), n=1)
                if names
                else []
            )
            hint = f"; did you mean --{close[0]}?" if close else "; see trainjob --help"
            raise ConfigError(f"{text}{hint}") from None
        raise ConfigError(f"{' '.join(text.split())}; see trainjob --help") from None


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def print_help() -> None:
    try:
        print(help_text(), file=sys.stdout, flush=True)
    except BrokenPipeError:  # `trainjob --help | head`: the reader left, which is fine
        sys.stdout = None  # type: ignore[assignment]  # no second error at interpreter exit
