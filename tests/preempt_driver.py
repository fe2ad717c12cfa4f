"""Run the real trainjob entrypoint with a signal delivered at an exact point (tests only).

    python tests/preempt_driver.py TERM@step:7 [trainjob args ...]

WHERE is ``step:K`` (the signal arrives while step K runs, i.e. just before its ``after_step``
hook), ``epoch:E`` (inside the ``after_epoch`` hook that ends epoch E, counted from 1) or
``eval`` (during the test-set evaluation) or ``done`` (right after it: export, summary and W&B's
finish still to come). SIGNAL is ``TERM``, ``INT``, ``USR1`` or ``KILL``; KILL
first kills this process's children (the wandb-core service) and then the process itself, like a
pod whose grace period ran out.

Why a driver and not a knob in the product: a test cannot time an external ``kill`` to land in a
given step of a loop that runs a step per millisecond. This script wraps ``Checkpointer``'s
hooks (and ``Interrupt.finishing``) *in this process only* and then calls
``trainjob.__main__.main``; the signal still goes through the kernel to trainjob's real handler.
It prints ``driver: sent SIG<X> at <time>`` to stderr (wall clock) so that the test can measure
the time from the signal to the exit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from trainjob import checkpoint, interrupt
from trainjob.__main__ import main


def _children() -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        children = task / "children"
        if children.is_file():
            pids += [int(pid) for pid in children.read_text().split()]
    return pids


def _send(name: str) -> None:
    signum = signal.Signals[f"SIG{name}"]
    print(f"driver: sent {signum.name} at {time.time():.6f}", file=sys.stderr, flush=True)
    if signum == signal.SIGKILL:
        for pid in _children():
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signum)


def _arm(name: str, where: str) -> None:
    kind, _, value = where.partition(":")
    hook = {
        "step": "after_step",
        "epoch": "after_epoch",
        "eval": "during_eval",
        "done": "finishing",
    }[kind]
    owner = interrupt.Interrupt if kind == "done" else checkpoint.Checkpointer
    original = getattr(owner, hook)
    fired = False

    def wrapped(self: object, *progress) -> None:  # type: ignore[no-untyped-def]
        nonlocal fired
        if kind == "done":  # right after the evaluation: training and its result are complete
            original(self)
            position = 0
        else:
            position = {"step": progress[0].step, "epoch": progress[0].epoch, "eval": 0}[kind]
        if not fired and position == int(value or 0):
            fired = True
            _send(name)
        if kind != "done":
            original(self, *progress)

    setattr(owner, hook, wrapped)


if __name__ == "__main__":
    signal_name, _, point = sys.argv[1].partition("@")
    _arm(signal_name, point)
    sys.exit(main(sys.argv[2:]))
