"""An experiment, not a feature: does data parallelism over two single-threaded processes beat
one process with two threads for the tutorial's ConvNet on a 2-core CPU?

A step of one process with two OpenMP threads spends much of its time in small ops that do not
scale over threads (conv1 with one input channel, pooling, ReLU, Adam) and in waking the second
thread for each of them. The alternative measured here splits every batch of 128 in two halves
of 64: the main process and one helper, each single-threaded, run forward and backward on their
half at the same time. The weights live in shared memory; the helper hands each parameter's
gradient over as its backward produces it, and a hook on the main process's parameter adds it
before any later hook (``run.watch``'s) sees the gradient, so a tracker would see the whole
batch's gradient. Both halves' losses are sums divided by the whole batch size, so the merged
gradient is the batch-mean gradient of one process, up to float summation order (checked below).
Only the main process steps Adam; the helper reads the updated weights in place.

    python bench/cpu_two_process.py --data DIR [--epochs 3] [--repeats 3]

Prints steady-state samples/s (first epoch = warm-up) for one process with 2 threads, one with
1 thread, and two processes with 1 thread each, interleaved, and the ratios.
"""

from __future__ import annotations

import os

# As trainjob runs (trainjob/__init__.py), before torch's OpenMP runtime loads: idle threads sleep.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from cpu import find_data, stage  # bench/cpu.py, beside this file
from torch import nn

from trainjob.data import Split, load, to_float
from trainjob.model import ConvNet
from trainjob.train import LoopConfig, epoch_order, make_optimizer, train_step

BATCH, LR = 128, 0.005


def batch(data: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A half batch as train_step prepares a whole one (its loss here is a sum over the half)."""
    x = to_float(data.images[idx]).contiguous(memory_format=torch.channels_last)
    return x, data.labels[idx]


def helper(model: nn.Module, data: Split, shared: dict[str, torch.Tensor], go, ready) -> None:
    """The second process: on each "g", forward + backward on the second half of the batch in
    ``shared["idx"]``, writing each parameter's gradient to ``shared`` as soon as it exists."""
    torch.set_num_threads(1)
    params = list(model.parameters())
    criterion = nn.CrossEntropyLoss(reduction="sum")
    go_fd, ready_fd = go.fileno(), ready.fileno()
    for k, p in enumerate(params):

        def hand_over(grad: torch.Tensor, k: int = k) -> None:
            shared[f"grad{k}"].copy_(grad)
            os.write(ready_fd, bytes([k]))

        p.register_hook(hand_over)
    while os.read(go_fd, 1) == b"g":
        half, n = shared["meta"].tolist()
        x, y = batch(data, shared["idx"][half:n])
        loss = criterion(model(x), y) / n
        shared["loss"].copy_(loss.detach())
        loss.backward()
        for p in params:
            p.grad = None


class TwoProcess:
    """The main process's side: starts the helper, merges its gradients in backward hooks."""

    def __init__(self, model: nn.Module, data: Split) -> None:
        self.model, self.data = model.share_memory(), data
        params = list(model.parameters())
        self.shared = {
            f"grad{k}": torch.zeros_like(p).share_memory_() for k, p in enumerate(params)
        }
        self.shared |= {
            "idx": torch.zeros(BATCH, dtype=torch.int64).share_memory_(),
            "meta": torch.zeros(2, dtype=torch.int64).share_memory_(),
            "loss": torch.zeros(()).share_memory_(),
        }
        context = mp.get_context("spawn")
        go_r, self._go = context.Pipe(duplex=False)
        self._ready, ready_w = context.Pipe(duplex=False)
        self.go_fd, self.ready_fd = self._go.fileno(), self._ready.fileno()
        self.proc = context.Process(
            target=helper, args=(model, data, self.shared, go_r, ready_w), daemon=True
        )
        self.proc.start()
        # The helper has its own copies now; without ours, its death reads as EOF, not a hang.
        go_r.close()
        ready_w.close()
        for k, p in enumerate(params):

            def merge(grad: torch.Tensor, k: int = k) -> torch.Tensor:
                got = os.read(self.ready_fd, 1)
                # both backwards run in the same order; b"" means the helper is gone
                assert got == bytes([k]), f"helper sent {got!r}, expected parameter {k}"
                return grad + self.shared[f"grad{k}"]

            p.register_hook(merge)
        self.criterion = nn.CrossEntropyLoss(reduction="sum")

    def step(self, optimizer: torch.optim.Optimizer | None, idx: torch.Tensor) -> float:
        """One step on ``idx``; with no optimizer, only the merged gradients (left in .grad)."""
        n = int(idx.shape[0])
        half = (n + 1) // 2
        self.shared["idx"][:n] = idx
        self.shared["meta"][:] = torch.tensor([half, n])
        os.write(self.go_fd, b"g")
        x, y = batch(self.data, idx[:half])
        loss = self.criterion(self.model(x), y) / n
        loss.backward()  # the hooks wait for and add the helper's gradients
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.item() + self.shared["loss"].item()

    def close(self) -> None:
        os.write(self.go_fd, b"q")
        self.proc.join(timeout=10)


def run(data: Split, mode: str, epochs: int, seed: int = 0) -> float:
    """Steady-state samples/s: the mean over epochs 2.. of ``epochs``."""
    torch.set_num_threads(2 if mode == "one process, 2 threads" else 1)
    torch.manual_seed(seed)
    model = ConvNet().to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, LR)
    criterion = nn.CrossEntropyLoss()
    cfg = LoopConfig(epochs=epochs, batch_size=BATCH, log_every=10**9, seed=seed)
    two = TwoProcess(model, data) if mode == "two processes, 1 thread each" else None
    n, timed = len(data), []
    try:
        for epoch in range(epochs):
            order = epoch_order(n, seed, epoch, torch.device("cpu"))
            start = time.perf_counter()
            for b in range(0, n, BATCH):
                idx = order[b : b + BATCH]
                if two is not None:
                    two.step(optimizer, idx)
                else:  # the job's own step (trainjob.train), as bench/cpu.py --ceiling times it
                    train_step(model, optimizer, criterion, data, idx, cfg).item()
                    optimizer.zero_grad(set_to_none=True)
            timed.append(n / (time.perf_counter() - start))
    finally:
        if two is not None:
            two.close()
    return statistics.mean(timed[1:])


