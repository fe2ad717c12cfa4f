"""Making folders unwritable, read-only or full in tests, without mocks.

Root ignores permission bits, so "unwritable" here is a path under a regular file (ENOTDIR /
EEXIST: the same for root and everyone else). A read-only or full filesystem needs ``mount``
(root in a container that allows it, as on the development machines); without it those tests
skip, and the file size limit (``RLIMIT_FSIZE``: writes past it fail with EFBIG, the same code
path as ENOSPC) covers "disk full" everywhere.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def under_a_file(tmp: Path, name: str) -> Path:
    """A folder path that cannot be created: its parent is a regular file."""
    blocker = tmp / f"{name}-is-a-file"
    blocker.write_text("not a folder")
    return blocker / name


def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@contextlib.contextmanager
def _readonly_bind(source: Path, target: Path) -> Iterator[Path]:
    if not _mount("--bind", str(source), str(target)):
        pytest.skip("needs root and mount (a read-only bind mount)")
    try:
        if not _mount("-o", "remount,bind,ro", str(target)):
            pytest.skip("needs root and mount (a read-only bind mount)")
        yield target
    finally:
        _umount(target)


@contextlib.contextmanager
def readonly_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a read-only bind mount: EROFS on any write)."""
    target.mkdir(parents=True)
    with _readonly_bind(source, target):
        yield target


@contextlib.contextmanager
def readonly_in_place(folder: Path) -> Iterator[Path]:
    """``folder`` itself turned read-only (bound onto itself, then remounted ro), as a volume
    that goes read-only under a running job: open files stay, every new write gets EROFS."""
    with _readonly_bind(folder, folder):
        yield folder


@contextlib.contextmanager
def small_tmpfs(target: Path, size_kib: int) -> Iterator[Path]:
    """A real filesystem of ``size_kib`` KiB at ``target``: writing past it gives ENOSPC."""
    target.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(target)):
        pytest.skip("needs root and mount (a small tmpfs)")
    try:
        yield target
    finally:
        _umount(target)


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill ``folder``'s filesystem until about ``leave_bytes`` remain free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(free - leave_bytes, 0))


def file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child may not grow any file past ``limit_bytes`` (EFBIG)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply
