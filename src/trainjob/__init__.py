"""trainjob: the W&B PyTorch tutorial's ConvNet as a containerized, preemption-safe batch job."""

import os

__version__ = "0.1.0"

# Before anything imports torch (its OpenMP runtime reads this once, when it loads): threads
# that finish a parallel region sleep instead of spinning for the next one. With spinning (the
# default), two threads on a 2-CPU pod that also runs W&B's writer, or on a shared node, burn
# the CPU quota waiting for each other: measured 4x slower under load, a few % faster idle.
# OMP_WAIT_POLICY / GOMP_SPINCOUNT set by the user win.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
