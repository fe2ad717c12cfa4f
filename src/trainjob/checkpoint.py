"""Checkpoints: save / restore, and the loop's checkpointing hook.

A pod on a spot node gets SIGTERM, a grace period (30 s by default) and then SIGKILL. The
signal only sets a flag (interrupt.py); this module's hook reads it after each step (signals are
handled in the main thread, never mid-``optimizer.step``), writes a checkpoint and raises
``Preempted`` (exit 143).
Files are written atomically (temp file, fsync, rename, fsync of the folder) and carry a
SHA-256 of their payload, so a truncated or bit-flipped newest file is detected, renamed to
``*.damaged`` and the previous one is used instead of crash-looping; with no usable file left the
job starts from scratch (with a warning) rather than refusing to run forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import StorageError
from .interrupt import Interrupt
from .log import logger
from .model import unwrap
from .records import write_atomic
from .train import Hook, Progress

MAGIC = b"TRAINJOB-CKPT-1\n"
KEEP = 2
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")
log = logger()


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = buffer.getvalue()
    return MAGIC + hashlib.sha256(body).digest() + body


def decode(blob: bytes) -> dict[str, Any]:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 32:
        raise ValueError("not a trainjob checkpoint (bad header)")
    digest, body = blob[len(MAGIC) : len(MAGIC) + 32], blob[len(MAGIC) + 32 :]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch (truncated or corrupt)")
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    assert match is not None
    return int(match.group(1))


def load_latest(directory: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint, or None.

    A damaged file (truncated, bit-flipped, not ours) is renamed to ``<name>.damaged`` with a
    warning and the next older one is tried: the damaged file can be inspected, is never tried
    again, and cannot outrank (and so prune) the checkpoints this run writes next. When no file
    is usable the job starts from scratch with a warning: exiting instead would make Kubernetes
    restart the pod into the same failure forever.
    """
    found = checkpoints(directory)
    for path in found:
        try:
            blob = path.read_bytes()
        except OSError as exc:  # the volume, not the file: setting it aside could lose work
            raise StorageError(
                f"cannot read checkpoint {path} ({exc.strerror or exc}); check the volume "
                "behind TRAINJOB_CHECKPOINT_DIR"
            ) from None
        try:
            state = decode(blob)
        except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            log.warning(f"damaged checkpoint {path} ({exc}); trying the previous one")
            with contextlib.suppress(OSError):  # if it stays, save() still prunes it by step
                path.replace(path.with_name(path.name + ".damaged"))
            continue
        state["path"] = str(path)
        return state
    if found:
        log.warning(f"no usable checkpoint in {directory}; starting from scratch")
    return None


def weights_sha256(model: torch.nn.Module) -> str:
    """A digest of the model's parameters and buffers (names, dtypes, shapes, values).

    Independent of memory format and device, so a resumed run can be compared bit for bit with an
    uninterrupted one (and two runs' models compared without loading them).
    """
    digest = hashlib.sha256()
    state = unwrap(model).state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> Any:
    # weights_only loading turns the tuple state of ``random`` into lists; it wants tuples back.
    return tuple(_as_python_state(v) for v in value) if isinstance(value, list) else value


def restore(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Progress:
    """Model and optimizer from ``state``; returns the saved ``Progress``. The RNG is restored
    separately, by ``restore_rng(state["rng"])`` right before the loop, so that nothing run
    during setup (W&B, the data loader) can consume random numbers in between."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return Progress(**state["progress"])


class Checkpointer(Hook):
    """The loop's checkpointing hook: periodic, epoch-end and on a preemption signal (read from
    ``interrupt``: save, then raise ``Preempted``).

    ``meta`` holds fixed entries of every checkpoint (the W&B run id, the config); ``extra``
    is called at each save for entries that change (the last history rows)."""

    def __init__(
        self,
        directory: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        interrupt: Interrupt,
        every_steps: int = 0,
        every_s: float = 0.0,
        meta: dict[str, Any] | None = None,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.directory = directory
        self.model = model
        self.optimizer = optimizer
        self.interrupt = interrupt
        self.every_steps = every_steps
        self.every_s = every_s
        self.meta = dict(meta or {})
        self.extra = extra
        self._last_save = time.monotonic()

    def before_loop(self, progress: Progress) -> None:
        """A signal that came during setup (after ``Interrupt.arm``) stops the job here."""
        if self.interrupt.signal is not None:
            self._stop(progress, save=True)

    def after_step(self, progress: Progress) -> None:
        if self.interrupt.signal is not None:
            self._stop(progress, save=True)
        due_steps = self.every_steps and progress.step % self.every_steps == 0
        due_time = self.every_s and time.monotonic() - self._last_save >= self.every_s
        if due_steps or due_time:
            self.save(progress)

    def after_epoch(self, progress: Progress) -> None:
        self.save(progress)
        if self.interrupt.signal is not None:
            self._stop(progress, save=False)

    def during_eval(self, progress: Progress) -> None:
        # Training is over and its final state is already saved (after_epoch, or the checkpoint
        # this process resumed from): just stop; a resumed job re-runs the evaluation.
        if self.interrupt.signal is not None:
            self._stop(progress, save=False)

    def _stop(self, progress: Progress, save: bool) -> None:
        if save:
            path = self.save(progress)
            log.info(f"checkpoint saved: {path}")
        raise self.interrupt.preempted(progress, self.directory)

    def save(self, progress: Progress) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        model = unwrap(self.model)
        state = {
            "version": 1,
            "progress": progress.state_dict(),
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            **self.meta,
            **(self.extra() if self.extra else {}),
        }
        path = self.directory / f"ckpt-{progress.step:012d}.pt"
        write_atomic(path, encode(state))
        # Keep this file and the one before it. A file with a higher step is from a future this
        # run did not resume from (it was damaged and unreadable): it must not outrank this one.
        kept = [p for p in checkpoints(self.directory) if _step_of(p) <= progress.step]
        stale = [p for p in checkpoints(self.directory) if _step_of(p) > progress.step]
        for old in stale + kept[KEEP:]:
            old.unlink(missing_ok=True)
        self._last_save = time.monotonic()
        return path


def remove(directory: Path) -> None:
    """Every checkpoint in ``directory``: a run that ended for good leaves none behind."""
    for path in checkpoints(directory):
        path.unlink(missing_ok=True)
