"""The entrypoint: read settings, dispatch on the command, map errors to exit codes.

python -m trainjob                 # one training job (env: TRAINJOB_*, flags on top)
python -m trainjob --help
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Sequence

from . import env_dirs
from .cli import print_help, split_command, wants_help
from .errors import ConfigError, ExitCode, as_exit_code
from .settings import load_settings


def dispatch(command: list[str], rest: list[str]) -> int:
    """The sweep commands and ``sync``; ``train`` is ``preflight.main`` (each sweep trial's too)."""
    env_dirs.prepare()
    if command == ["agent"]:
        from .sweep.agent import agent

        return agent(load_settings(rest), rest)
    if command == ["sync"]:
        from .tracking.sync import main as sync

        return sync(rest)
    sweep_file = command[2] if len(command) > 2 else "sweep.yaml"
    if command[:2] == ["sweep", "create"]:
        from .sweep.agent import create

        return create(sweep_file, rest)
    if command[:2] == ["sweep", "run"]:
        from .sweep.local import run_local

        return run_local(sweep_file, rest)
    raise ConfigError(
        f"unknown command {' '.join(command)!r}; use train, agent, sync, sweep create or sweep run"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args):
        print_help()
        return int(ExitCode.OK)
    command, rest = split_command(args)
    if command == ["train"]:
        from .preflight import main as train

        return train(rest)
    return as_exit_code(lambda: dispatch(command, rest))


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
