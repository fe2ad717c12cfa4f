"""The command line, parsed once: which command, its own arguments, and the settings flags.

    trainjob [train | agent | sync [PATH ...] | report [PATH ...] | sweep create [FILE] |
              sweep run [FILE]]
             [--FIELD V ...]

``parse`` turns argv into a ``Command``; the settings flags (``--epochs 1``) are kept verbatim,
in order, for ``settings.load_settings``, which validates them and words every error. ``--help``
is generated from the settings' fields. Kept free of torch/wandb imports so that ``--help`` and
every bad-input error answer in well under a second.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import ConfigError
from .settings import Settings, env_name

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
COUNT_ENV = "JOB_COMPLETIONS"  # set by our manifest to the Job's spec.completions
DEFAULT_SWEEP_FILE = "sweep.yaml"


@dataclass(frozen=True)
class Spec:
    """One command: its positional arguments, its own options (flag, metavar) and what it does,
    as the help's lines (broken by hand where the sentence reads best)."""

    positional: str
    about: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()


COMMANDS = {
    "train": Spec("", ("run one training job (the default without TRAINJOB_SWEEP_ID)",)),
    "agent": Spec(
        "", ("run a W&B sweep agent for TRAINJOB_SWEEP_ID (the default when it is set)",)
    ),
    "sync": Spec(
        "[PATH ...]",
        (
            "upload the offline runs under PATH (WANDB_DIR, wandb/ or a run folder; default",
            "$WANDB_DIR or .) with `wandb sync`: resumed runs in order, each folder once,",
            "stopped after TRAINJOB_SYNC_STALL_S s without progress (exit 8)",
        ),
    ),
    "report": Spec(
        "[PATH ...]",
        (
            "write one self-contained HTML page of the runs and sweeps under PATH (default",
            "$WANDB_DIR or ., and the output_dir): leaderboard, parallel coordinates, curves;",
            "[--out FILE] (default: report.html in the first PATH; -: stdout); no network",
        ),
        (("--out", "FILE"),),
    ),
    "sweep create": Spec("[FILE]", ("register sweep.yaml with W&B and print the agent commands",)),
    "sweep run": Spec(
        "[FILE]",
        (
            "run sweep.yaml locally, offline, with W&B's own sweep engine;",
            "[--worker I/N] [--count N] [--dry-run] (default worker: JOB_COMPLETION_INDEX",
            "of JOB_COMPLETIONS); settings flags given here apply to every trial",
        ),
        (("--worker", "I/N"), ("--count", "N"), ("--dry-run", "")),
    ),
}
SWEEP_COMMANDS = ("create", "run")


@dataclass(frozen=True)
class Command:
    """What the command line asks for. ``flags``: the settings flags, verbatim and in order."""

    name: str  # a key of COMMANDS
    flags: list[str]
    file: str = DEFAULT_SWEEP_FILE  # sweep create, sweep run
    paths: list[str] = field(default_factory=list)  # sync, report; none: $WANDB_DIR or .
    out: str | None = None  # report: the page's file
    worker: int = 0  # sweep run: this worker's index ...
    workers: int = 1  # ... of this many
    count: int | None = None  # sweep run: at most this many trials
    dry_run: bool = False  # sweep run: say the trials, run none


# --- parsing -------------------------------------------------------------------------------------


