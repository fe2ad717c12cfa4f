"""The records a job leaves on disk, in one place: how each is named, written and read.

    <output_dir>/<run id>/run.json      RunRecord: how the job ended, its W&B folder, summary
    <output_dir>/<run id>/epochs.json   the sweep metric after each epoch (EpochValues)
    <output_dir>/run.json, model.onnx   links to the latest job's files (point_latest)
    <output_dir>/early_terminate.json   a sweep trial's stopping rule (written by the driver)
    <output_dir>/sweeps/<name>/sweep.yaml  the file of an offline sweep (its driver copies it)
    <checkpoint_dir>/<run id>/lease.json  the lease: one live job per run id (Lease)

Every file is written through ``write_atomic`` (temp file, fsync, rename, fsync of the folder):
a reader sees the old file or the complete new one, never half of one, also after a full disk
or a SIGKILL. ``replacing`` is that write for everyone: checkpoints, the ONNX model, the data
and ONNX template caches. Nothing here imports torch or wandb.

The lease works where only a shared file system connects the contenders (two pods on a
ReadWriteMany volume, two containers on one Docker volume): it is a file created with
``O_EXCL`` whose holder rewrites it every ``ttl / 3`` seconds (the heartbeat). A contender never
compares clocks across machines: it watches the file with its own clock, and a lease whose
heartbeat has not changed for ``ttl`` seconds is expired (its holder died without releasing
it). A holder on this host whose process is gone is expired at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunInUse, StorageError
from .log import logger

log = logger()

RUN_RECORD = "run.json"
EPOCHS_FILE = "epochs.json"
RULE_FILE = "early_terminate.json"
SWEEP_FILE = "sweep.yaml"
LEASE_FILE = "lease.json"


# --- writing -----------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, durable: bool = True) -> Iterator[Path]:
    """A private temp file beside ``path`` for the block to fill (write it, or hand it to an
    exporter). When the block ends, the temp file replaces ``path`` in one ``os.replace``: a
    reader sees the old file or the complete new one, never half, and concurrent writers never
    mix (the last one wins). On any error the temp file is removed, ``path`` is untouched and
    the error goes on (OSError as it came). ``durable``: fsync the file before the rename and
    the folder after it, so that a full disk, a SIGKILL or a power loss still leaves one of
    the two; a cache whose reader re-hashes what it reads can skip that."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique across hosts too
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder refuses the unlink too
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, payload: bytes | Callable[[Path], None]) -> None:
    """Write ``path`` durably (``replacing``): ``payload`` is the bytes, or a function that
    writes the file it is given (an exporter). StorageError (exit 5) when it cannot be written;
    the temp file is gone and the previous file untouched (a full disk keeps the last good
    checkpoint)."""
    try:
        with replacing(path) as tmp:
            if callable(payload):
                payload(tmp)
            else:
                tmp.write_bytes(payload)
    except OSError as exc:
        raise StorageError(
            f"could not write {path}: {exc.strerror or exc}; the previous file is kept"
        ) from None


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=1) + "\n").encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def point_latest(link: Path, target: Path) -> None:
    """Make ``link`` (``outputs/model.onnx``, ``outputs/run.json``) lead to the latest job's
    ``target`` (``outputs/<run_id>/...``): a relative symlink, swapped in atomically, so the
    folder can be moved or mounted elsewhere; a copy where the file system has no symlinks."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(target, link.parent))
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


# --- run records -------------------------------------------------------------------------------


def run_folder(output_dir: Path, run_id: str) -> Path:
    """Everything one run writes besides checkpoints and W&B's files."""
    return output_dir / run_id


def run_record_path(output_dir: Path, run_id: str | None = None) -> Path:
    """``<output_dir>/<run_id>/run.json`` for one run; ``<output_dir>/run.json`` (a link to the
    latest job's) without ``run_id``."""
    return (run_folder(output_dir, run_id) if run_id else output_dir) / RUN_RECORD


@dataclass
class RunRecord:
    """How a job ended (``run.json``). Offline sweeps read trial results back from it."""

    exit_code: int
    run_id: str
    mode: str
    run_dir: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> RunRecord | None:
        blob = read_json(path)
        if blob is None or not isinstance(blob.get("exit_code"), int):
            return None
        summary = blob.get("summary")
        return cls(
            exit_code=int(blob["exit_code"]),
            run_id=str(blob.get("run_id") or ""),
            mode=str(blob.get("mode") or ""),
            run_dir=blob.get("run_dir") if isinstance(blob.get("run_dir"), str) else None,
            summary=summary if isinstance(summary, dict) else {},
        )

    def write(self, output_dir: Path) -> None:
        """``<output_dir>/<run_id>/run.json`` and the latest-run link to it."""
        path = run_record_path(output_dir, self.run_id)
        write_json(path, asdict(self))
        try:
            point_latest(run_record_path(output_dir), path)
        except OSError as exc:
            raise StorageError(f"could not link {run_record_path(output_dir)}: {exc}") from None


def read_epoch_values(folder: Path, metric: str) -> list[float]:
    """The per-epoch values of ``metric`` in ``folder``'s ``epochs.json`` (oldest first)."""
    values = (read_json(folder / EPOCHS_FILE) or {}).get(metric, [])
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if isinstance(v, int | float)]


def write_epoch_values(folder: Path, metric: str, values: list[float]) -> None:
    write_json(folder / EPOCHS_FILE, {metric: [float(v) for v in values]})


