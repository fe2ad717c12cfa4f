"""W&B's run file (``run-<id>.wandb``, one per process) read back without W&B's server or CLI.

The file is LevelDB's log format behind a 7-byte W&B header (see wandb's
``core/pkg/leveldb/record.go``): 32 KiB blocks of chunks, each chunk a CRC, a length and a
type (full, or the first / middle / last piece of a record); each record is a
``wandb_internal_pb2.Record``. ``payloads`` is the framing, used by every reader here
(history.py's step scan, sync.py's "anything in it?", ``read_run_file`` for ``trainjob report``).
``run_folder`` names a run folder's run id and its place among the run's processes, for the same
three.

A file is read as far as it is whole and what stops the reading is said (``Damage``) rather
than raised: a run still being written, or whose process was SIGKILLed, ends inside a record
(wandb-core writes whole 32 KiB blocks); damaged bytes cost the records around them, and the
reading goes on after them.

    python -c "from trainjob.tracking.runfile import read_run_file as r; print(r(PATH))"
"""

from __future__ import annotations

import glob
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = b":W&B"
_WANDB_HEADER = 7  # ":W&B", magic 0xBEE1 (uint16), version (uint8)
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7  # crc32c (uint32), length (uint16), type (uint8)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# run.watch's histograms: the bulk of a run file, and nothing a report plots.
HISTOGRAM_PREFIXES = ("gradients/", "parameters/")
# `wandb/offline-run-<YYYYMMDD_HHMMSS>-<id>` (`run-...` for an online run's local copy), one per
# process. The timestamp has a fixed shape, so an id with dashes is read whole; but wandb adds
# `-1`, `-2`... to a folder name that exists (a second process of the run within the same
# second), so the id is the run file's (`run-<id>.wandb` inside), the name's tail only without one.
RUN_FOLDER = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-(.+)$")


@dataclass(frozen=True)
class RunFolder:
    """One process's folder of a run."""

    path: Path
    started: str  # YYYYMMDD_HHMMSS: the second its process started
    run_id: str

    @property
    def offline(self) -> bool:
        return self.path.name.startswith("offline-")

    @property
    def log(self) -> Path:
        """Its run file (which a process killed early may not have written)."""
        return self.path / f"run-{self.run_id}.wandb"

    @property
    def order(self) -> tuple[str, int, str]:
        """Sorts a run's processes oldest first: the second, then wandb's -1, -2... suffix."""
        return (self.started, len(self.path.name), self.path.name)


def run_folder(path: Path) -> RunFolder | None:
    """``path`` as a run folder, or None when its name is not one."""
    match = RUN_FOLDER.match(path.name)
    if match is None:
        return None
    found = sorted(path.glob("run-*.wandb"))
    run_id = found[0].name[len("run-") : -len(".wandb")] if found else match[2]
    return RunFolder(path, match[1], run_id)


def folders_of_run(parent: Path, run_id: str) -> list[RunFolder]:
    """The folders of run ``run_id`` in ``parent`` (a ``wandb/`` folder), oldest first."""
    named = parent.glob(f"*run-*-{glob.escape(run_id)}*")  # its id, maybe with wandb's suffix
    found = [f for f in map(run_folder, named) if f is not None and f.run_id == run_id]
    return sorted(found, key=lambda f: f.order)


@dataclass
class Damage:
    """What kept a file from being read whole."""

    not_a_run_file: bool = False  # no W&B header
    cut: bool = False  # ends inside a record: still being written, or its process was killed
    unreadable: int = 0  # records whose bytes did not parse (skipped)

    def describe(self) -> list[str]:
        said = []
        if self.not_a_run_file:
            said.append("not a W&B run file (no ':W&B' header)")
        if self.cut:
            said.append("ends inside a record: the run is still being written, or was killed")
        if self.unreadable:
            said.append(f"{self.unreadable} damaged record(s) skipped")
        return said


