"""Log lines through the standard ``logging`` module, in the plain form a container's log has
always shown (the log is an interface: people grep it, tests read it)::

    trainjob: resuming from ckpt/ab12cd34/ckpt-000000000120.pt at step 120   logger("")
    trainjob: warning: cannot cache unpacked data in ...                     a warning
    trainjob sweep: trial 3-1f2e: --epochs 1 --learning_rate 0.01            logger("sweep")

A job's lines go to stderr and leave stdout to its result; the commands that drive other
processes (``sweep``, ``agent``, ``sync``) write their progress to stdout, beside their tables,
as they always did, and so does ``report``. The handler looks ``sys.stdout``/``sys.stderr`` up
at every record, so a redirected or captured stream is followed, and flushes every line (a
pod's log shows it at once).
"""

from __future__ import annotations

import logging
import sys

ROOT = "trainjob"
_TO_STDOUT = frozenset({"sweep", "agent", "sync", "report"})
_LEVEL_WORD = {logging.WARNING: "warning: ", logging.ERROR: "error: "}


class _PlainLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        command = record.name[len(ROOT) + 1 :].split(".", 1)[0]
        prefix = f"{ROOT} {command}" if command else ROOT
        stream = sys.stdout if command in _TO_STDOUT else sys.stderr
        if stream is None:  # a closed pipe, replaced by None: nobody left to read it
            return
        try:
            stream.write(f"{prefix}: {_LEVEL_WORD.get(record.levelno, '')}{record.getMessage()}\n")
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader left, or the stream was closed
            pass


def logger(command: str = "") -> logging.Logger:
    """The logger whose lines start ``trainjob:`` (or ``trainjob <command>:``)."""
    return logging.getLogger(f"{ROOT}.{command}" if command else ROOT)


def _install() -> None:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _PlainLines) for h in root.handlers):
        root.addHandler(_PlainLines())
    root.setLevel(logging.INFO)
    root.propagate = False  # the application's root logger (if any) does not print them twice


_install()