class _InOrder(argparse.Action):
    """Keeps ``--worker`` and ``--count`` as given, in order: they are checked after the
    Indexed Job's variables, one by one, so that the first bad one is the one reported."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        *_: object,
    ) -> None:
        namespace.given = [*getattr(namespace, "given", []), (self.option_strings[0], str(values))]


def _parser() -> argparse.ArgumentParser:
    """Subcommands and their own options; anything undeclared is left over for the settings.
    No abbreviations (``--c`` is a settings flag to refuse, not ``--count``), no help of
    argparse's (``help_text`` is the help), errors raised rather than printed."""

    def new(parent: argparse._SubParsersAction | None, name: str) -> argparse.ArgumentParser:
        kwargs = {"add_help": False, "allow_abbrev": False, "exit_on_error": False}
        if parent is None:
            return argparse.ArgumentParser(prog=name, **kwargs)  # type: ignore[arg-type]
        return parent.add_parser(name, **kwargs)  # type: ignore[arg-type]

    top = new(None, "trainjob")
    commands = top.add_subparsers(dest="command", required=True)
    for name in ("train", "agent", "sync"):
        new(commands, name)
    new(commands, "report").add_argument("--out", metavar="FILE", default=None)
    sweeps = new(commands, "sweep").add_subparsers(dest="sweep", required=True)
    for name in SWEEP_COMMANDS:
        sub = new(sweeps, name)
        for flag, metavar in COMMANDS[f"sweep {name}"].options:
            if metavar:
                sub.add_argument(flag, action=_InOrder, metavar=metavar, default=argparse.SUPPRESS)
            else:
                sub.add_argument(flag, dest="dry_run", action="store_true")
    return top


def command_words(argv: Sequence[str]) -> list[str]:
    """The words that name the command at the front of ``argv``; [] for none (the default)."""
    head = list(argv[:1])
    if not head or head[0] not in {name.split()[0] for name in COMMANDS}:
        return []
    return list(argv[:2]) if head == ["sweep"] else head


def parse(argv: Sequence[str]) -> Command:
    """``argv`` -> the Command. Without a command word: ``agent`` if TRAINJOB_SWEEP_ID is set,
    else ``train``. Raises ConfigError (one line) for an unknown command or a bad option."""
    args = list(argv)
    words = command_words(args)
    if not words:
        words = ["agent" if os.environ.get(env_name("sweep_id")) else "train"]
        args = words + args
    tail = args[len(words) :]
    name = " ".join(words)
    if name not in COMMANDS:  # said as always, not in argparse's "invalid choice" words
        shown = words + tail[:1] if tail and not tail[0].startswith("-") else words
        raise ConfigError(
            f"unknown command {' '.join(shown)!r}; use train, agent, sync, report, sweep "
            "create or sweep run"
        )
    try:
        namespace, rest = _parser().parse_known_args(args)
    except argparse.ArgumentError as exc:
        raise _option_error(exc) from None
    # Positionals lead (argparse leaves them first among the rest, in order); the flags follow.
    leading = len(list(itertools.takewhile(lambda a: not a.startswith("-"), tail)))
    if name == "sync":
        return Command(name, rest[leading:], paths=rest[:leading])
    if name == "report":
        return Command(name, rest[leading:], paths=rest[:leading], out=namespace.out)
    if not name.startswith("sweep"):
        return Command(name, rest)
    file = rest[0] if leading else DEFAULT_SWEEP_FILE
    flags = rest[1:] if leading else rest
    if name == "sweep create":
        return Command(name, flags, file)
    worker, workers, count = _sweep_run_options(getattr(namespace, "given", []))
    dry_run = bool(namespace.dry_run)
    return Command(name, flags, file, worker=worker, workers=workers, count=count, dry_run=dry_run)


def _option_error(exc: argparse.ArgumentError) -> ConfigError:
    name = exc.argument_name
    if name in ("--worker", "--count") and "expected one argument" in exc.message:
        return ConfigError(f"{name} expects a value, e.g. {name} 2")
    return ConfigError(str(exc))


def _sweep_run_options(given: list[tuple[str, str]]) -> tuple[int, int, int | None]:
    """(worker, workers, count): the Indexed Job's split, then the flags in the order given."""
    worker, workers = worker_from_env(os.environ)
    count = None
    for flag, value in given:
        if flag == "--worker":
            worker, workers = parse_worker(value)
        else:
            count = positive(value, flag)
    return worker, workers, count


