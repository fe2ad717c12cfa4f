"""``trainjob sync [PATH ...]``: upload offline W&B runs, each folder exactly once, in bounded time.

    trainjob sync                      # every offline run under $WANDB_DIR (or .)
    trainjob sync /workspace --sync_stall_s 120

PATH is a WANDB_DIR (holding ``wandb/``), a ``wandb/`` folder, or one run folder (which selects
that run: all of its folders beside it). Each upload is W&B's own ``wandb sync`` CLI, run as a
child process; trainjob adds three things it lacks (wandb 0.31):

- **Resumed runs.** A resumed offline run is one folder per process,
  ``wandb/offline-run-<YYYYMMDD_HHMMSS>-<id>/run-<id>.wandb`` (wandb never appends to an existing
  folder). The first is uploaded without resume, every later one with ``WANDB_RESUME=allow``, oldest
  first by the folder's timestamp: only the sync's resume setting makes a later file *append* to
  the run instead of starting its history over (wandb-core's ``runupserter.InitRun``). Runs go up
  in rounds (the first pending folder of every run, then the second, ...), one ``wandb sync`` per
  round and resume mode, so that a run's folders never race each other.
- **A bound on the wait.** ``wandb sync`` has no timeout: against a server that accepts a
  connection and never answers it waits for ever. The child runs in its own session; when it makes
  no progress (no output line, no new ``.wandb.synced`` marker) for ``sync_stall_s`` seconds its
  whole process group (wandb-core included) is killed: exit 8. What was marked synced stays
  synced, so a rerun uploads only the rest.
- **Honest results.** ``wandb sync`` exits 0 even when the server refused a run (it prints an
  ERROR line and writes no marker), so success is the marker, checked per folder.

Exit codes: 0 uploaded (or nothing to upload), 2 no or rejected credentials, a missing PATH,
8 the server cannot be reached or stopped answering.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, WandbUnreachable
from ..log import logger
from ..settings import env_name
from .env import base_url, redact
from .history import has_records
from .runfile import RunFolder, folders_of_run, run_folder
from .server import REJECTED, probe

log = logger("sync")

REJECTED_STATUS = re.compile(r"\b(?:error|status) (401|403)\b")  # wandb-core's request errors


@dataclass(frozen=True)
class Fragment(RunFolder):
    """One offline run folder with a run file: one process's part of run ``run_id``."""

    @property
    def synced(self) -> bool:
        """wandb sync writes ``run-<id>.wandb.synced`` once the server took the whole file."""
        return self.log.with_name(self.log.name + ".synced").exists()


def hint(*paths: Path) -> str:
    """The command a user runs to upload ``paths`` (a WANDB_DIR, a wandb/ folder or run folders)."""
    return "trainjob sync " + " ".join(shlex.quote(str(Path(p).absolute())) for p in paths)


def fragment_of(folder: Path) -> Fragment | None:
    return _offline(run_folder(folder.absolute()))


def _offline(found: RunFolder | None) -> Fragment | None:
    if found is None or not found.offline or not found.log.is_file():
        return None
    return Fragment(found.path, found.started, found.run_id)


def find_runs(paths: Iterable[Path]) -> dict[str, list[Fragment]]:
    """The offline runs under ``paths``: run id -> its folders with records, oldest first.

    A run folder selects its whole run: the other folders of the same id beside it are earlier
    or later parts of it, and uploading one part alone would leave a gap in its history. A folder
    without a single complete record (its process was killed before wandb-core wrote a block)
    holds nothing to upload and is left out: ``wandb sync`` fails on it."""
    found: set[Fragment] = set()
    for path in paths:
        if not path.exists():
            raise ConfigError(
                f"sync PATH {path} does not exist; give a WANDB_DIR, a wandb/ folder "
                "or a run folder"
            )
        own = fragment_of(path)
        if own is not None:
            siblings = folders_of_run(path.absolute().parent, own.run_id)
            found.update(f for f in map(_offline, siblings) if f)
            continue
        base = path / "wandb" if (path / "wandb").is_dir() else path
        found.update(f for f in map(fragment_of, base.glob("offline-run-*")) if f)
    runs: dict[str, list[Fragment]] = {}
    found = {f for f in found if f.synced or has_records(f.log)}
    for fragment in sorted(found, key=lambda f: f.order):
        runs.setdefault(fragment.run_id, []).append(fragment)
    return runs


