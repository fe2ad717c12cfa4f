"""Where the job runs: device choice, CPU thread count, seeding and an environment report."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

from .errors import ConfigError


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs granted by the cgroup CPU limit, rounded up; None when unlimited or unknown.

    In a pod, ``os.cpu_count()`` is the *node's* core count: torch would start e.g. 128 threads
    on a 4-CPU limit and spend its time throttled. cgroup v2 (``cpu.max``) first, then v1.
    """
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def thread_count(requested: int = 0) -> int:
    """Explicit setting > OMP_NUM_THREADS > cgroup quota > CPUs this process may run on."""
    if requested > 0:
        return requested
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cpu_quota()
    return max(1, min(quota, affinity or 1) if quota else (affinity or 1))


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"TRAINJOB_DEVICE={name!r}: CUDA is not available here; use auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"TRAINJOB_DEVICE={name!r}: only {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return device


def configure(threads: int, device: torch.device) -> int:
    n = thread_count(threads)
    torch.set_num_threads(n)
    if device.type == "cuda":
        # Fixed input shapes: let cuDNN pick the fastest conv algorithm once.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return n


def environment(device: torch.device, threads: int) -> dict[str, str | int | None]:
    """Versions and hardware, logged once with the run (never secrets or env vars)."""
    info: dict[str, str | int | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "threads": threads,
        "host_cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
