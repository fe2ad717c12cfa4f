"""Memory over a long run: RSS of this process and of wandb-core while
(a) logging 100k steps through the job's Tracker and (b) training 1k epochs of tiny data with
the real loop, both into an offline W&B run. Prints RSS samples and the growth after warm-up;
not a test (no timed or sized asserts), a measurement to report.

    python bench/memory.py [--logs 100000] [--epochs 1000]

RSS is read from /proc/<pid>/status (psutil when installed). Linux only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def rss_mib(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int, name: str) -> list[int]:
    """Processes whose parent is ``pid`` and whose command name starts with ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and comm.startswith(name):
            found.append(int(entry.name))
    return found


class Sampler:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.rows: list[tuple[int, float, float]] = []
        self.started = time.perf_counter()

    def sample(self, done: int) -> None:
        core = sum(rss_mib(p) for p in children(os.getpid(), "wandb-core"))
        self.rows.append((done, rss_mib(os.getpid()), core))
        print(
            f"  {self.label} {done:>7}/{self.total}  python {self.rows[-1][1]:7.1f} MiB  "
            f"wandb-core {core:7.1f} MiB  {time.perf_counter() - self.started:6.1f}s",
            flush=True,
        )

    def report(self) -> None:
        # Growth after warm-up: from the sample at ~10% of the work to the last one.
        warm = next(r for r in self.rows if r[0] >= self.total // 10)
        last = self.rows[-1]
        print(
            f"  {self.label}: growth after warm-up ({warm[0]} -> {last[0]}): python "
            f"{last[1] - warm[1]:+.1f} MiB, wandb-core {last[2] - warm[2]:+.1f} MiB; peak python "
            f"{max(r[1] for r in self.rows):.1f} MiB, wandb-core {max(r[2] for r in self.rows):.1f}"
        )


def measure(label: str, total: int, every: int, step: Callable[[int], None]) -> None:
    sampler = Sampler(label, total)
    sampler.sample(0)
    for i in range(1, total + 1):
        step(i)
        if i % every == 0:
            sampler.sample(i)
    sampler.report()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=1_000)
    ns = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="trainjob-memory-"))
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true")
    import torch
    from helpers import write_tiny_mnist

    from trainjob import data
    from trainjob.model import ConvNet
    from trainjob.settings import load_settings
    from trainjob.tracking import run as tracking
    from trainjob.train import LoopConfig, Progress, Report, train

    torch.set_num_threads(2)
    settings = load_settings([])

    print(f"(a) {ns.logs:,} tracker.log calls (3 scalars each), offline run in {tmp}")
    tracker = tracking.start(settings, {})
    measure(
        "log",
        ns.logs,
        ns.logs // 10,
        lambda i: tracker.log({"loss": 1.0 / i, "epoch": i // 100, "perf/x": float(i)}, step=i),
    )
    tracker.finish()

    print(f"(b) {ns.epochs:,} epochs of 64 synthetic images (1 step each, logged every step)")
    loaded = data.load("MNIST", write_tiny_mnist(tmp / "data", n_train=64, n_test=16), 1)
    model = ConvNet([16, 32], 10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    criterion = torch.nn.CrossEntropyLoss()
    tracker = tracking.start(settings, {})
    tracker.watch(model, criterion, "all", 10)  # the tutorial's histograms, every 10 steps
    progress = Progress()

    def one_epoch(epoch: int) -> None:
        cfg = LoopConfig(epochs=epoch, batch_size=64, log_every=1, seed=0, progress_bar=False)
        train(model, optimizer, criterion, loaded.train, cfg, Report(tracker, progress))

    measure("epoch", ns.epochs, ns.epochs // 10, one_epoch)
    tracker.finish()


if __name__ == "__main__":
    main()
