"""The training loop: pure PyTorch, no W&B import; where it logs (``history``) and its hooks
are passed in.

One flat loop in a fixed order (nanoGPT's ``train.py``): forward -> loss -> backward -> step ->
``zero_grad(set_to_none=True)`` -> log at intervals. The host/device sync points are named in
comments (``SYNC POINT``): once per ``log_every`` batches, once per epoch (timing), on the few
warm-up steps that see a new batch shape (compile/autotune timing), and once per evaluation.
Everything else (the epoch's permutation, batch gathering, uint8 -> float, the running loss)
stays on the device. Outside this module, the watch histograms (watch.py) are copied to the
host with the log rows, and a checkpoint save syncs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import nn

from .data import Split, to_float
from .errors import DivergedError
from .watch import Watcher

EVAL_BATCH = 1000  # evaluation batch: large (no grads), and fixed so accuracy is reproducible


class HistoryLog(Protocol):
    """Where the loop's rows go: a job's ``resume.History`` (in front of the W&B run), or any
    object with this method."""

    def log(self, metrics: Mapping[str, float | int], step: int) -> None: ...


class Hooks:
    """Called by the loop between steps; the checkpointing/preemption logic overrides these.

    ``after_step`` may raise (e.g. ``Preempted``) once it has saved what it needs.
    """

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

    def state_dict(self) -> dict[str, int | float]:
        state: dict[str, int | float] = asdict(self)
        state["loss_sum"] = float(self.loss_sum)  # a device read: only at checkpoints
        return state


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


def _autocast(
    device: torch.device, bf16: bool, cache: bool = True
) -> contextlib.AbstractContextManager[object]:
    if bf16 and device.type in ("cuda", "cpu"):
        # Inside a CUDA graph capture the autocast weight cache must be off: cached casts would
        # be made once at capture and never again, while the weights change every replay.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def _prepare(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
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
    x = _prepare(data.images[idx], cfg.channels_last)
    with _autocast(data.images.device, cfg.bf16, autocast_cache):
        loss = criterion(model(x), data.labels[idx])
    loss.backward()
    optimizer.step()
    return loss.detach()


def _accumulate(loss: torch.Tensor, nonfinite: torch.Tensor, loss_sum: torch.Tensor) -> None:
    """The step's device-side bookkeeping (no sync): the divergence flag and loss_mean's sum."""
    nonfinite.logical_or_(~torch.isfinite(loss))
    loss_sum.add_(loss.float())


def _set_optimizer_form(
    optimizer: torch.optim.Optimizer, graphs: bool, device: torch.device
) -> None:
    """Adam's groups as this loop's steps need them: for CUDA graphs capturable (its step count
    stays on the device) with the learning rate in a device tensor the graph reads; otherwise a
    float lr (a CPU refuses capturable). Both ways, because ``load_state_dict`` brings back
    whatever form the checkpoint was written in."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["capturable"] = graphs
        group["lr"] = torch.tensor(lr, dtype=torch.float32, device=device) if graphs else lr


