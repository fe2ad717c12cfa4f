"""A real Docker engine for the image tests: is one there, run containers as users do, read a
volume back.

Everything these helpers create is named ``trainjob-test-*`` and removed again; containers run
with ``--network none`` only (never the default bridge).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PREFIX = "trainjob-test"
# The image under test: .ci/image builds it on a stand-in base; on a machine with a registry,
# `make image IMAGE=trainjob-test:latest` builds the real one.
IMAGE = os.environ.get("IMAGE_UNDER_TEST", f"{PREFIX}:latest")
# .ci/run sets IMAGE_TESTS=required: there a missing engine or image fails instead of skipping.
REQUIRED = os.environ.get("IMAGE_TESTS") == "required"
MIN_FREE_GB = 3  # a few runs' volumes and container layers; less fails one line up front
# How a user runs the image (README "Docker"): no network, nothing writable but the volume, no
# capabilities, no privilege escalation.
HARDENED = (
    "--network",
    "none",
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
)


def unavailable(reason: str) -> None:
    """Skip with one line saying why; fail instead where the engine is required (CI)."""
    if REQUIRED:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {args[0]} failed: {last_line(out.stderr)}")
    return out


def check_engine(image: str = IMAGE) -> str:
    """The image's id when an engine answers, has the image and has room; else skip/fail."""
    if not shutil.which("docker"):
        unavailable("image tests: no docker CLI here (.ci/run installs docker.io)")
    try:
        info = docker("info", "--format", "{{.DockerRootDir}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        unavailable("image tests: the Docker engine does not answer within 20 s")
    if info.returncode != 0:
        unavailable(f"image tests: no Docker engine answers ({last_line(info.stderr)})")
    root = Path(info.stdout.strip())
    if root.is_dir():  # a local engine: check its disk before filling it
        free_gb = shutil.disk_usage(root).free / 2**30
        if free_gb < MIN_FREE_GB:
            unavailable(f"image tests: only {free_gb:.1f} GB free under {root} (need 3)")
    found = docker("image", "inspect", "--format", "{{.Id}}", image, check=False)
    if found.returncode != 0:
        unavailable(
            f"image tests: no image {image} (build it: .ci/image, or make image IMAGE={image})"
        )
    return found.stdout.strip()


def unique(what: str) -> str:
    return f"{PREFIX}-{what}-{uuid.uuid4().hex[:8]}"


@dataclass
class Volume:
    """A named volume, as `docker run -v NAME:/workspace` creates it (owned by the image's
    user, since the image's /workspace is)."""

    image: str
    name: str = field(default_factory=lambda: unique("vol"))
    owners: dict[str, int] = field(default_factory=dict)  # path in /workspace -> uid

    def helper(self, *args: str, mounts: Sequence[str] = (), entrypoint: str) -> bytes:
        """A short-lived container of the image on this volume, not the job (no tini)."""
        argv = ["run", "--rm", "--network", "none", "-v", f"{self.name}:/workspace"]
        for mount in mounts:
            argv += ["-v", mount]
        out = subprocess.run(
            ["docker", *argv, "--entrypoint", entrypoint, self.image, *args],
            capture_output=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise AssertionError(f"{entrypoint} in {self.name}: {last_line(out.stderr.decode())}")
        return out.stdout

    def seed(self, data: Path, *extra: tuple[Path, str]) -> None:
        """What a user does once: copy the dataset files into /workspace/data (as the image's
        user); ``extra`` files go to the given paths in the volume."""
        self.helper("-rT", "/in", "/workspace/data", mounts=[f"{data}:/in:ro"], entrypoint="cp")
        for source, target in extra:
            mount = f"{source.resolve()}:/extra/{source.name}:ro"
            self.helper(f"/extra/{source.name}", target, mounts=[mount], entrypoint="cp")

    def files(self, dest: Path) -> Path:
        """The volume's contents (but the data and temp files) copied to ``dest``, through
        tar in a container; ``owners`` records each file's uid in the volume."""
        blob = self.helper(
            "-C",
            "/workspace",
            "--exclude=./data",
            "--exclude=./tmp",
            "-cf",
            "-",
            ".",
            entrypoint="tar",
        )
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            # wandb's latest-run links point into /workspace: not needed, not extractable here.
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            tar.extractall(dest, members=members, filter="data")
            self.owners = {os.path.normpath(m.name): m.uid for m in members}
        return dest

    def remove(self) -> None:
        docker("volume", "rm", "-f", self.name, check=False)


@contextmanager
def volume(image: str) -> Iterator[Volume]:
    vol = Volume(image)
    docker("volume", "create", vol.name)
    try:
        yield vol
    finally:
        vol.remove()


def run_argv(
    image: str,
    vol: Volume,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    name: str | None = None,
    flags: Sequence[str] = HARDENED,
) -> list[str]:
    """`docker run` as a user runs the job: hardened flags, the one volume, env, args."""
    argv = ["docker", "run", "--rm", "--name", name or unique("run"), *flags]
    argv += ["-v", f"{vol.name}:/workspace"]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    return [*argv, image, *args]


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    name = argv[argv.index("--name") + 1]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        docker("rm", "-f", name, check=False)
        raise
