"""The gradient and weight histograms of W&B's ``run.watch``, computed on the device.

W&B's hooks (wandb/integration/torch/wandb_torch.py, ``TorchHistory.log_tensor_stats``) read
``min().item()``, ``max().item()``, a finiteness check, ``histc`` and ``.cpu()`` per tensor and
per watch step: several host syncs each time, and most of the result is thrown away, because a
``commit=False`` histogram only reaches W&B with the history row that is open when it is
logged, and the next watch step overwrites it before that row is written. W&B declined to move
the work onto the GPU (wandb/wandb#2946) and advises a larger ``log_freq`` (wandb/wandb#2268).

``Watcher`` keeps W&B's records and changes only the cost:

- the same hooks fire on the same calls: a forward hook on the model counts forward calls
  (parameters), a tensor hook per parameter counts backward passes (gradients), each firing on
  every ``log_freq``-th call exactly as ``log_track_update`` does;
- on a firing, the statistics (finite min, max and count, and 64 ``histc`` bins) are computed
  with tensor operations into one device buffer, with no host sync. A tensor with no finite
  values leaves the earlier pending value in place, as W&B skips logging it. On the CPU, where
  reading a value is no sync, a tensor without NaN/inf takes a shorter route (``cpu_stats``:
  W&B's own min/max reads, histc's arithmetic in numpy) into the same buffer;
- the training loop says how many steps remain until its next history row (``plan``): a firing
  whose result the next firing of the same hook would overwrite before that row is skipped;
- ``collect`` copies the whole buffer to the host once per history row that has pending
  histograms; run.py turns them into ``wandb.Histogram`` s and logs them in one call.

A CUDA graph replay runs no Python hooks: the loop pauses the hooks while a graph is recorded
and calls ``forward_event`` / ``backward_event`` around each replay instead (``GraphedStep``
keeps the gradient buffers the graph writes).

This module does not import wandb: run.py does the packaging.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..choices import WATCH_LOG_CHOICES

BINS = 64  # wandb_torch.TorchHistory._num_bins
_HEAD = 3  # buffer columns before the bins: finite min, finite max, finite count


@dataclass(frozen=True)
class HostHistogram:
    """One histogram as W&B's ``log_tensor_stats`` builds it: counts and bin edges."""

    key: str
    counts: list[float]
    edges: list[float]