def rounds(runs: dict[str, list[Fragment]]) -> list[tuple[bool, list[Fragment]]]:
    """The uploads, in order: (resume, folders). Round k holds the k-th pending folder of each run;
    a folder resumes its run when an earlier folder of that run exists (uploaded now or before)."""
    pending = [[(i > 0, f) for i, f in enumerate(fs) if not f.synced] for fs in runs.values()]
    batches = []
    for k in range(max(map(len, pending), default=0)):
        this = [p[k] for p in pending if len(p) > k]
        for resume in (False, True):
            folders = [f for r, f in this if r == resume]
            if folders:
                batches.append((resume, folders))
    return batches


def sync(paths: Sequence[Path], stall_s: float) -> int:
    runs = find_runs(paths)
    folders = sum(len(f) for f in runs.values())
    total = sum(not all(f.synced for f in fs) for fs in runs.values())
    where = " ".join(str(p) for p in paths)
    if not total:
        log.info(f"nothing to upload: {folders} offline folder(s) under {where} synced")
        return 0
    url = base_url()
    setting = f"{env_name('sync_stall_s')}={stall_s:g}s"

    def unreachable(reason: str) -> WandbUnreachable:
        done = sum(all(f.synced for f in fs) for fs in runs.values()) - (len(runs) - total)
        return WandbUnreachable(
            f"W&B server {url}: {reason} ({setting}; allowed 0 < s <= 86400); {done} run(s) "
            f"uploaded, {total - done} left: rerun `{hint(*paths)}` to upload only the rest"
        )

    problem = probe(stall_s)  # refused / unresolvable at once; silent within stall_s
    if problem is not None:
        raise unreachable(problem)
    uploaded = 0
    for resume, batch in rounds(runs):
        _upload(batch, resume, stall_s, unreachable)
        for fragment in batch:  # all marked synced now: print the runs this round completed
            parts = runs[fragment.run_id]
            if all(f.synced for f in parts):
                uploaded += 1
                resumed = f" ({len(parts) - 1} resumed)" if len(parts) > 1 else ""
                log.info(
                    f"uploaded {fragment.run_id}: {len(parts)} folder(s){resumed}, "
                    f"{parts[0].path.parent}/offline-run-*-{fragment.run_id}"
                )
    log.info(f"{uploaded} run(s) uploaded to {url}; {folders} folder(s) under {where}")
    return 0


def _upload(
    batch: list[Fragment],
    resume: bool,
    stall_s: float,
    unreachable: Callable[[str], WandbUnreachable],
) -> None:
    """One ``wandb sync`` over ``batch`` (folders of distinct runs), killed after ``stall_s``
    seconds without progress; every folder must end up marked synced."""
    env = {**os.environ, "WANDB_MODE": "online", "WANDB_SILENT": "false"}  # its lines: progress
    env.pop("WANDB_RESUME", None)
    if resume:
        env["WANDB_RESUME"] = "allow"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wandb", "sync", *(str(f.path) for f in batch)],
        stdin=subprocess.DEVNULL,  # a login prompt must fail, not wait
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: wandb-core goes with it
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    said: list[str] = []
    marked = sum(f.synced for f in batch)
    last = time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if line is None or (proc.poll() is not None and lines.empty()):
                break  # it ended (an orphaned wandb-core may still hold the pipe open)
            if line:
                said.append(redact(line.rstrip()))
                last = time.monotonic()
            now_marked = sum(f.synced for f in batch)
            if now_marked > marked:
                marked, last = now_marked, time.monotonic()
            if time.monotonic() - last > stall_s:
                raise unreachable(f"`wandb sync` made no progress for {stall_s:g}s; stopped it")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child, its wandb-core, anything left
        proc.wait()
    left = [f for f in batch if not f.synced]
    if not left:
        return
    errors = [s for s in said if "ERROR" in s] or said[-1:] or ["no output"]
    rejected = next((m.group(1) for s in said if (m := REJECTED_STATUS.search(s))), None)
    if rejected:
        raise ConfigError(REJECTED.format(url=base_url(), status=f"HTTP {rejected}"))
    raise unreachable(
        f"`wandb sync` exited {proc.returncode} without uploading {left[0].path.name}: {errors[-1]}"
    )


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)