def positive(text: str, what: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(f"{what}={text!r} is invalid: expected a positive integer")
    return int(text)


def parse_worker(text: str, what: str = "--worker") -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"{what}={text!r} is invalid: expected I/N with 0 <= I < N, e.g. 0/3")
    return int(match[1]), int(match[2])


def worker_from_env(env: dict[str, str] | os._Environ[str]) -> tuple[int, int]:
    """(i, N) from an Indexed Job: JOB_COMPLETION_INDEX (Kubernetes) and JOB_COMPLETIONS (the
    manifest copies spec.completions); (0, 1) outside one."""
    index, count = env.get(INDEX_ENV), env.get(COUNT_ENV)
    if index is None and count is None:
        return 0, 1
    if index is None or count is None:
        missing = COUNT_ENV if count is None else INDEX_ENV
        raise ConfigError(
            f"{INDEX_ENV}={index!r} and {COUNT_ENV}={count!r}: set {missing} too (the Indexed "
            "Job's completions), or pass --worker I/N"
        )
    return parse_worker(f"{index}/{count}", f"{INDEX_ENV}/{COUNT_ENV}")


# --- help ----------------------------------------------------------------------------------------


FOOTER = (
    "",
    "W&B reads its own variables (WANDB_API_KEY, WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY,",
    "WANDB_DIR, WANDB_BASE_URL, ...). Without a key and without WANDB_MODE the run is offline.",
    "Exit codes: 0 done, 1 crashed, 2 bad config, 3 data, 4 diverged, 5 storage,",
    "6 stopped by the sweep, 7 sweep gave up (agent, sweep run), 8 W&B unreachable,",
    "9 run id in use by a live job, 10 history without checkpoint, 143 preempted (see README).",
)


def _usage(name: str | None) -> list[str]:
    """Every command (``name`` None) or one, each with what it does."""
    if name is None:
        synopsis = " | ".join(f"{n} {s.positional}".strip() for n, s in COMMANDS.items())
        line = f"usage: trainjob [{synopsis}] [--FIELD V ...]"
        lines = textwrap.wrap(line, width=88, subsequent_indent=" " * 7, break_on_hyphens=False)
        lines.append("")
        for n, spec in COMMANDS.items():
            lines += [f"  {n if i == 0 else '':<12}  {text}" for i, text in enumerate(spec.about)]
        return lines
    spec = COMMANDS[name]
    options = " ".join(f"[{f} {m}]" if m else f"[{f}]" for f, m in spec.options)
    words = " ".join(w for w in (name, spec.positional, options) if w)
    return [f"usage: trainjob {words} [--FIELD V ...]", "", *(f"  {t}" for t in spec.about)]


def _settings_rows() -> list[str]:
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.default
        if isinstance(default, list):
            default = "[" + ", ".join(map(str, default)) + "]"
        rows.append((f"--{name}", env_name(name), f"{info.description} (default: {default})"))
    width_flag = max(len(r[0]) for r in rows)
    width_env = max(len(r[1]) for r in rows)
    return [f"  {f:<{width_flag}}  {e:<{width_env}}  {d}" for f, e, d in rows]


def help_text(name: str | None = None) -> str:
    """The help of every command (``name`` None) or of one: usage, then every setting (its flag,
    variable, description and default, from the Settings fields), then W&B and exit codes."""
    lines = _usage(name)
    lines += ["", "Every setting is an environment variable and a flag (flags win):", ""]
    lines += _settings_rows()
    lines += FOOTER
    return "\n".join(lines)


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def print_help(argv: Sequence[str] = ()) -> None:
    """The help for the command ``argv`` names (a command word, then -h anywhere), else all."""
    name = " ".join(command_words(argv)) or None
    try:
        print(help_text(name if name in COMMANDS else None), file=sys.stdout, flush=True)
    except BrokenPipeError:  # `trainjob --help | head`: the reader left, which is fine
        sys.stdout = None  # type: ignore[assignment]  # no second error at interpreter exit