class GraphedStep:
    """One full-batch optimizer step (gather, uint8 -> float, forward, loss, backward, Adam)
    recorded once as a CUDA graph and then replayed: one launch per step instead of ~40. On a GPU
    this small net is bound by launch and Python overhead, not by arithmetic (bench/gpu.py).

    The graph reads the batch's indices from ``self.idx`` and the learning rate from a device
    tensor (``_set_optimizer_form``), so neither needs a new capture. Adam creates its state in
    its first step, so a few warm-up steps run before the capture (also letting cuDNN
    autotune); the weights and the optimizer state are then put back in place (the graph holds
    their addresses), so a graphed run computes what an eager one does. Python hooks (W&B's
    run.watch) do not run inside a replay: ``grads`` keeps the gradient buffers the graph
    writes, and the loop hands them to trainjob's watcher after each replay.
    """

    WARMUP_STEPS = 3

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        data: Split,
        first_idx: torch.Tensor,
        cfg: LoopConfig,
        nonfinite: torch.Tensor,
        loss_sum: torch.Tensor,
    ) -> None:
        device = data.images.device
        self.idx = first_idx.clone()

        def step() -> torch.Tensor:
            return train_step(model, optimizer, criterion, data, self.idx, cfg, False)

        params = list(model.state_dict().values())
        saved_params = [t.detach().clone() for t in params]
        saved_state = {
            p: {k: v.detach().clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
            for p, st in optimizer.state.items()
        }
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                step()
                optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():  # undo the warm-up steps, in place
            for t, old in zip(params, saved_params, strict=True):
                t.copy_(old)
            for p, st in optimizer.state.items():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        # Adam's fresh state is all zeros (step 0, zero moments)
                        v.copy_(saved_state[p][k]) if p in saved_state else v.zero_()
        # Gradients are None here, so the captured backward allocates them in the graph's pool
        # and each replay writes them afresh instead of accumulating.
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            # train_step's loss is detached: the output buffer is all a replay needs; holding
            # the captured autograd graph would keep its AccumulateGrad nodes (made on the
            # capture stream) alive for the eager steps, which then synchronize streams and warn.
            self.loss = step()
            _accumulate(self.loss, nonfinite, loss_sum)
        # The graph's own gradient tensors (the loop's zero_grad(set_to_none) only drops the
        # references in .grad; each replay writes these afresh).
        self.grads = [p.grad for p in model.parameters() if p.requires_grad]

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        self.idx.copy_(idx)  # device to device, no sync
        self.graph.replay()
        return self.loss


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
    history: HistoryLog,
    progress: Progress,
    hooks: Hooks | None = None,
    bar: Callable[..., object] | None = None,
    stats: LoopStats | None = None,
    watcher: Watcher | None = None,
) -> Progress:
    """Train from ``progress`` to the end of ``cfg.epochs``; returns the final progress.

    ``watcher`` (watch.py) computes the watch histograms; the loop tells it how far the next
    log row is, and drives it around CUDA graph replays, where its hooks cannot run."""
    hooks = hooks or Hooks()
    stats = stats if stats is not None else LoopStats()
    device = data.images.device
    n = len(data)
    batches = math.ceil(n / cfg.batch_size)
    peak_lr = float(optimizer.defaults["lr"])
    graphs = cfg.cuda_graphs and graphs_available(device)
    total_steps = cfg.epochs * batches
    graphed: GraphedStep | None = None
    _set_optimizer_form(optimizer, graphs, device)
    seen_shapes: set[int] = set()
    model.train()
    last_log_time, last_log_examples = time.perf_counter(), progress.examples_seen
    # Divergence: on CPU every step's loss is checked (reading a CPU scalar costs nothing); on
    # CUDA that read would sync every step, so a device-side flag collects non-finite losses
    # and is read at each log interval and epoch end: a NaN stops the run within log_every steps.
    per_step = device.type != "cuda"
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    # train/loss_mean: the batch losses summed on the device between log rows (no sync); kept in
    # ``progress`` so that a checkpoint carries it and a resumed interval has the same mean.
    loss_sum = torch.tensor(float(progress.loss_sum), dtype=torch.float32, device=device)
    progress.loss_sum = loss_sum
    while progress.epoch < cfg.epochs:
        epoch = progress.epoch
        epoch_start, epoch_examples, epoch_warmup = time.perf_counter(), 0, 0.0
        order = epoch_order(n, cfg.seed, epoch, device)
        pbar = _bar(bar, cfg, epoch, batches, progress.batch)
        for b in range(progress.batch, batches):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            size = int(idx.shape[0])  # host-side metadata: no sync
            warmup = size not in seen_shapes  # a new shape: compile / autotune happens here
            if warmup:
                _sync(device)  # SYNC POINT: only on warm-up steps (first batch, partial batch)
                warmup_start = time.perf_counter()
            if cfg.lr_schedule != "none":
                lr = learning_rate_at(progress.step, cfg.epochs * batches, peak_lr, cfg.lr_schedule)
                set_learning_rate(optimizer, lr)
            if watcher is not None:
                watcher.plan(_steps_to_row(progress.step + 1, cfg.log_every, total_steps))
            if graphs and size == cfg.batch_size:
                if graphed is None:  # on the first full batch: warm-up steps and the capture
                    with watcher.paused() if watcher is not None else contextlib.nullcontext():
                        graphed = GraphedStep(
                            model, optimizer, criterion, data, idx, cfg, nonfinite, loss_sum
                        )
                if watcher is not None and watcher.started:
                    watcher.forward_event()  # the weights this step's forward reads
                loss = graphed(idx)  # the divergence flag and loss_sum are updated in the graph
                if watcher is not None and watcher.started:
                    watcher.backward_event(graphed.grads)
            else:
                loss = train_step(model, optimizer, criterion, data, idx, cfg)
                _accumulate(loss, nonfinite, loss_sum)  # no sync: read at log intervals
            # Also after a replay: the graph writes its own gradient buffers whatever .grad
            # holds, and an eager (partial) batch must not accumulate into them.
            optimizer.zero_grad(set_to_none=True)
            if warmup:
                _sync(device)  # SYNC POINT: as above
                seen_shapes.add(size)
                spent = time.perf_counter() - warmup_start
                epoch_warmup += spent
                stats.warmup_s += spent
                stats.warmup_steps += 1
            else:
                epoch_examples += size
            progress.batch, progress.step = b + 1, progress.step + 1
            progress.examples_seen += size
            if per_step:
                _check_finite(loss.item(), progress)  # CPU: not a sync
            if progress.step % cfg.log_every == 0:
                # SYNC POINT: the only one in steady state, every log_every steps.
                value, bad, interval_sum = torch.stack(
                    [loss.float(), nonfinite.float(), loss_sum]
                ).tolist()
                loss_sum.zero_()
                _check_finite(math.nan if bad else value, progress)
                now = time.perf_counter()
                rate = (progress.examples_seen - last_log_examples) / max(now - last_log_time, 1e-9)
                last_log_time, last_log_examples = now, progress.examples_seen
                history.log(
                    {
                        "epoch": epoch,
                        "loss": value,
                        "train/loss_mean": interval_sum / cfg.log_every,
                        "perf/samples_per_s": rate,
                    },
                    step=progress.examples_seen,
                )
                if pbar is not None:
                    pbar.set_postfix(loss=f"{value:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
            if pbar is not None:
                pbar.update(1)
            if watcher is not None:
                watcher.plan(None)  # forwards outside the loop (evaluation, export): unknown
            hooks.after_step(progress)
        _sync(device)  # SYNC POINT: once per epoch, so the epoch's time is the GPU's time
        stats.epochs.append((epoch_examples, time.perf_counter() - epoch_start - epoch_warmup))
        if pbar is not None:
            pbar.close()
        _check_finite(math.nan if nonfinite.item() else 0.0, progress)  # SYNC: once per epoch
        progress.epoch, progress.batch = epoch + 1, 0
        hooks.after_epoch(progress)
    return progress


def graphs_available(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device; on others ``cuda_graphs`` is a no-op."""
    return device.type == "cuda"


def _steps_to_row(step: int, log_every: int, total_steps: int) -> int | None:
    """Training steps after ``step`` until the next one that logs a row; None if none does."""
    ahead = -step % log_every
    return ahead if step + ahead <= total_steps else None


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
    hooks: Hooks | None = None,
    progress: Progress | None = None,
) -> float:
    """Accuracy on ``data``, counted on the device; one host sync at the end."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.images.device)
    for start in range(0, len(data), EVAL_BATCH):
        x = _prepare(data.images[start : start + EVAL_BATCH], channels_last)
        with _autocast(data.images.device, bf16):
            logits = model(x)
        correct += (logits.argmax(dim=1) == data.labels[start : start + EVAL_BATCH]).sum()
        if hooks is not None and progress is not None:
            hooks.during_eval(progress)
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
