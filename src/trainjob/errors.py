"""Exit codes and the exceptions that carry them.

Exit codes are part of the interface: the Kubernetes Jobs' ``podFailurePolicy`` and the sweep
agent both read them, so they live here, once, and the README's table is checked against this
module by a test (tests/test_docs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from .log import logger

log = logger()


class ExitCode(IntEnum):
    OK = 0  # the job finished; the W&B run is complete
    CRASHED = 1  # an unexpected error (a bug): traceback printed, worth a retry
    BAD_CONFIG = 2  # invalid setting, flag, sweep file or W&B credentials: retrying cannot help
    DATA = 3  # dataset missing, truncated, corrupt or not downloadable: fix the data, then rerun
    DIVERGED = 4  # the loss became NaN/inf: the hyperparameters are bad, the run is marked failed
    STORAGE = 5  # an output, W&B or checkpoint dir is unwritable, or the disk is full
    # The trial was stopped by its sweep (early termination, a user's stop in W&B): not a
    # failure, nothing to resume, no checkpoint kept.
    STOPPED = 6
    SWEEP_GAVE_UP = 7  # an agent / local sweep ended after too many consecutive failed trials
    # No answer from the W&B server at WANDB_BASE_URL where nothing can fall back offline
    # (trainjob agent, trainjob sweep create): the network or the server, not the input.
    WANDB_UNREACHABLE = 8
    # Another live job holds this run id's lease (a re-applied Job whose old pod still runs, a
    # second `docker run`): two processes must never write one run. Worth a retry later: the
    # holder may be gone by then (a dead holder's lease expires after TRAINJOB_LEASE_TTL_S).
    RUN_IN_USE = 9
    # The run id already has W&B history but no checkpoint to continue it from (a pod moved to
    # a node without its volume, a deleted checkpoint folder): training again from scratch under
    # that id would splice two trainings into one curve. Start a new run instead.
    HISTORY_WITHOUT_CHECKPOINT = 10
    PREEMPTED = 143  # SIGTERM/SIGINT/SIGUSR1: checkpoint written, rerun to resume (128 + 15)


class TrainjobError(Exception):
    """An expected failure: printed as one line, mapped to an exit code, never a traceback."""

    exit_code: ExitCode = ExitCode.CRASHED


class ConfigError(TrainjobError):
    exit_code = ExitCode.BAD_CONFIG


class DataError(TrainjobError):
    exit_code = ExitCode.DATA


class DivergedError(TrainjobError):
    exit_code = ExitCode.DIVERGED


class StorageError(TrainjobError):
    exit_code = ExitCode.STORAGE


class RunInUse(TrainjobError):
    exit_code = ExitCode.RUN_IN_USE


class HistoryWithoutCheckpoint(TrainjobError):
    exit_code = ExitCode.HISTORY_WITHOUT_CHECKPOINT


class Preempted(TrainjobError):
    exit_code = ExitCode.PREEMPTED


class Interrupted(TrainjobError):
    """A sweep process (``trainjob agent``, ``sweep run``) got SIGTERM/SIGINT/SIGUSR1: the running
    trial was told to checkpoint and stop, and no further trial starts."""

    exit_code = ExitCode.PREEMPTED


class TrialStopped(TrainjobError):
    """The sweep stopped this trial between two steps: the run is closed, no checkpoint kept."""

    exit_code = ExitCode.STOPPED


class SweepGaveUp(TrainjobError):
    exit_code = ExitCode.SWEEP_GAVE_UP


class WandbUnreachable(TrainjobError):
    exit_code = ExitCode.WANDB_UNREACHABLE


class ExportError(TrainjobError):
    """The exported model is invalid or disagrees with torch (a bug, hence exit 1)."""

    exit_code = ExitCode.CRASHED


def as_exit_code(body: Callable[[], int]) -> int:
    """``body()``'s exit code; a trainjob error's is one line on stderr (no traceback) and the
    error's code. Anything else is a bug and keeps its traceback (exit 1)."""
    try:
        return body()
    except TrainjobError as exc:
        if exc.exit_code == ExitCode.STOPPED:  # 6: not a failure
            log.info(f"stopped: {exc}")
        else:
            log.error(str(exc))
        return int(exc.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C while checkpointing
        log.info("interrupted")
        return int(ExitCode.PREEMPTED)
