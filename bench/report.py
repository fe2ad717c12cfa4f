"""`trainjob report` over N offline runs of a sweep, against W&B's own offline reader.

    python bench/report.py [--runs 100] [--repeats 3] [--keep DIR]

Writes N real offline W&B runs with wandb itself (one process, one run after another), each the
size of a tutorial job's (5 epochs of MNIST `[::5]` at batch 128: a loss row every 25 steps,
`run.watch` histograms of 8 tensors every 10 steps, a test_accuracy per epoch), grouped as one
`sweep run` sweep with its trial folders, run.json and sweep.yaml, some stopped by hyperband,
one failed, one preempted and resumed (two folders). Then, in the same invocation:

- `trainjob report DIR` as a user runs it (a fresh process), `--repeats` times: median, range;
- W&B's own offline reader, `wandb leet inspect --summary --json` (config and summary only: no
  history, no page), once per folder over the first `--leet` folders, scaled to all of them
  (it takes seconds per folder): the baseline.

Prints the CPU, the load, both times and the ratio. Nothing is timed inside the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sweep_hyperband import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SWEEP = {
    "name": "bench-report",
    "method": "random",
    "metric": {"name": "test_accuracy", "goal": "maximize"},
    "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 0.0003, "max": 0.03},
        "batch_size": {"values": [64, 128, 256]},
        "kernels": {"values": [[16, 32], [32, 64], [8, 16]]},
        "epochs": {"value": 5},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    "run_cap": 1000,
}
WRITER = r"""
import json, math, random, sys
from pathlib import Path
import numpy as np
import wandb

out, n = Path(sys.argv[1]), int(sys.argv[2])
rng = random.Random(0)
tensors = ["layer1.0.weight", "layer1.0.bias", "layer2.0.weight", "layer2.0.bias",
           "fc.weight", "fc.bias", "layer1.1.weight", "layer2.1.weight"]
steps_per_epoch, batch = 94, 128
for k in range(n):
    lr = math.exp(rng.uniform(math.log(3e-4), math.log(3e-2)))
    config = {"learning_rate": lr, "batch_size": rng.choice([64, 128, 256]),
              "kernels": rng.choice([[16, 32], [32, 64], [8, 16]]), "epochs": 5}
    key = f"{k:03d}-{k * 7919 % 65536:04x}"
    stopped_at = 2 if k % 4 == 3 else None
    code = 6 if stopped_at else (1 if k == 2 else 0)
    pieces = [(0, 3, 143), (3, 5, code)] if k == 1 else [(0, stopped_at or 5, code)]
    run_id = f"bench{k:04d}"
    acc = 0.1
    for first, last, exit_code in pieces:
        run = wandb.init(mode="offline", dir=str(out), id=run_id, project="bench",
                         name=f"bench-report-{key}", group="bench-report-0123abcd",
                         tags=["bench-report", key], config=config, resume="allow",
                         settings=wandb.Settings(x_disable_viewer=True, silent=True))
        for epoch in range(first, last):
            for s in range(steps_per_epoch):
                step = (epoch * steps_per_epoch + s + 1) * batch
                row = {}
                if s % 10 == 0:
                    for t in tensors:
                        for kind in ("gradients", "parameters"):
                            values = np.random.default_rng(step).normal(size=500)
                            counts = np.histogram(values, 64)
                            row[f"{kind}/{t}"] = wandb.Histogram(np_histogram=counts)
                if s % 25 == 0:
                    row.update(loss=2.3 * math.exp(-step / 4000) + rng.random() * 0.05,
                               epoch=epoch)
                if row:
                    run.log(row, step=step)
            acc = min(0.99, acc + (1 - acc) * rng.uniform(0.3, 0.8))
            run.log({"test_accuracy": acc}, step=(epoch + 1) * steps_per_epoch * batch + 1)
        summary = {"test_accuracy": acc, "perf/train_s": 10.0 + rng.random()}
        if exit_code == 6:
            summary["stopped"] = "early termination (bench): ended at epoch 2"
        run.summary.update(summary)
        folder = Path(run.dir).parent
        run.finish(exit_code=exit_code)
    trial = out / "outputs" / "sweeps" / "bench-report" / key
    (trial / run_id).mkdir(parents=True, exist_ok=True)
    record = {"exit_code": code, "run_id": run_id, "mode": "offline", "run_dir": str(folder),
              "summary": summary}
    (trial / run_id / "run.json").write_text(json.dumps(record))
"""


def write_runs(work: Path, n: int) -> float:
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRAINJOB_"))}
    env.update(WANDB_SILENT="true", WANDB_ERROR_REPORTING="false", HOME=str(work / "home"))
    subprocess.run([sys.executable, "-c", WRITER, str(work), str(n)], env=env, check=True)
    sweep_dir = work / "outputs" / "sweeps" / "bench-report"
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return time.perf_counter() - started


def time_report(work: Path, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRAINJOB_"))}
    env.update(PYTHONPATH=str(ROOT / "src"), TRAINJOB_OUTPUT_DIR=str(work / "outputs"))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "trainjob", "report", str(work), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    return took


def time_leet(folders: list[Path]) -> float:
    wandb = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    started = time.perf_counter()
    for folder in folders:
        subprocess.run(
            [wandb, "leet", "inspect", "--summary", "--json", str(folder)],
            capture_output=True,
            check=True,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--leet", type=int, default=10, help="folders W&B's reader reads")
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln[:5] == "flags")
    simd = " ".join(f for f in flags.split() if f.startswith(("avx", "amx"))) or "no AVX"
    print(f"CPU: {cpu_name()} ({simd}), {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    wrote = write_runs(work, args.runs)
    folders = sorted((work / "wandb").glob("offline-run-*"))
    size = sum(f.stat().st_size for d in folders for f in d.glob("*.wandb"))
    print(
        f"wrote {args.runs} runs ({len(folders)} folders, {size / 2**20:.0f} MiB of run files) "
        f"with wandb in {wrote:.0f} s"
    )
    out = work / "report.html"
    times = [time_report(work, out) for _ in range(args.repeats)]
    median = statistics.median(times)
    print(
        f"trainjob report: median {median:.2f} s, range {min(times):.2f}-{max(times):.2f} s "
        f"over {args.repeats} runs; page {out.stat().st_size / 1024:.0f} KiB"
    )
    sample = folders[: args.leet]
    leet = time_leet(sample) / len(sample) * len(folders)
    print(
        f"wandb leet inspect --summary, once per folder: {leet:.1f} s for {len(folders)} "
        f"folders (measured on {len(sample)})"
    )
    print(
        f"ratio: the report takes {median / leet:.3f} of W&B's summary-only reader "
        f"({leet / median:.1f}x faster); load now {os.getloadavg()[0]:.1f}"
    )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
