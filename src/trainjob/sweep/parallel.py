"""How many sweep trials run at once on this machine, and with how many CPU threads each.

A trial of the tutorial's ConvNet keeps neither a GPU nor a multi-core CPU busy on its own: a
GPU trains it in a fraction of a second and then waits for W&B, the export and the next trial,
and on a small CPU two single-threaded processes train more per second than one two-threaded
one (bench/cpu_two_process.py). So a sweep can run N trials at once (``--parallel_trials N``),
each its own process (its own W&B run, checkpoint, signals and exit code), the machine's CPU
threads divided between them; on a GPU they share the device (with CUDA MPS their kernels run
concurrently; without it the driver time-slices them: docs/sweeps.md).

``auto`` picks N without importing torch (a sweep driver stays light): on a GPU, one trial per
two CPU cores (each trial's host side needs a core to feed the device), 2 to 8; on a CPU, one
single-threaded trial per core, up to 8.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..runtime import thread_count
from ..settings import Settings, env_name

MAX_AUTO = 8


@dataclass(frozen=True)
class Parallel:
    trials: int  # at once
    threads: int | None  # CPU threads per trial (TRAINJOB_THREADS); None: the user's setting
    why: str  # one line for the log

    def env(self) -> dict[str, str]:
        """What each trial's environment gets on top of the sweep's."""
        return {} if self.threads is None else {env_name("threads"): str(self.threads)}


SEQUENTIAL = Parallel(1, None, "one trial at a time")


def gpus_visible(device: str) -> int:
    """NVIDIA GPUs this process may use, from the driver's /proc entries and
    CUDA_VISIBLE_DEVICES, without initialising CUDA (which a fork server must not have done)."""
    if device == "cpu":
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    root = Path("/proc/driver/nvidia/gpus")
    found = len(list(root.iterdir())) if root.is_dir() else 0
    if visible:
        found = min(found, len([v for v in visible.split(",") if v.strip()]))
    return found


def plan(settings: Settings, explicit_threads: bool) -> Parallel:
    """N trials at once and threads for each: ``settings.parallel_trials`` (a number or auto);
    ``explicit_threads``: TRAINJOB_THREADS was set by the user, and is kept."""
    cores = thread_count(0)
    gpus = gpus_visible(settings.device)
    if settings.parallel_trials == "auto":
        if gpus:
            n = max(2, min(MAX_AUTO, cores // 2))
            why = f"auto: {n} trials sharing {gpus} GPU(s), one per 2 of {cores} CPU cores"
        else:
            n = max(1, min(MAX_AUTO, cores))
            why = f"auto: {n} trial(s) on {cores} CPU cores, one thread each"
    else:
        n = int(settings.parallel_trials)
        why = f"{n} trial(s) at once"
    if n == 1 or explicit_threads:
        return Parallel(n, None, why)
    threads = max(1, cores // n)
    return Parallel(n, threads, f"{why}, {threads} CPU thread(s) each")


class Slots:
    """Runs up to ``n`` calls at once, each in a thread of its own (a trial's thread only waits
    for its process): ``submit`` blocks while every slot is busy. With ``n == 1`` a call runs
    right away in the caller's thread, exactly as a plain loop would.

    The first error a call raises (a signal's ``Interrupted``, ``SweepGaveUp``) is raised again
    by the next ``submit`` or by leaving the ``with`` block, which always waits for the calls
    still running: their trials end on their own (or by the forwarded signal), never orphaned.
    ``check`` is called while waiting for a slot (it raises when the sweep was signalled).
    """

    def __init__(self, n: int, check: Callable[[], None]) -> None:
        self.n = n
        self.check = check
        self._free = threading.Semaphore(n)
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def __enter__(self) -> Slots:
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join()
        if self._errors and exc[0] is None:
            raise self._errors[0]

    def submit(self, call: Callable[..., object], *args: object) -> None:
        if self.n == 1:
            call(*args)
            return
        while not self._free.acquire(timeout=0.2):
            if self._errors:
                raise self._errors[0]
            self.check()
        if self._errors:
            self._free.release()
            raise self._errors[0]

        def body() -> None:
            try:
                call(*args)
            except BaseException as exc:  # handed to the main thread
                self._errors.append(exc)
            finally:
                self._free.release()

        thread = threading.Thread(target=body, name="trainjob-trial-slot")
        self._threads.append(thread)
        thread.start()