def gradient_difference(data: Split) -> float:
    """Max relative difference between the first batch's gradient merged from two processes
    and the same batch's gradient in one process (only float summation order differs)."""
    torch.manual_seed(0)
    model = ConvNet().to(memory_format=torch.channels_last)
    idx = epoch_order(len(data), 0, 0, torch.device("cpu"))[:BATCH]
    x, y = batch(data, idx)
    nn.CrossEntropyLoss()(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    two = TwoProcess(model, data)
    try:
        two.step(None, idx)
    finally:
        two.close()
    return max(
        float((p.grad - e).abs().max() / e.abs().max())
        for p, e in zip(model.parameters(), expected, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with the four MNIST *-ubyte.gz files")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (first = warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (>= 1)")
    parser.add_argument("--data-slice", type=int, default=5, help="every Nth image (tutorial: 5)")
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1:
        parser.error("needs --epochs >= 2 (the first is warm-up) and --repeats >= 1")
    with tempfile.TemporaryDirectory(prefix="trainjob-2proc-") as tmp:
        data = load("MNIST", stage(find_data(args.data), Path(tmp) / "data"), args.data_slice).train
    data.images.share_memory_()
    data.labels.share_memory_()
    modes = ("one process, 2 threads", "one process, 1 thread", "two processes, 1 thread each")
    print(
        f"MNIST [::{args.data_slice}] ({len(data)} images), batch {BATCH}, Adam {LR}, "
        f"{args.epochs} epochs (first = warm-up), {args.repeats} interleaved repetitions"
    )
    worst = gradient_difference(data)
    print(f"first batch's gradient, two processes vs one: max relative difference {worst:.1e}")
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for rep in range(args.repeats):
        order = modes[rep % 3 :] + modes[: rep % 3]
        for mode in order:
            rates[mode].append(run(data, mode, args.epochs))
        line = "  ".join(f"{m}: {rates[m][-1]:,.0f}" for m in modes)
        print(f"  repetition {rep + 1}/{args.repeats}: {line}", flush=True)
    print("steady-state samples/s, median [min..max]:")
    for mode in modes:
        r = rates[mode]
        print(f"  {mode:30s} {statistics.median(r):7,.0f} [{min(r):,.0f}..{max(r):,.0f}]")
    ratios = [t / o for t, o in zip(rates[modes[2]], rates[modes[0]], strict=True)]
    print(
        f"two processes / one process with 2 threads: {statistics.median(ratios):.2f}x "
        f"[{min(ratios):.2f}..{max(ratios):.2f}]"
    )


if __name__ == "__main__":
    sys.exit(main())