def payloads(blob: bytes, damage: Damage | None = None) -> Iterator[bytes]:
    """The complete records of a run file's bytes, in order; ``damage`` (when given) says what
    stopped or interrupted the reading.

    A chunk never crosses a block boundary and has one of four types; a chunk header that breaks
    either rule is damage, and reading goes on at the next block, as LevelDB's own reader does
    (``log_reader.cc``): one damaged spot costs the records of that block, not the rest of the run.
    """
    damage = damage if damage is not None else Damage()
    if blob[:4] != _HEADER:
        damage.not_a_run_file = True
        return
    pos, pending = _WANDB_HEADER, None
    while pos + _CHUNK_HEADER <= len(blob):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # the writer pads a block's tail with zeros
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", blob, pos)
        if kind == 0 and length == 0:  # a zeroed (preallocated) rest of the block
            pos += left_in_block
            continue
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or length > left_in_block - _CHUNK_HEADER:
            damage.unreadable += 1
            pos, pending = pos + left_in_block, None  # on at the next block
            continue
        start, pos = pos + _CHUNK_HEADER, pos + _CHUNK_HEADER + length
        if pos > len(blob):
            damage.cut = True  # the partial record of an interrupted write
            return
        chunk = blob[start:pos]
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif pending is None:  # the rest of a record whose start was lost to damage
            continue
        elif kind == _MIDDLE:
            pending += chunk
        else:
            yield pending + chunk
            pending = None
    if pending is not None:
        damage.cut = True  # a first piece whose last never came


def records(path: Path, damage: Damage | None = None) -> Iterator[Any]:
    """Every record of a run file that parses, as ``wandb_internal_pb2.Record``; an unreadable
    file yields nothing (``OSError`` is the caller's)."""
    # Imported here: the commands that only list or copy run files answer without loading
    # wandb's protobufs.
    from wandb.proto import wandb_internal_pb2

    damage = damage if damage is not None else Damage()
    for payload in payloads(path.read_bytes(), damage):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # a corrupt record (DecodeError): skip it, keep reading
            damage.unreadable += 1
            continue
        yield record


@dataclass
class RunFile:
    """What one process of a run left in its run file: enough for ``trainjob report``."""

    path: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    sweep_id: str = ""  # set by W&B's agent (an online sweep's run)
    tags: list[str] = field(default_factory=list)
    start_time: float | None = None  # seconds since the epoch
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # scalars, with "_step"
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None  # None: no exit record (running, or killed)
    runtime: float | None = None  # seconds, from the exit record
    files: list[str] = field(default_factory=list)  # saved with the run (run.save)
    records: int = 0
    damage: Damage = field(default_factory=Damage)
    error: str | None = None  # the file could not be read at all

    @property
    def wall_s(self) -> float | None:
        """This process's time: its summary's ``_runtime`` (W&B's, in seconds), else its last
        row's, else the exit record's (whole seconds only)."""
        runtime = self.summary.get("_runtime")
        if isinstance(runtime, int | float):
            return float(runtime)
        times = [row["_runtime"] for row in self.history if "_runtime" in row]
        return float(times[-1]) if times else self.runtime


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _scalar_key(item: Any) -> str | None:
    """The item's key, or None for a histogram's: tested on the first part, before any join
    (a run file holds tens of thousands of histogram items)."""
    key = item.key
    if key:
        return None if key.startswith(HISTOGRAM_PREFIXES) else key
    parts = item.nested_key
    return None if parts[0].startswith(HISTOGRAM_PREFIXES) else "/".join(parts)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # wandb writes NaN and Infinity, which json reads; anything else: text
        return text


def _updates(items: Any, into: dict[str, Any]) -> None:
    for item in items:
        key = _scalar_key(item)
        if key is not None:
            into[key] = _value(item.value_json)


def read_run_file(path: Path) -> RunFile:
    """One run file, read as far as it goes; histograms (``run.watch``) are skipped unparsed."""
    run = RunFile(path)
    try:
        found = list(records(path, run.damage))
    except OSError as exc:
        run.error = f"cannot be read: {exc.strerror or exc}"
        return run
    run.records = len(found)
    for record in found:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            _updates(record.history.item, row)
            row["_step"] = record.history.step.num
            run.history.append(row)
        elif kind == "summary":
            _updates(record.summary.update, run.summary)
            for item in record.summary.remove:
                run.summary.pop(_key(item), None)
        elif kind == "run":
            _read_run_record(run, record.run)
        elif kind == "config":
            _updates(record.config.update, run.config)
        elif kind == "exit":
            run.exit_code, run.runtime = record.exit.exit_code, float(record.exit.runtime)
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
    run.config.pop("_wandb", None)
    return run


def _read_run_record(run: RunFile, info: Any) -> None:
    run.run_id, run.name, run.project = info.run_id, info.display_name, info.project
    run.group, run.tags, run.sweep_id = info.run_group, list(info.tags), info.sweep_id
    if info.HasField("start_time"):
        run.start_time = info.start_time.seconds + info.start_time.nanos / 1e9
    _updates(info.config.update, run.config)
