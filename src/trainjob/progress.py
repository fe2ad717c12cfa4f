"""What a job shows while it trains: a tqdm bar on a terminal, plain lines everywhere else.

A bar redraws itself with carriage returns and escape codes: in ``kubectl logs -f``, ``docker
logs -f`` or a CI log that is one ever-growing line (or nothing at all until the job ends). When
stderr is not a terminal, or the bar is turned off (``TRAINJOB_PROGRESS=false``), the job
instead prints one plain line at each epoch's end and at least every
``TRAINJOB_PROGRESS_EVERY_S`` seconds:

    trainjob: progress epoch 1/5 step 94/470 (20%) loss 0.2315 samples/s 3,214 eta 0:00:15

The reporter has the bar's interface (``update``, ``set_postfix``, ``close``), so the training
loop drives either without knowing which. It reads only host-side values: the loss is the one
the loop already fetched at its last log interval (``set_postfix``), so no line adds a
host/device sync; ``update`` costs one clock read per step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .train import Progress


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LineReporter:
    """One epoch's progress as plain lines (the bar's interface; made per epoch)."""

    def __init__(self, shared: LineProgress, total: int) -> None:
        self.shared = shared
        self.total = total  # batches per epoch
        self.loss = shared.last_loss

    def set_postfix(self, loss: str | None = None, **_: Any) -> None:
        if loss is not None:
            self.loss = self.shared.last_loss = loss

    def update(self, n: int = 1) -> None:
        shared = self.shared
        if shared.every_s and time.monotonic() - shared.last_line >= shared.every_s:
            self._line()

    def close(self) -> None:
        # The epoch's end (the loop has counted its last batch), unless a timed line just said it.
        if self.shared.last_step != self.shared.progress.step:
            self._line()

    def _line(self) -> None:
        shared, p = self.shared, self.shared.progress
        now = time.monotonic()
        total_steps = shared.epochs * self.total
        done = p.epoch * self.total + p.batch
        steps = p.step - shared.start_step
        seconds = now - shared.start
        rate = (p.examples_seen - shared.start_examples) / seconds if seconds > 0 else 0.0
        eta = (total_steps - done) * seconds / steps if steps > 0 else None
        parts = [
            f"epoch {min(p.epoch + 1, shared.epochs)}/{shared.epochs}",
            f"step {done}/{total_steps} ({100 * done // max(total_steps, 1)}%)",
            f"loss {self.loss or '-'}",
            f"samples/s {rate:,.0f}",
            f"eta {_clock(eta) if eta is not None else '-'}",
        ]
        print("trainjob: progress " + " ".join(parts), file=shared.stream, flush=True)
        shared.last_line, shared.last_step = now, p.step


class LineProgress:
    """The factory the loop calls per epoch (as it would call ``tqdm``); holds what the lines
    of all epochs share: the job's ``Progress`` (updated in place by the loop), the start."""

    def __init__(
        self, progress: Progress, epochs: int, every_s: float, stream: TextIO | None = None
    ) -> None:
        self.progress = progress
        self.epochs = epochs
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last_line = time.monotonic()
        self.start_step = progress.step
        self.start_examples = progress.examples_seen
        self.last_loss: str | None = None
        self.last_step = -1  # the step of the last line printed

    def __call__(self, total: int, **_: Any) -> LineReporter:
        return LineReporter(self, total)


def display(
    progress: Progress, epochs: int, bar_wanted: bool, every_s: float, stream: TextIO | None = None
) -> Callable[..., Any]:
    """The per-epoch display factory for ``train``: tqdm when a bar is wanted and ``stream``
    (default stderr, where tqdm draws) is a terminal; plain lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    if bar_wanted and stream.isatty():
        from tqdm.auto import tqdm

        return tqdm
    return LineProgress(progress, epochs, every_s, stream)
