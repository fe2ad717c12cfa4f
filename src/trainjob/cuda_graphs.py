"""CUDA graphs for the training loop: opt-in (``TRAINJOB_CUDA_GRAPHS``), CUDA only.

A full-batch optimizer step is recorded once as a CUDA graph and then replayed (``GraphedStep``);
``GraphReplay`` is what the loop calls instead of an eager step: it captures on the first full
batch and drives trainjob's watcher (tracking/watch.py) around each replay, where hooks cannot run.
On other devices ``cuda_graphs`` is a no-op (``graphs_available``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .data import Split
from .step import LoopConfig, accumulate, train_step
from .tracking.watch import Watcher


def graphs_available(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device; on others ``cuda_graphs`` is a no-op."""
    return device.type == "cuda"


def set_optimizer_form(
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
    tensor (``set_optimizer_form``), so neither needs a new capture. Adam creates its state in
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
            accumulate(self.loss, nonfinite, loss_sum)
        # The graph's own gradient tensors (the loop's zero_grad(set_to_none) only drops the
        # references in .grad; each replay writes these afresh).
        self.grads = [p.grad for p in model.parameters() if p.requires_grad]

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        self.idx.copy_(idx)  # device to device, no sync
        self.graph.replay()
        return self.loss


class GraphReplay:
    """The loop's graph branch: one full-batch step as a graph replay. Captures the graph on
    the first call (with the watcher paused, so that the warm-up and capture steps fire no
    hooks), then replays it, telling the watcher about the weights each replay's forward reads
    and the gradients it writes. The divergence flag and loss_sum are updated in the graph."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        data: Split,
        cfg: LoopConfig,
        nonfinite: torch.Tensor,
        loss_sum: torch.Tensor,
        watcher: Watcher | None,
    ) -> None:
        self.args = (model, optimizer, criterion, data)
        self.cfg, self.nonfinite, self.loss_sum = cfg, nonfinite, loss_sum
        self.watcher = watcher
        self.graphed: GraphedStep | None = None

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        watcher = self.watcher
        if self.graphed is None:  # on the first full batch: warm-up steps and the capture
            with watcher.paused() if watcher is not None else contextlib.nullcontext():
                self.graphed = GraphedStep(*self.args, idx, self.cfg, self.nonfinite, self.loss_sum)
        if watcher is not None and watcher.started:
            watcher.forward_event()  # the weights this step's forward reads
        loss = self.graphed(idx)
        if watcher is not None and watcher.started:
            watcher.backward_event(self.graphed.grads)
        return loss