class Watcher:
    """``run.watch(model, log=log, log_freq=log_freq)``'s histograms, computed on the device."""

    def __init__(self, model: nn.Module, log: str, log_freq: int) -> None:
        if log not in WATCH_LOG_CHOICES:
            raise ValueError(f"log must be one of {', '.join(WATCH_LOG_CHOICES)}, not {log!r}")
        if log_freq <= 0:
            raise ValueError(f"log_freq must be positive, not {log_freq}")
        self.model = model
        self.log_freq = log_freq
        named = list(model.named_parameters())
        self.params = [p for _, p in named] if log in ("parameters", "all") else []
        self.grad_params = (
            [p for _, p in named if p.requires_grad] if log in ("gradients", "all") else []
        )
        self.keys = [f"parameters/{name}" for name, _ in named][: len(self.params)]
        self.keys += [f"gradients/{name}" for name, p in named if p.requires_grad][
            : len(self.grad_params)
        ]
        device = named[0][1].device if named else torch.device("cpu")
        # One row per key: [min, max, finite count, bin counts...], float64 so that float32
        # extremes and counts up to 2**53 are exact; count 0 = nothing pending for that key.
        self.buffer = torch.zeros(len(self.keys), _HEAD + BINS, dtype=torch.float64, device=device)
        # On the CPU the buffer's own memory, written in place by cpu_stats (no torch op).
        self._host = self.buffer.numpy() if device.type == "cpu" else None
        self.forward_count = 0
        self.grad_counts = [0] * len(self.grad_params)
        self.steps_to_row: int | None = None  # from plan(); None: unknown, compute every firing
        self.pending = False  # a firing happened since the last collect (host-side flag)
        self.computed = 0  # firings whose statistics were computed (for tests and benchmarks)
        self.skipped = 0  # firings skipped because a later one overwrites them before the row
        self._paused = False
        self._deferred = False  # a parameter firing inside an export trace, computed at collect
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # --- installing ---------------------------------------------------------------------------
    def start(self) -> None:
        """Install the hooks; counting starts here, as it does at ``run.watch``."""
        if self._handles:
            return
        watcher = self

        # Plain functions, not bound methods: copy.deepcopy(model) (the ONNX export copies the
        # model) keeps the same function, so a copy's forward calls count here, as W&B's
        # closures count them; a bound method would deep-copy the watcher with its own counts.
        def on_forward(module: nn.Module, inputs: object, output: object) -> None:
            if not watcher._paused:
                watcher.forward_event(deferred=_tracing())

        if self.params:
            self._handles.append(self.model.register_forward_hook(on_forward))
        for i, p in enumerate(self.grad_params):
            self._handles.append(p.register_hook(self._grad_hook(i)))

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def started(self) -> bool:
        return bool(self._handles)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hooks neither count nor compute inside (CUDA graph warm-up and capture)."""
        self._paused, before = True, self._paused
        try:
            yield
        finally:
            self._paused = before

    def plan(self, steps_to_row: int | None) -> None:
        """The loop's look-ahead for the step about to run: its next history row comes after
        ``steps_to_row`` more training steps (0: right after this one), each of which runs one
        forward and one backward; None outside the loop or when no row follows in training."""
        self.steps_to_row = steps_to_row

    # --- the events -------------------------------------------------------------------------
    def _grad_hook(self, i: int):
        def hook(grad: torch.Tensor) -> None:
            if not self._paused:
                self._grad_event(i, grad)

        return hook

    def forward_event(self, deferred: bool = False) -> None:
        """One forward call of the model: W&B's parameter hook. ``deferred``: inside an export
        trace (ONNX export of a copy of the model, after training), where tensor operations
        would be recorded into the exported graph; the weights are read at ``collect`` instead,
        unchanged by then."""
        if not self.params:
            return
        self.forward_count += 1
        if self.forward_count < self.log_freq:
            return
        self.forward_count = 0
        if self._overwritten():
            self.skipped += 1
            return
        if deferred:
            self._deferred = self.pending = True
            return
        self._deferred = False
        for i, p in enumerate(self.params):
            self._record(i, p)

    def backward_event(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One backward pass that produced ``grads`` (aligned with the model's parameters that
        require grad): what the per-parameter gradient hooks see, for a CUDA graph replay."""
        for i, grad in enumerate(grads[: len(self.grad_params)]):
            if grad is not None:
                self._grad_event(i, grad)

    def _grad_event(self, i: int, grad: torch.Tensor) -> None:
        self.grad_counts[i] += 1
        if self.grad_counts[i] < self.log_freq:
            return
        self.grad_counts[i] = 0
        if self._overwritten():
            self.skipped += 1
            return
        self._record(len(self.params) + i, grad)

    def _overwritten(self) -> bool:
        # The next firing of this hook comes log_freq training steps later; if the loop's next
        # row comes after that, W&B would log this firing's histogram and overwrite it unseen.
        return self.steps_to_row is not None and self.steps_to_row >= self.log_freq

    @torch.no_grad()
    def _record(self, row: int, tensor: torch.Tensor) -> None:
        """Write ``tensor``'s statistics into buffer row ``row``, on its device, no sync."""
        self.pending = True
        self.computed += 1
        on_host = self._host is not None and tensor.device.type == "cpu"
        if on_host and cpu_stats(tensor, self._host[row]):
            return
        stats = tensor_stats(tensor)
        keep = stats[2] > 0  # no finite values: W&B logs nothing, the earlier value stays
        self.buffer[row].copy_(torch.where(keep, stats, self.buffer[row]))

    # --- the host side ----------------------------------------------------------------------
    def collect(self) -> list[HostHistogram]:
        """The pending histograms, in one device-to-host copy (a sync on a GPU); clears them."""
        if not self.pending:
            return []
        if self._deferred:
            self._deferred = False
            for i, p in enumerate(self.params):
                self._record(i, p)
        self.pending = False
        # SYNC POINT: once per history row with histograms. A copy on the CPU too: the buffer
        # is cleared right after.
        host = self.buffer.to("cpu", copy=True)
        self.buffer[:, 2].zero_()
        return histograms(self.keys, host)


