"""trainjob: the W&B PyTorch tutorial's ConvNet as a containerized, preemption-safe batch job."""

import os

__version__ = "0.1.0"

# Before anything imports torch (its OpenMP runtime reads this once, when it loads): threads
# that finish a parallel region sleep instead of spinning for the next one. With spinning (the
# default), two threads on a 2-CPU pod that also runs W&B's writer, or on a shared node, burn
# the CPU quota waiting for each other. Measured on 2 cores, W&B offline (2026-11-27): with one
# other busy process, passive 2,087-2,202 samples/s vs spinning 1,001-1,130 (2x); idle, passive
# 3,189 vs libgomp's default spin 3,667 (median of 5; -13%). A job on dedicated cores can take
# that back with GOMP_SPINCOUNT=300000. OMP_WAIT_POLICY / GOMP_SPINCOUNT set by the user win.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
