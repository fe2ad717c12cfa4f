"""trainjob: the W&B PyTorch tutorial's ConvNet as a containerized, preemption-safe batch job."""

__version__ = "0.1.0"
