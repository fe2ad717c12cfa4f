"""The entrypoint: read settings, dispatch on the command, map errors to exit codes.

python -m trainjob                 # one training job (env: TRAINJOB_*, flags on top)
python -m trainjob --help          # every command and setting
python -m trainjob sweep run --help
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import preflight
from .cli import Command, parse, print_help, wants_help
from .errors import ExitCode, as_exit_code
from .settings import flag_names, load_settings


def dispatch(command: Command) -> int:
    """Run ``command``: ``train`` is ``preflight.main`` (each sweep trial's too); the sweep
    commands, ``sync`` and ``report`` import what they need once the command is known."""
    if command.name == "train":
        return preflight.main(command.flags)
    preflight.prepare()
    if command.name == "agent":
        from .sweep.agent import agent

        return agent(load_settings(command.flags), command.flags)
    if command.name == "sync":
        from .tracking.sync import sync

        paths = [Path(p) for p in command.paths] or [Path(os.environ.get("WANDB_DIR") or ".")]
        return sync(paths, load_settings(command.flags).sync_stall_s)
    if command.name == "report":
        from .report.build import report

        settings = load_settings(command.flags)  # a bad flag is an error here too
        paths = [Path(p) for p in command.paths] or _report_defaults(settings.output_dir)
        return report(paths, Path(command.out) if command.out else None)
    if command.name == "sweep create":
        from .sweep.agent import create

        return create(command.file, command.flags)
    assert command.name == "sweep run", command.name  # cli.parse knows no other command
    from .sweep.local import Options, run_local

    options = Options(command.worker, command.workers, command.count, command.dry_run)
    settings = load_settings(command.flags)
    return run_local(command.file, settings, flag_names(command.flags), options)


def _report_defaults(output_dir: Path) -> list[Path]:
    """WANDB_DIR (or .), and the output folder where sweep trials leave their records."""
    paths = [Path(os.environ.get("WANDB_DIR") or ".")]
    return [*paths, output_dir] if output_dir.is_dir() else paths


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args):
        print_help(args)
        return int(ExitCode.OK)
    return as_exit_code(lambda: dispatch(parse(args)))


def cli() -> None:
    """The process entry point (``python -m trainjob``, the ``trainjob`` script): ``main``, the
    atexit handlers, then ``os._exit``.

    Everything that writes has finished by then: W&B's teardown (its service flushes and closes
    the run file), logging's flush and temporary-directory cleanup are atexit handlers, and
    checkpoints and the model are written and renamed before ``main`` returns. What ``os._exit``
    skips is the interpreter's own teardown, which for a process that imported torch, wandb and
    the ONNX exporter is 1-2 s of freeing objects and modules on a 2-core EPYC VM: a fifth of
    a short job's wall time, and of every sweep trial started as a process. Where a non-daemon
    thread still runs, Python's normal exit (which joins it) is taken instead.
    """
    code = main()
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to say to it
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
