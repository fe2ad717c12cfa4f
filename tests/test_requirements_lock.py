"""requirements.lock, the image's dependencies, agrees with pyproject.toml.

Regenerate with `make lock` (uv pip compile, hashes, for the image's Python and platform).
"""

from __future__ import annotations

import re
import tomllib

import pytest
from helpers import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)(\s*;[^\\]*)?")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def read_lock() -> dict[str, tuple[Version, int, str]]:
    """canonical name -> (version, number of hashes, marker text)."""
    entries: dict[str, tuple[Version, int, str]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            assert name not in entries, f"{name} pinned twice"
            current = name
            entries[name] = (Version(match.group(2)), 0, (match.group(3) or "").strip(" ;"))
        elif HASH.search(line) and current:
            version, hashes, marker = entries[current]
            entries[current] = (version, hashes + len(HASH.findall(line)), marker)
        else:
            pytest.fail(f"unexpected line in the lock (not name==version or a hash): {line!r}")
    return entries


def lock_target() -> dict[str, str]:
    """The marker environment the lock was compiled for, from its header command."""
    header = " ".join(LOCK.read_text().splitlines()[:3])
    version = re.search(r"--python-version (\d+\.\d+)", header)
    platform = re.search(r"--python-platform (\S+)", header)
    assert version and platform, "compile the lock for the image: see `make lock`"
    assert platform.group(1).startswith("x86_64-manylinux")
    return {
        "python_version": version.group(1),
        "python_full_version": version.group(1) + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def test_every_runtime_dependency_is_pinned_at_an_allowed_version() -> None:
    locked, target = read_lock(), lock_target()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate(target):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in the lock: make lock"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"lock has {req.name}=={version}, pyproject.toml wants {req.specifier}: make lock"
        )


def test_every_pin_is_exact_hashed_and_for_one_platform() -> None:
    locked = read_lock()
    assert len(locked) > len(PYPROJECT["project"]["dependencies"])  # transitive ones too
    for name, (_, hashes, marker) in locked.items():
        assert hashes >= 1, f"{name} has no hash (pip --require-hashes would refuse it)"
        assert not marker, f"{name}; {marker}: the lock is for one platform, no markers"
    assert "--generate-hashes" in LOCK.read_text().split("\n", 3)[1]


def test_development_tools_stay_out_of_the_image() -> None:
    locked = read_lock()
    dev = [
        canonicalize_name(Requirement(s).name)
        for s in PYPROJECT["project"]["optional-dependencies"]["dev"]
    ]
    runtime = {canonicalize_name(Requirement(s).name) for s in PYPROJECT["project"]["dependencies"]}
    leaked = [name for name in dev if name in locked and name not in runtime]
    # (packaging, which this file imports, is a runtime dependency of wandb and torch.)
    assert not leaked, f"dev-only tools in the image lock: {leaked}"
