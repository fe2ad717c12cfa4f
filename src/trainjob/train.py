"""The training loop: pure PyTorch, no W&B import; where it logs (``history``) and its hooks
are passed in.

One flat loop in a fixed order (nanoGPT's ``train.py``): forward -> loss -> backward -> step ->
``zero_grad(set_to_none=True)`` -> log at intervals. The host/device sync points are named in
comments (``SYNC POINT``): once per ``log_every`` batches, once per epoch (timing), on the few
warm-up steps that see a new batch shape (compile/autotune timing), and once per evaluation.
Everything else (the epoch's permutation, batch gathering, uint8 -> float, the running loss)
stays on the device. Outside this module, the watch histograms (tracking/watch.py) are copied to the
host with the log rows, and a checkpoint save syncs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import nn

from . import cuda_graphs, metrics
from .data import Split
from .errors import DivergedError
from .step import LoopConfig, accumulate, autocast, prepare, train_step
from .tracking.watch import Watcher

EVAL_BATCH = 1000  # evaluation batch: large (no grads), and fixed so accuracy is reproducible


class HistoryLog(Protocol):
    """Where the loop's rows go: a job's ``History`` (tracking/, in front of the W&B run), or any
    object with this method."""

    def log(self, metrics: Mapping[str, float | int], step: int) -> None: ...


class Hook:
    """Called by the loop between steps, in list order (a job's: the sweep's stop, the
    per-epoch metric, checkpoints). A hook may raise (``Preempted``, ``TrialStopped``) once it
    has done what it must; the hooks after it are then not called."""

    def after_step(self, progress: Progress) -> None:
        return None

    def after_epoch(self, progress: Progress) -> None:
        return None

    def during_eval(self, progress: Progress) -> None:
        return None


@dataclass
class Progress:
    """Where training stands; everything a resume needs besides model/optimizer/RNG state."""

    epoch: int = 0  # the epoch in progress (== epochs once training is done)
    batch: int = 0  # batches finished within ``epoch``
    step: int = 0  # optimizer steps in total
    examples_seen: int = 0  # the W&B step, as in the tutorial
    # Sum of the batch losses since the last log row (for train/loss_mean). During training
    # this is the loop's device tensor, read only when a checkpoint is written.
    loss_sum: float | torch.Tensor = 0.0
    # Seconds spent in the loop (warm-up and per-epoch evaluations included), summed over every
    # process of the run: ``perf/train_s``; ``perf/samples_per_s`` is examples_seen / train_s.
    train_s: float = 0.0

    def state_dict(self) -> dict[str, int | float]:
        state: dict[str, int | float] = asdict(self)
        state["loss_sum"] = float(self.loss_sum)  # a device read: only at checkpoints
        return state


@dataclass
class LoopStats:
    """Timing of one ``train`` call, for the summary and the benchmarks; not checkpointed.

    ``epochs`` holds (examples, seconds) per epoch run in this process, *without* the warm-up
    steps: the steps that saw a batch shape for the first time, where ``torch.compile`` compiles
    and cuDNN autotunes; those are summed in ``warmup_s``.
    """

    epochs: list[tuple[int, float]] = field(default_factory=list)
    warmup_s: float = 0.0
    warmup_steps: int = 0

    def steady_samples_per_s(self) -> float:
        """Throughput in steady state: the first epoch is warm-up too (caches, allocator)
        whenever there is a later one, as in ``bench/cpu.py``'s baseline."""
        timed = self.epochs[1:] or self.epochs
        seconds = sum(s for _, s in timed)
        return sum(n for n, _ in timed) / seconds if seconds > 0 else 0.0


@dataclass
class Report:
    """What the loop reports to: the progress it advances (where training stands, what a
    checkpoint saves), the history rows, the hooks between steps, a progress display, its
    timing and the watcher (tracking/watch.py: told how far the next row is, driven around CUDA
    graph replays, where its module hooks cannot run)."""

    history: HistoryLog
    progress: Progress = field(default_factory=Progress)
    hooks: Sequence[Hook] = ()
    bar: Callable[..., object] | None = None
    stats: LoopStats = field(default_factory=LoopStats)
    watcher: Watcher | None = None


