"""Continue a W&B run's history after a restart: no duplicated and no missing rows.

A resumed job replays the steps after its checkpoint. Rows the interrupted process had already
logged (all of them after SIGTERM, possibly more than the checkpoint after SIGKILL) must not be
logged again: W&B's history is indexed by step, and a step can only be written once. So before
training, the job finds the highest step the run's history already holds (its *floor*) and
``History`` drops every row at or below it. The floor comes from where the history really is:

- online: ``Tracker.starting_step - 1`` (wandb's ``run.starting_step``), the server's view of
  the resumed run (the server rejects lower steps anyway);
- offline: the history rows in this run's earlier ``.wandb`` transaction logs beside the current
  one (``wandb/offline-run-*-<id>``, ``-1`` added by wandb on a clash; one folder per process:
  wandb 0.31 never appends to an existing one). This also covers SIGKILL: whatever the killed
  process got into its file is exactly what ``trainjob sync`` (``wandb sync``) will upload, and
  nothing else.

"The last step logged before the checkpoint" is deliberately *not* used: after SIGKILL the rows
after it may already be in the file (duplicates), and rows logged before it may never have reached
the file or the server (a gap): wandb-core writes the transaction log in whole 32 KiB blocks and
uploads every few seconds, so a SIGKILL loses the tail. To fill that gap the checkpoint carries
the last ``KEEP_ROWS`` scalar rows; on resume those above the floor are logged again (``replay``),
with their original values. Only the ``run.watch`` histograms of those rows are lost.

``run.watch`` histograms are attached by wandb to the row that is open when a hook fires; in a
resumed process that would be step 0 (offline) before the first row. The job therefore installs
``watch`` only after the first row it really logs (``History.on_first_row``).

The transaction log's format and its reader are runfile.py's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..log import logger
from .runfile import folders_of_run, payloads, records

# Rows kept in each checkpoint. A 32 KiB block of the transaction log holds about a hundred rows
# (each row also writes a summary record), an upload interval a few hundred: 1000 is a margin.
KEEP_ROWS = 1000
log = logger()


class History:
    """What the loop logs to (train.py's ``HistoryLog``): passes rows above ``floor`` on to the
    ``tracker`` (run.Tracker), drops the others, and keeps the last ``KEEP_ROWS`` rows for
    the checkpoint (``rows``)."""

    def __init__(
        self, tracker: Any, floor: int = -1, on_first_row: Callable[[], None] | None = None
    ) -> None:
        self.tracker = tracker
        self.floor = floor
        self.skipped = 0
        self.rows: deque[tuple[int, dict[str, float | int]]] = deque(maxlen=KEEP_ROWS)
        # Called once, after the first row that really reaches the tracker.
        self.on_first_row = on_first_row

    def replay(self, rows: Iterable[tuple[int, Mapping[str, float | int]]]) -> int:
        """Log a checkpoint's rows again; returns how many were missing from the history."""
        before = self.skipped
        rows = list(rows)
        for step, metrics in rows:
            self.log(metrics, step)
        return len(rows) - (self.skipped - before)

    def log(self, metrics: Mapping[str, float | int], step: int) -> None:
        self.rows.append((step, dict(metrics)))
        if step <= self.floor:
            self.skipped += 1  # already in the run's history: the interrupted process logged it
            return
        self.tracker.log(metrics, step=step)
        if self.on_first_row is not None:
            callback, self.on_first_row = self.on_first_row, None
            callback()


def history_floor(tracker: Any) -> int:
    """The highest step the run's history already holds, or -1 for a new run."""
    if getattr(tracker, "mode", "disabled") == "disabled":
        return -1
    if tracker.mode == "online":
        return int(tracker.starting_step) - 1
    floor = -1
    for path in earlier_transaction_logs(Path(tracker.run_dir), tracker.run_id):
        step = last_history_step(path)
        if step is not None:
            floor = max(floor, step)
    return floor


def earlier_transaction_logs(run_dir: Path, run_id: str) -> list[Path]:
    """``run-<id>.wandb`` files of the same run id beside ``run_dir`` (earlier processes)."""
    here = run_dir.resolve()
    return [
        folder.log
        for folder in folders_of_run(run_dir.parent, run_id)
        if folder.path.resolve() != here and folder.log.is_file()
    ]


def last_history_step(path: Path) -> int | None:
    """The highest ``_step`` of the history rows in a ``.wandb`` file; None when it has none.

    A file cut short by SIGKILL ends in a partial record: it is ignored, like wandb's own reader
    does; an unreadable file counts as empty (with a warning) rather than stopping the job.
    """
    if not path.is_file():
        return None
    return scan_run_file(path, warn=True)[0]


def scan_run_file(path: Path, warn: bool = False) -> tuple[int | None, int | None]:
    """One pass over a ``.wandb`` file: (the highest history ``_step`` or None, the exit
    record's code or None). A missing or unreadable file gives (None, None)."""
    last: int | None = None
    code: int | None = None
    try:
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                step = record.history.step.num
                last = step if last is None else max(last, step)
            elif kind == "exit":
                code = record.exit.exit_code
    except OSError as exc:
        if warn:
            log.warning(f"cannot read {path}: {exc}")
        return None, None
    return last, code


def has_records(path: Path) -> bool:
    """Whether a ``.wandb`` file holds at least one complete record. A process killed before
    wandb-core wrote its first 32 KiB block leaves only the 7-byte header, which ``wandb sync``
    cannot read ("transactionlog: error getting next record: EOF") and never marks synced."""
    try:
        blob = path.read_bytes()
    except OSError:
        return False
    return next(payloads(blob), None) is not None
