"""Sweep throughput: the same offline sweep one trial at a time and N trials at once.

    python bench/sweep_throughput.py [--parallel 2] [--repeats 2] [--data DIR]

One invocation runs the same grid (6 points: 3 learning rates x 2 seeds, 3 epochs, data_slice
10, W&B offline) with ``trainjob sweep run --parallel_trials 1`` and ``--parallel_trials N``
(default: 2 on a CPU, ``auto`` on a GPU), alternating, each in fresh folders, and prints for
each: trials per minute over the trials' span (first trial started to last trial ended; the
fork server's one-time start is printed apart), the ratio, the training share (the trials'
``perf/train_s`` over the span, per slot), and where the rest of each trial's wall time went:
its process's fixed cost (``perf/trial_s`` minus ``perf/train_s``: settings, data, W&B init,
evaluation, ONNX export and check) and the rest (fork, W&B finish, exit, as the driver saw it).
Each point's test accuracy is compared between the two modes.

Data: DIR, else $MNIST_TEST_DIR, else ../shared/data/mnist (the IDX .gz files).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    "name": "throughput",
    "method": "grid",
    "metric": {"name": "test_accuracy", "goal": "maximize"},
    "parameters": {"learning_rate": {"values": [0.005, 0.01, 0.002]}, "seed": {"values": [0, 1]}},
}
STARTED = re.compile(r"^trainjob sweep: throughput trial (\S+):")
ENDED = re.compile(r"^trainjob sweep: trial (\S+) exited (\d+)")


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    flags = set(
        next(
            (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
        )
    )
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return f"{model}, {os.cpu_count()} cores, {'+'.join(native) or 'no native bf16'}"


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else None


def run_sweep(data: Path, parallel: str, epochs: int, data_slice: int) -> dict:
    """One ``trainjob sweep run`` in fresh folders; its lines timestamped as they come."""
    tmp = Path(tempfile.mkdtemp(prefix="sweep-throughput-"))
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINJOB_", "WANDB_"))}
    env.update(
        PYTHONPATH=str(ROOT / "src"),
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp),
        WANDB_SILENT="true",
        HOME=str(tmp / "home"),
        TRAINJOB_DATA_DIR=str(data),
        TRAINJOB_OUTPUT_DIR=str(tmp / "outputs"),
        TRAINJOB_EPOCHS=str(epochs),
        TRAINJOB_DATA_SLICE=str(data_slice),
        TRAINJOB_PROGRESS="false",
        TRAINJOB_PARALLEL_TRIALS=parallel,
    )
    began = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainjob", "sweep", "run", str(tmp / "sweep.yaml")],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    starts, ends, lines = {}, {}, []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.time()
        lines.append(line.rstrip())
        if m := STARTED.match(line):
            starts[m.group(1)] = now
        elif m := ENDED.match(line):
            ends[m.group(1)] = (now, int(m.group(2)))
    proc.wait()
    wall = time.time() - began
    trials = {}
    for folder in sorted((tmp / "outputs" / "sweeps" / "throughput").iterdir()):
        record = json.loads((folder / "run.json").read_text())
        summary = record["summary"]
        trials[folder.name] = {
            "exit": record["exit_code"],
            "accuracy": summary.get("test_accuracy"),
            "train_s": summary.get("perf/train_s", 0.0),
            "trial_s": summary.get("perf/trial_s", 0.0),
            "seen_s": ends[folder.name][0] - starts[folder.name],
            "start": starts[folder.name],
            "end": ends[folder.name][0],
        }
    first, last = min(starts.values()), max(t for t, _ in ends.values())
    return {
        "rc": proc.returncode,
        "wall": wall,
        "startup": first - began,
        "span": last - first,
        "trials": trials,
        "lines": lines,
    }


def summarize(label: str, runs: list[dict], slots: int) -> dict:
    spans = [r["span"] for r in runs]
    per_min = [60 * len(r["trials"]) / r["span"] for r in runs]
    train = [sum(t["train_s"] for t in r["trials"].values()) for r in runs]
    share = [t / (s * slots) for t, s in zip(train, spans, strict=True)]
    fixed = [t["trial_s"] - t["train_s"] for r in runs for t in r["trials"].values()]
    rest = [t["seen_s"] - t["trial_s"] for r in runs for t in r["trials"].values()]
    startup = [r["startup"] for r in runs]
    # After the first trial (which also pays the fork server's imports and the architecture's
    # one ONNX export): from the second trial's start to the last end.
    later = []
    for r in runs:
        ordered = sorted(r["trials"].values(), key=lambda t: t["start"])[1:]
        span = max(t["end"] for t in ordered) - ordered[0]["start"]
        later.append(sum(t["train_s"] for t in ordered) / (span * slots))

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} [{min(values):.2f}..{max(values):.2f}]"

    print(f"{label}: {len(runs[0]['trials'])} trials, {slots} slot(s)")
    print(f"  trials/min over the span   {med(per_min)}")
    print(f"  span (first start..last end) s {med(spans)}; driver start-up s {med(startup)}")
    print(f"  training share of the slots' time {med([100 * s for s in share])} %")
    print(f"  the same after the first trial {med([100 * s for s in later])} %")
    print(f"  per trial: fixed cost in its process s {med(fixed)}")
    print(f"  per trial: fork, W&B finish, exit (driver's view minus perf/trial_s) s {med(rest)}")
    return {"per_min": statistics.median(per_min)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel", default=None, help="N, or auto (default: 2 CPU, auto GPU)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data_slice", type=int, default=10)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    data = args.data or Path(os.environ.get("MNIST_TEST_DIR") or ROOT.parent / "shared/data/mnist")
    gpu = gpu_name()
    parallel = args.parallel or ("auto" if gpu else "2")
    print(f"CPU: {cpu_name()}; GPU: {gpu or 'none'}; load {os.getloadavg()[0]:.1f}")
    print(
        f"grid of 6 (3 learning rates x 2 seeds), {args.epochs} epochs, "
        f"data_slice {args.data_slice}"
    )
    results: dict[str, list[dict]] = {"1": [], parallel: []}
    for _ in range(args.repeats):  # alternating, so that both modes see the same machine
        for mode in results:
            run = run_sweep(data, mode, args.epochs, args.data_slice)
            assert run["rc"] == 0, "\n".join(run["lines"][-20:])
            results[mode].append(run)
    slots = int(
        next(
            (
                ln.split()[2]
                for r in results[parallel]
                for ln in r["lines"]
                if "trial(s) at once" in ln
            ),
            parallel if parallel.isdigit() else 1,
        )
    )
    seq = summarize("one at a time", results["1"], 1)
    par = summarize(f"--parallel_trials {parallel}", results[parallel], slots)
    print(f"ratio (trials/min, parallel / one at a time): {par['per_min'] / seq['per_min']:.2f}x")
    accuracy = {
        key: (
            results["1"][0]["trials"][key]["accuracy"],
            results[parallel][0]["trials"][key]["accuracy"],
        )
        for key in results["1"][0]["trials"]
    }
    worst = max(abs(a - b) for a, b in accuracy.values())
    print(
        "test accuracy, each point, one at a time vs parallel: largest difference "
        f"{100 * worst:.2f} points"
    )
    for key, (a, b) in accuracy.items():
        print(f"  {key}: {a:.4f} vs {b:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
