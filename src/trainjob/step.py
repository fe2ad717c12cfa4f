"""One optimizer step on a batch of the in-memory data: gather, uint8 -> float, forward, loss,
backward, Adam. What the eager loop runs (train.py) and what a CUDA graph records
(cuda_graphs.py); evaluation shares the input preparation and autocast. ``LoopConfig``, what
the loop is told, lives here because the step reads it too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .data import Split, to_float

if TYPE_CHECKING:
    from .settings import Settings


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int
    log_every: int
    seed: int
    channels_last: bool = True
    bf16: bool = False
    progress_bar: bool = True
    lr_schedule: str = "none"  # none (the tutorial: constant) | onecycle
    cuda_graphs: bool = False  # CUDA only: full-batch steps replayed as one CUDA graph

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopConfig:
        """What the loop is told, from the job's settings (the only place they meet)."""
        return cls(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            log_every=settings.log_every,
            seed=settings.seed,
            channels_last=settings.channels_last,
            bf16=settings.amp == "bf16",
            progress_bar=True,  # a bar on a terminal, plain lines elsewhere (progress.display)
            lr_schedule=settings.lr_schedule,
            cuda_graphs=settings.cuda_graphs,
        )


def autocast(
    device: torch.device, bf16: bool, cache: bool = True
) -> contextlib.AbstractContextManager[object]:
    if bf16 and device.type in ("cuda", "cpu"):
        # Inside a CUDA graph capture the autocast weight cache must be off: cached casts would
        # be made once at capture and never again, while the weights change every replay.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def prepare(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = to_float(images)  # uint8 -> float on the device, per batch
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: Split,
    idx: torch.Tensor,
    cfg: LoopConfig,
    autocast_cache: bool = True,
) -> torch.Tensor:
    """One optimizer step on the examples ``idx`` (gather, uint8 -> float, forward, loss,
    backward, Adam): what the eager loop runs and what a CUDA graph records. Returns the loss
    detached, so that nothing keeps the step's autograd graph alive."""
    x = prepare(data.images[idx], cfg.channels_last)
    with autocast(data.images.device, cfg.bf16, autocast_cache):
        loss = criterion(model(x), data.labels[idx])
    loss.backward()
    optimizer.step()
    return loss.detach()


def accumulate(loss: torch.Tensor, nonfinite: torch.Tensor, loss_sum: torch.Tensor) -> None:
    """The step's device-side bookkeeping (no sync): the divergence flag and loss_mean's sum."""
    nonfinite.logical_or_(~torch.isfinite(loss))
    loss_sum.add_(loss.float())