def read_rule(folder: Path) -> dict[str, Any] | None:
    """A sweep trial's early-termination rule (``early_terminate.json``), None without one."""
    blob = read_json(folder / RULE_FILE)
    return blob if blob and "config" in blob and "runs" in blob else None


def write_rule(folder: Path, config: Mapping[str, Any], runs: list[Mapping[str, Any]]) -> None:
    keys = ("method", "metric", "early_terminate")
    write_json(
        folder / RULE_FILE, {"config": {k: config[k] for k in keys if k in config}, "runs": runs}
    )


# --- the lease ----------------------------------------------------------------------------------


def _who() -> tuple[str, str]:
    """This process's host and, in a Kubernetes pod, its pod name (HOSTNAME is the pod's)."""
    host = socket.gethostname()
    pod = os.environ.get("POD_NAME") or ""
    return host, pod


@dataclass
class Holder:
    """Who holds a lease, as written in the lease file."""

    host: str
    pid: int
    since: float  # wall clock, when taken: for people, never compared across hosts
    beat: int  # heartbeat counter: changes every ttl / 3 s while the holder lives
    token: str  # unique per acquisition
    ttl: float
    what: str = ""  # "train", "sweep point"
    pod: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        where = f"pod {self.pod} on {self.host}" if self.pod else f"host {self.host}"
        return f"{where}, pid {self.pid}, since {when}"

    @classmethod
    def parse(cls, blob: dict[str, Any] | None) -> Holder | None:
        try:
            return cls(**blob) if blob else None
        except TypeError:
            return None

    def dead_here(self) -> bool:
        """The holder ran on this host and its process is gone (SIGKILL, OOM)."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class Lease:
    """One live holder of ``path`` at a time, with a heartbeat (see the module docstring).

    ``acquire()`` raises ``RunInUse`` naming the holder when another live process holds it;
    ``try_acquire()`` returns that holder instead. While held, a daemon thread renews it; if the
    file is found taken by someone else (this process stalled for longer than ``ttl``),
    ``lost`` turns true and ``on_lost`` is called once.
    """

    def __init__(
        self,
        path: Path,
        ttl: float = 30.0,
        what: str = "",
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.ttl = ttl
        self.what = what
        self.on_lost = on_lost
        self.lost = False
        self._holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._holder is not None

    def acquire(self) -> None:
        holder = self.try_acquire()
        if holder is not None:
            raise RunInUse(f"{self.path} is held by {holder.describe()}")

    def try_acquire(self) -> Holder | None:
        """Take the lease, or return the live holder. An expired lease is taken over; one that
        looks alive is watched for up to ``ttl`` s: a live holder's heartbeat changes within a
        third of that (returned at once), a dead one's never does (taken)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        watched: Holder | None = None  # the live-looking lease being watched, and until when
        deadline = 0.0
        unreadable_since = 0.0
        while True:
            if self._create():
                return None
            current = Holder.parse(read_json(self.path))
            if current is None:  # being written, or garbage a crash left: look again shortly
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since >= self.ttl:
                    self._break(None)
                    unreadable_since = 0.0
                time.sleep(0.05)
                continue
            unreadable_since = 0.0
            if current.dead_here():
                self._break(current)
                continue
            if watched is not None and (current.token, current.beat) != (
                watched.token,
                watched.beat,
            ):
                return current  # its heartbeat moved: alive
            if watched is None:
                watched, deadline = current, time.monotonic() + current.ttl
            if time.monotonic() >= deadline:
                self._break(current)  # no heartbeat for a whole ttl: its holder is gone
                watched = None
                continue
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))

    def _create(self) -> bool:
        host, pod = _who()
        holder = Holder(
            host, os.getpid(), time.time(), 0, uuid.uuid4().hex, self.ttl, self.what, pod
        )
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(
                f"could not create the lease {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            os.write(fd, (json.dumps(asdict(holder)) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._holder = holder
        self._start_heartbeat()
        return True

    def _break(self, expired: Holder | None) -> None:
        """Remove an expired lease, if it is still the one judged expired: contenders that
        break at once are serialised by a second O_EXCL file, so none removes a fresh lease."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            # Another contender is breaking it; a breaker that died leaves the file: after a
            # ttl it is stale too.
            with contextlib.suppress(OSError):
                if time.time() - breaker.stat().st_mtime > self.ttl:
                    breaker.unlink()
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            current = Holder.parse(read_json(self.path))
            same = (current is None and expired is None) or (
                current is not None and expired is not None and current.token == expired.token
            )
            if same:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            with contextlib.suppress(OSError):
                breaker.unlink()

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="trainjob-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            holder = self._holder
            if holder is None:
                return
            on_disk = Holder.parse(read_json(self.path))
            if on_disk is None or on_disk.token != holder.token:
                # This process stalled for longer than the ttl (stopped, a frozen volume) and a
                # contender took the lease as expired: say so; the caller decides what to do.
                self.lost = True
                self._holder = None
                log.warning(
                    f"lost the lease {self.path} (no heartbeat for over {self.ttl:g}s); "
                    "another process may now hold it"
                )
                if self.on_lost is not None:
                    self.on_lost()
                return
            holder.beat += 1
            with contextlib.suppress(StorageError):  # a missed beat: the next one may land
                write_json(self.path, asdict(holder))

    def release(self) -> None:
        """Give the lease up (only if it is still ours). Safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        holder, self._holder = self._holder, None
        if holder is None:
            return
        on_disk = Holder.parse(read_json(self.path))
        if on_disk is not None and on_disk.token == holder.token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