def _tracing() -> bool:
    """Inside torch.jit.trace or a torch.compile / torch.export trace."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


def tensor_stats(tensor: torch.Tensor) -> torch.Tensor:
    """[finite min, finite max, finite count, 64 bin counts] of ``tensor`` as float64, on its
    device. The bins are ``torch.histc(finite, 64, min, max)``'s: the same float32 arithmetic,
    ``int((x - min) * 64 / (max - min))`` with the top edge in the last bin (histc's linear
    interpolation kernel, aten/src/ATen/native/cpu/HistogramKernel.cpp)."""
    # W&B casts to float32 before its statistics (histc has no bf16/half kernels everywhere).
    flat = tensor.detach().reshape(-1)
    if flat.dtype != torch.float64:
        flat = flat.float()
    finite = torch.isfinite(flat)
    inf = torch.full((), float("inf"), dtype=flat.dtype, device=flat.device)
    low = torch.where(finite, flat, inf).amin() if flat.numel() else inf
    high = torch.where(finite, flat, -inf).amax() if flat.numel() else -inf
    count = finite.sum()
    position = (flat - low) * BINS / (high - low)  # nan/inf where not finite or all equal
    position = torch.where(finite & torch.isfinite(position), position, 0)
    index = position.to(torch.int64).clamp_(0, BINS - 1)
    counts = torch.zeros(BINS, dtype=torch.float64, device=flat.device)
    counts.index_add_(0, index, finite.to(torch.float64))
    head = torch.stack([low.double(), high.double(), count.double()])
    return torch.cat([head, counts])


def cpu_stats(tensor: torch.Tensor, out: Any) -> bool:
    """``tensor_stats`` of a CPU tensor whose values are all finite (the common case), written
    into ``out`` (a numpy view of one buffer row); False, nothing written, otherwise.

    On the CPU reading a value is no device sync, so this takes W&B's own route: ``min()`` and
    ``max()`` read on the host (W&B reads them with ``.item()``), then the bins with histc's
    float arithmetic in numpy. A firing costs a handful of calls per tensor instead of
    ``tensor_stats``' two dozen torch operations, whose dispatch dominates on tensors this small
    (the tutorial ConvNet's 12 tensors: 2.1 ms -> 0.5 ms, 2-core AMD EPYC, bench/cpu.py
    --watch-cost)."""
    import numpy as np  # here, not at the top: a bare GPU machine's torch may come without it

    flat = tensor.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # as W&B and tensor_stats: other dtypes through float32
    if flat.numel() == 0:
        return False
    low, high = flat.min().item(), flat.max().item()  # NaN propagates: no NaN if both finite
    if not (math.isfinite(low) and math.isfinite(high)):
        return False  # NaN or inf present: tensor_stats drops them
    values = flat.numpy()
    kind = values.dtype.type  # float32 arithmetic for float32 tensors, as histc's kernel
    out[0], out[1], out[2] = low, high, values.size
    out[_HEAD:] = 0
    if low == high:
        out[_HEAD] = values.size  # all equal: tensor_stats' one bin (histograms() keeps it)
        return True
    lo = kind(low)
    position = (values - lo) * kind(BINS) / (kind(high) - lo)
    index = np.minimum(position.astype(np.int64), BINS - 1)  # the top edge in the last bin
    out[_HEAD:] = np.bincount(index, minlength=BINS)
    return True


def histograms(keys: Sequence[str], host: torch.Tensor) -> list[HostHistogram]:
    """W&B's histogram records from the host copy of the buffer: keys with a finite count."""
    out = []
    for key, row in zip(keys, host.tolist(), strict=True):
        low, high, count = row[0], row[1], row[2]
        if count <= 0:
            continue
        if low == high:  # all finite values equal: one bin holding them all (wandb_torch.py)
            out.append(HostHistogram(key, [count], [low, high]))
        else:
            # float32 edges from the float32 extremes, as W&B's torch.linspace builds them
            edges = torch.linspace(low, high, steps=BINS + 1).tolist()
            out.append(HostHistogram(key, row[_HEAD:], edges))
    return out
