"""Where the job runs: device choice, CPU threads and allocator, and an environment report."""

from __future__ import annotations

import ctypes
import math
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: a sweep driver sizes threads without it
    import torch


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
    import torch

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


# glibc mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc keep freed CPU tensors for reuse instead of unmapping them.

    A training step allocates activations and gradients of a few MB each (6.4 MB for
    [128, 16, 28, 28] fp32). glibc serves blocks that large with fresh ``mmap``s and returns them
    on ``free``, so every step page-faults ~6k pages the kernel must zero: measured 18 ms of
    system time per 78 ms step on this ConvNet. Raising the mmap and trim thresholds (the same
    knobs as the ``MALLOC_*_`` environment variables) keeps them in the heap: 80 faults per step.
    No-op on other C libraries, or when those variables are set (the user's choice wins).
    Returns whether the thresholds were changed.
    """
    if any(name in os.environ for name in _GLIBC_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (AttributeError outside glibc)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, limit))


def configure(threads: int, device: torch.device) -> int:
    import torch

    n = thread_count(threads)
    torch.set_num_threads(n)
    keep_freed_memory()
    if device.type == "cuda":
        # Fixed input shapes: let cuDNN pick the fastest conv algorithm once.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return n


def environment(device: torch.device, threads: int) -> dict[str, str | int | None]:
    import torch

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


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16), where CPU autocast to
    bf16 pays; elsewhere oneDNN emulates it in float32 and a step gets slower, not faster.

    Linux exposes the feature flags in /proc/cpuinfo; elsewhere torch's own oneDNN check (which
    also accepts plain AVX-512, a superset) decides."""
    try:
        flags = set()
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        if flags:
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


BF16_SLOW_CPU = (
    "TRAINJOB_AMP=bf16 on a CPU without native bf16 (no AMX / AVX-512 BF16 in "
    "its flags): autocast is emulated and slower than float32; keep TRAINJOB_AMP=none here"
)
