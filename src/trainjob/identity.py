"""Which run a job is, decided before any W&B run exists: one run id = one training.

A job's run id is, in this order: the one W&B's sweep agent assigned (``WANDB_RUN_ID`` in a
sweep), ``TRAINJOB_RUN_ID``, the id of an interrupted run whose checkpoint waits in
``TRAINJOB_CHECKPOINT_DIR`` (so that rerunning the same command resumes it), or a new one.
Then, in this order:

1. its lease (``<checkpoint_dir>/<run id>/lease.json``, records.Lease) is taken: a second live
   job with the id exits 9 (RunInUse), naming the holder;
2. its checkpoint is read from ``<checkpoint_dir>/<run id>/`` (never another run's);
3. a run that already finished is refused (exit 2), and so is a run that has history but no
   checkpoint (exit 10): a new training appended to it would splice two trainings into one
   curve (docs/runs.md).
"""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import records
from .errors import ConfigError, HistoryWithoutCheckpoint, RunInUse
from .log import logger
from .settings import Settings, env_name

log = logger()

_ID_CHARS = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """8 characters of [a-z0-9], as W&B generates them."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


@dataclass
class Claim:
    """A job's run: its id, its checkpoint folder, the lease it holds and the checkpoint it
    resumes from (None for a new training)."""

    run_id: str
    checkpoint_folder: Path  # <checkpoint_root>/<run id>: this run's checkpoints and its lease
    lease: records.Lease
    state: dict[str, Any] | None


def lease_path(checkpoint_root: Path, run_id: str) -> Path:
    return checkpoint_root / run_id / records.LEASE_FILE


def claim(settings: Settings, mode: str) -> Claim:
    """The run this job is, its lease taken and its checkpoint loaded; see the module docstring.
    Raises RunInUse (9), ConfigError (2) or HistoryWithoutCheckpoint (10)."""
    from . import checkpoint

    root = settings.checkpoint_root
    ttl = settings.lease_ttl_s
    given = _given_run_id(settings)
    if given is not None:
        lease = records.Lease(lease_path(root, given), ttl, "train")
        holder = lease.try_acquire()
        if holder is not None:
            raise RunInUse(
                f"W&B run {given} is being trained by another job ({holder.describe()}); a run "
                f"id means one live job: wait for it to end, or set a new {env_name('run_id')}"
            )
        run_id = given
    else:
        run_id, lease = _interrupted(root, ttl) or (new_run_id(), None)  # type: ignore[assignment]
        if lease is None:
            lease = records.Lease(lease_path(root, run_id), ttl, "train")
            lease.acquire()  # a fresh random id: nobody else holds it
    try:
        folder = root / run_id
        state = checkpoint.load_latest(folder)
        if state is not None and state.get("run_id") not in (None, run_id):
            raise ConfigError(
                f"the checkpoint {state['path']} belongs to W&B run {state.get('run_id')}, not "
                f"{run_id}; it is not resumed under another id: move it back to "
                f"{root / str(state.get('run_id'))} or delete it"
            )
        if given is not None or state is not None:  # a new random id has no past to check
            trace = _trace(settings, run_id, mode)
            _refuse_finished(run_id, folder, state is not None, trace)
            if state is None:
                _refuse_splice(run_id, folder, trace)
        if state is not None and given is None:
            log.info(
                f"resuming interrupted run {run_id} (its checkpoint is in {folder}); "
                f"set {env_name('run_id')} to start another run instead"
            )
    except BaseException:
        lease.release()
        raise
    return Claim(run_id, folder, lease, state)


def _given_run_id(settings: Settings) -> str | None:
    # Inside a W&B sweep the agent owns the run id (a requeued trial gets its old one back).
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    return settings.run_id


def _interrupted(root: Path, ttl: float) -> tuple[str, records.Lease] | None:
    """The newest interrupted run (a checkpoint and no live job) under ``root``, its lease
    taken; None when there is none. Several interrupted runs: the newest, said in one line."""
    from . import checkpoint

    found = []
    for folder in root.iterdir() if root.is_dir() else []:
        files = checkpoint.checkpoints(folder) if folder.is_dir() else []
        if files:
            found.append((files[0].stat().st_mtime, folder.name))
    for _, run_id in sorted(found, reverse=True):
        lease = records.Lease(lease_path(root, run_id), ttl, "train")
        if lease.try_acquire() is None:
            return run_id, lease
    return None


def _trace(settings: Settings, run_id: str, mode: str) -> Any:
    """What is known of ``run_id``: trainjob's run record, then tracking.run_trace (the run
    folders under WANDB_DIR and, online, the server)."""
    from .tracking import run as tracking

    trace = tracking.run_trace(settings, run_id, mode)
    path = records.run_record_path(settings.output_dir, run_id)
    record = records.RunRecord.read(path)
    if record is not None and record.exit_code == 0:
        trace.finished = str(path)
    return trace


def _refuse_finished(run_id: str, folder: Path, from_checkpoint: bool, trace: Any) -> None:
    """A run id means one run: never reopen a finished run (a second job under the same id
    would log its config and summary into it, and ``wandb sync`` would merge both)."""
    where = trace.finished
    if where is None:
        return
    if from_checkpoint:  # left behind by a job that finished (killed before removing it)
        raise ConfigError(
            f"the checkpoint in {folder} belongs to W&B run {run_id}, which already finished "
            f"({where}); delete that checkpoint to start a new run"
        )
    raise ConfigError(
        f"{env_name('run_id')}={run_id} names W&B run {run_id}, which already finished ({where}); "
        f"a run id means one run: set a new {env_name('run_id')} (or none, for a generated one)"
    )


def _refuse_splice(run_id: str, folder: Path, trace: Any) -> None:
    """A run with history and no checkpoint cannot be continued: refuse (exit 10)."""
    if trace.last_step < 0:
        return
    raise HistoryWithoutCheckpoint(
        f"W&B run {run_id} already has history up to step {trace.last_step} ({trace.where}) but "
        f"no checkpoint in {folder}: training it again from scratch would splice two trainings "
        f"into one curve; set a new {env_name('run_id')} (or none) to start a new run, or restore "
        "its checkpoint folder to resume"
    )