def make_optimizer(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """The tutorial's Adam. ``fused=True`` runs one kernel per parameter instead of a dozen
    (CPU and CUDA): the same algorithm, deterministic run to run; fewer launches on a GPU."""
    params = list(model.parameters())
    fusable = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    return torch.optim.Adam(params, lr=learning_rate, fused=fusable or None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def learning_rate_at(step: int, total: int, peak: float, schedule: str) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total``.

    ``none`` is the tutorial's constant rate. ``onecycle`` (Smith & Topin, "Super-Convergence",
    as in torch's ``OneCycleLR``): a cosine rise from peak/25 to ``peak`` over the first 25% of
    the steps, then a cosine decay to 0. A pure function of the step, like ``epoch_order``: a
    resumed job continues the schedule with no scheduler state in the checkpoint.
    """
    if schedule == "none":
        return peak
    warm = max(1, round(0.25 * total))
    if step < warm:
        low = peak / 25
        return low + (peak - low) * (1 - math.cos(math.pi * step / warm)) / 2
    t = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (1 + math.cos(math.pi * t)) / 2


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The epoch's shuffle, a pure function of (seed, epoch): a resumed job replays it exactly
    without restoring any generator state, and it is drawn on the device (no host copy)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator, device=device)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # a device tensor (capturable Adam): a kernel, no sync
        else:
            group["lr"] = lr


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: Split,
    cfg: LoopConfig,
    report: Report,
) -> Progress:
    """Train from ``report.progress`` to the end of ``cfg.epochs``; returns the final progress."""
    loop = _Loop(model, optimizer, criterion, data, cfg, report)
    while report.progress.epoch < cfg.epochs:
        loop.epoch()
    return report.progress


class _Loop:
    """One ``train`` call's state: the epoch loop below reads it, a step at a time."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        data: Split,
        cfg: LoopConfig,
        report: Report,
    ) -> None:
        self.model, self.optimizer, self.criterion, self.data = model, optimizer, criterion, data
        self.cfg, self.report, self.progress = cfg, report, report.progress
        self.device = data.images.device
        self.n = len(data)
        self.batches = math.ceil(self.n / cfg.batch_size)
        self.peak_lr = float(optimizer.defaults["lr"])
        self.total_steps = cfg.epochs * self.batches
        graphs = cfg.cuda_graphs and cuda_graphs.graphs_available(self.device)
        cuda_graphs.set_optimizer_form(optimizer, graphs, self.device)
        self.clock = _WarmupClock(self.device, report.stats)
        self.throughput = _Throughput(self.progress.examples_seen)
        model.train()
        # Divergence: on CPU every step's loss is checked (reading a CPU scalar costs nothing);
        # on CUDA that read would sync every step, so a device-side flag collects non-finite
        # losses and is read at each log interval and epoch end: a NaN stops the run within
        # log_every steps.
        self.per_step = self.device.type != "cuda"
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        # train/loss_mean: the batch losses summed on the device between log rows (no sync); kept
        # in ``progress`` so that a checkpoint carries it and a resumed interval has the same mean.
        self.loss_sum = torch.tensor(
            float(self.progress.loss_sum), dtype=torch.float32, device=self.device
        )
        self.progress.loss_sum = self.loss_sum
        self.replay = None
        if graphs:
            self.replay = cuda_graphs.GraphReplay(
                model,
                optimizer,
                criterion,
                data,
                cfg,
                self.nonfinite,
                self.loss_sum,
                report.watcher,
            )
        self.began, self.before = time.perf_counter(), self.progress.train_s

    def epoch(self) -> None:
        """The rest of the epoch in progress, then its end: timing, divergence, hooks."""
        cfg, progress, report = self.cfg, self.progress, self.report
        epoch = progress.epoch
        epoch_start, self.epoch_examples, self.epoch_warmup = time.perf_counter(), 0, 0.0
        order = epoch_order(self.n, cfg.seed, epoch, self.device)
        pbar = _bar(report.bar, cfg, epoch, self.batches, progress.batch)
        for b in range(progress.batch, self.batches):
            loss = self.step(order[b * cfg.batch_size : (b + 1) * cfg.batch_size], b)
            if progress.step % cfg.log_every == 0:
                value, rate = self.log_row(epoch, loss)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{value:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
            if pbar is not None:
                pbar.update(1)
            if report.watcher is not None:
                report.watcher.plan(None)  # forwards outside the loop (evaluation, export): unknown
            for hook in report.hooks:
                hook.after_step(progress)
        _sync(self.device)  # SYNC POINT: once per epoch, so the epoch's time is the GPU's time
        seconds = time.perf_counter() - epoch_start - self.epoch_warmup
        report.stats.epochs.append((self.epoch_examples, seconds))
        if pbar is not None:
            pbar.close()
        _check_finite(math.nan if self.nonfinite.item() else 0.0, progress)  # SYNC: per epoch
        progress.epoch, progress.batch = epoch + 1, 0
        progress.train_s = self.before + time.perf_counter() - self.began
        for hook in report.hooks:
            hook.after_epoch(progress)

    def step(self, idx: torch.Tensor, b: int) -> torch.Tensor:
        """Batch ``b`` (examples ``idx``): forward -> loss -> backward -> Adam step, eager or one
        CUDA graph replay; then ``zero_grad`` and the progress counters. Returns the loss."""
        cfg, progress, watcher = self.cfg, self.progress, self.report.watcher
        size = int(idx.shape[0])  # host-side metadata: no sync
        self.clock.start(size)
        if cfg.lr_schedule != "none":
            lr = learning_rate_at(progress.step, self.total_steps, self.peak_lr, cfg.lr_schedule)
            set_learning_rate(self.optimizer, lr)
        if watcher is not None:
            watcher.plan(_steps_to_row(progress.step + 1, cfg.log_every, self.batches - b - 1))
        if self.replay is not None and size == cfg.batch_size:
            loss = self.replay(idx)  # the divergence flag and loss_sum are updated in the graph
        else:
            loss = train_step(self.model, self.optimizer, self.criterion, self.data, idx, cfg)
            accumulate(loss, self.nonfinite, self.loss_sum)  # no sync: read at log intervals
        # Also after a replay: the graph writes its own gradient buffers whatever .grad holds,
        # and an eager (partial) batch must not accumulate into them.
        self.optimizer.zero_grad(set_to_none=True)
        spent = self.clock.stop()
        if spent is None:
            self.epoch_examples += size
        else:
            self.epoch_warmup += spent
        progress.batch, progress.step = b + 1, progress.step + 1
        progress.examples_seen += size
        progress.train_s = self.before + time.perf_counter() - self.began  # a clock read, no sync
        if self.per_step:
            _check_finite(loss.item(), progress)  # CPU: not a sync
        return loss

    def log_row(self, epoch: int, loss: torch.Tensor) -> tuple[float, float]:
        """Log one history row (the divergence check first); returns the loss and the rate."""
        progress = self.progress
        # SYNC POINT: the only one in steady state, every log_every steps.
        both = torch.stack([loss.float(), self.nonfinite.float(), self.loss_sum])
        value, bad, interval_sum = both.tolist()
        self.loss_sum.zero_()
        _check_finite(math.nan if bad else value, progress)
        rate = self.throughput.rate(progress.examples_seen)
        self.report.history.log(
            {
                metrics.EPOCH: epoch,
                metrics.LOSS: value,
                metrics.LOSS_MEAN: interval_sum / self.cfg.log_every,
                metrics.SAMPLES_PER_S: rate,
            },
            step=progress.examples_seen,
        )
        return value, rate


class _WarmupClock:
    """Times the warm-up steps: those that meet a batch shape for the first time (first batch,
    partial batch), where compile and autotune happen; into ``stats``."""

    def __init__(self, device: torch.device, stats: LoopStats) -> None:
        self.device, self.stats = device, stats
        self.seen: set[int] = set()
        self.size: int | None = None
        self.began = 0.0

    def start(self, size: int) -> None:
        self.size = None if size in self.seen else size
        if self.size is not None:
            _sync(self.device)  # SYNC POINT: only on warm-up steps (first batch, partial batch)
            self.began = time.perf_counter()

    def stop(self) -> float | None:
        """Seconds the step took if it was a warm-up step, else None."""
        if self.size is None:
            return None
        _sync(self.device)  # SYNC POINT: as above
        self.seen.add(self.size)
        spent = time.perf_counter() - self.began
        self.stats.warmup_s += spent
        self.stats.warmup_steps += 1
        return spent


class _Throughput:
    """Examples per second between two log rows."""

    def __init__(self, examples_seen: int) -> None:
        self.time, self.examples = time.perf_counter(), examples_seen

    def rate(self, examples_seen: int) -> float:
        now = time.perf_counter()
        rate = (examples_seen - self.examples) / max(now - self.time, 1e-9)
        self.time, self.examples = now, examples_seen
        return rate


def _steps_to_row(step: int, log_every: int, to_epoch_end: int) -> int:
    """Training steps after ``step`` until the next history row may be logged: the next
    ``log_every`` step, or the epoch's end, where a job's hooks log the per-epoch metric (and,
    after the last epoch, the final evaluation). Where the epoch end logs nothing the watcher
    only computes a firing that a later one overwrites, never skips one that W&B would keep."""
    return min(-step % log_every, to_epoch_end)


def _check_finite(value: float, progress: Progress) -> None:
    if not math.isfinite(value):
        raise DivergedError(
            f"loss became {value} by step {progress.step} (epoch {progress.epoch}); the run is "
            "marked failed: lower TRAINJOB_LEARNING_RATE or check the data"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Split,
    channels_last: bool = True,
    bf16: bool = False,
    hooks: Sequence[Hook] = (),
    progress: Progress | None = None,
) -> float:
    """Accuracy on ``data``, counted on the device; one host sync at the end."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.images.device)
    for start in range(0, len(data), EVAL_BATCH):
        x = prepare(data.images[start : start + EVAL_BATCH], channels_last)
        with autocast(data.images.device, bf16):
            logits = model(x)
        correct += (logits.argmax(dim=1) == data.labels[start : start + EVAL_BATCH]).sum()
        for hook in hooks if progress is not None else ():
            hook.during_eval(progress)
    model.train(was_training)
    return correct.item() / len(data)  # SYNC POINT: once per evaluation


def _bar(factory: Callable[..., object] | None, cfg: LoopConfig, epoch: int, total: int, done: int):
    if factory is None or not cfg.progress_bar:
        return None
    return factory(
        total=total,
        initial=done,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        leave=True,
        dynamic_ncols=True,
        mininterval=0.5,
    )
