"""Offline hyperband on the shipped sweep.yaml vs the same sweep without early termination.

    python bench/sweep_hyperband.py [--count 12] [--data_slice 50] [--epochs 5] [--data DIR]
    python bench/sweep_hyperband.py --parts stop,eval   # only the stop latency and eval cost

One invocation runs ``trainjob sweep run`` twice on real MNIST, offline: the shipped
``sweep.yaml`` (bayes, hyperband ``early_terminate``) and the same file without
``early_terminate``, each ``--count N`` trials, and prints trials run, trials stopped early,
epochs trained, wall time (and the time saved) and the best ``test_accuracy`` each found. The
proposals are seeded (sweep name + trial index), so both sweeps start from the same points;
they part once a stop changes what bayes has seen. ``--data_slice`` / ``--epochs`` replace the
file's fixed ``data_slice`` / ``epochs`` values to keep a run short on a small CPU.

It also measures how long a training job takes to end after a stop reaches it: SIGUSR2 (what
``trainjob agent`` and ``sweep run`` send; W&B's stop status sets the same flag) to a running
``trainjob train``, until the process has exited (run closed, no checkpoint), against SIGTERM
(preemption: checkpoint written) in the same invocation. And what the per-epoch sweep metric
costs: one ``evaluate`` on the test split against one training epoch (the job's own functions,
in this process, tutorial settings, ``[::5]`` slice). Data: DIR, else $MNIST_TEST_DIR, else
../shared/data/mnist (the IDX .gz files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def base_env(work: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINJOB_", "WANDB_"))}
    env.update(
        PYTHONPATH=str(ROOT / "src"),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(work),
        TRAINJOB_DATA_DIR=str(data),
        TRAINJOB_PROGRESS="false",
        TRAINJOB_ONNX_EXPORTER="torchscript",
        TRAINJOB_OUTPUT_DIR=str(work / "outputs"),
    )
    return env


def sweep_file(work: Path, name: str, data_slice: int, epochs: int, early: bool) -> Path:
    config = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    config["name"] = name
    config["parameters"]["data_slice"] = {"value": data_slice}
    config["parameters"]["epochs"] = {"value": epochs}
    if not early:
        config.pop("early_terminate")
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_sweep(work: Path, data: Path, path: Path, count: int) -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "trainjob", "sweep", "run", str(path), "--count", str(count)],
        env=base_env(work, data),
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"sweep {path.name} exited {result.returncode}:\n{result.stderr[-3000:]}")
    name = yaml.safe_load(path.read_text())["name"]
    trials = []
    for folder in sorted((work / "outputs" / "sweeps" / name).iterdir()):
        record = json.loads((folder / "run.json").read_text())
        try:
            epochs = json.loads((folder / "epochs.json").read_text())["test_accuracy"]
        except FileNotFoundError:  # failed before its first epoch
            epochs = []
        trials.append((record["exit_code"], record["summary"].get("test_accuracy"), len(epochs)))
    finished = [acc for code, acc, _ in trials if code == 0 and acc is not None]
    return {
        "wall": wall,
        "trials": len(trials),
        "stopped": sum(code == 6 for code, _, _ in trials),
        "epochs": sum(n for _, _, n in trials),
        "best": max(finished) if finished else float("nan"),
    }


def stop_latency(work: Path, data: Path, sig: int) -> float:
    """Seconds from ``sig`` to the exit of a training job, sent once it is in its loop."""
    env = base_env(work, data) | {"TRAINJOB_EPOCHS": "400", "TRAINJOB_WATCH_LOG": "none"}
    env["TRAINJOB_CHECKPOINT_DIR"] = str(work / f"ckpt-{sig}-{time.monotonic_ns()}")
    job = subprocess.Popen(
        [sys.executable, "-m", "trainjob", "train", "--data_slice", "5"],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert job.stderr is not None
    for line in job.stderr:  # the environment line comes right before the run starts
        if line.startswith('trainjob: {"python"'):
            break
    time.sleep(6.0)  # well inside the training loop, also on a busy machine
    sent = time.perf_counter()
    job.send_signal(sig)
    job.stderr.read()
    job.wait()
    took = time.perf_counter() - sent
    want = 6 if sig == signal.SIGUSR2 else 143
    if job.returncode != want:
        sys.exit(f"job stopped with {signal.Signals(sig).name} exited {job.returncode}, not {want}")
    return took


def eval_cost(data: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per training epoch and per test-split evaluation, measured alternately."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from trainjob import data as datasets
    from trainjob.model import ConvNet
    from trainjob.train import LoopConfig, Progress, Report, evaluate, make_optimizer, train

    torch.set_num_threads(os.cpu_count() or 1)
    loaded = datasets.load("MNIST", data, 5, torch.device("cpu"))
    model = ConvNet([16, 32], 10).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, 0.005)
    criterion = torch.nn.CrossEntropyLoss()

    class Quiet:
        def log(self, *_: object, **__: object) -> None:
            return None

    epochs, evals = [], []
    for i in range(repeats + 1):  # the first round warms up
        cfg = LoopConfig(epochs=i + 1, batch_size=128, log_every=25, seed=0, progress_bar=False)
        start = time.perf_counter()
        train(model, optimizer, criterion, loaded.train, cfg, Report(Quiet(), Progress(epoch=i)))
        mid = time.perf_counter()
        evaluate(model, loaded.test)
        end = time.perf_counter()
        if i:
            epochs.append(mid - start)
            evals.append(end - mid)
    return epochs, evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.environ.get("MNIST_TEST_DIR") or str(ROOT.parent / "shared/data/mnist")
    parser.add_argument("--data", default=default)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--data_slice", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="stop and eval repeats")
    parser.add_argument("--parts", default="sweeps,stop,eval", help="which measurements to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    data = Path(args.data)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="sweep-hyperband-") as tmp:
        work = Path(tmp)
        if "sweeps" in parts:
            print(
                f"shipped sweep.yaml, --count {args.count}, data_slice={args.data_slice}, "
                f"epochs={args.epochs}, offline, real MNIST"
            )
            rows = {}
            for label, early in (("hyperband", True), ("no early_terminate", False)):
                path = sweep_file(work, f"hb-{int(early)}", args.data_slice, args.epochs, early)
                rows[label] = run_sweep(work, data, path, args.count)
            base = rows["no early_terminate"]["wall"]
            print(f"{'':20} {'trials':>6} {'stopped':>7} {'epochs':>6} {'wall s':>7} {'best':>7}")
            for label, r in rows.items():
                print(
                    f"{label:20} {r['trials']:>6} {r['stopped']:>7} {r['epochs']:>6} "
                    f"{r['wall']:>7.1f} {r['best']:>7.4f}"
                )
            saved = base - rows["hyperband"]["wall"]
            print(
                f"wall time saved by hyperband: {saved:.1f} s ({saved / base:.0%}); "
                f"ratio {rows['hyperband']['wall'] / base:.2f}x"
            )
        if "eval" in parts:
            epochs, evals = eval_cost(data, args.repeats)
            e, v = statistics.median(epochs), statistics.median(evals)
            print(
                f"per-epoch test_accuracy (median of {args.repeats}, [::5] slice: 12,000 train / "
                f"2,000 test): evaluate {v:.3f} s vs training epoch {e:.2f} s = {v / e:.1%} "
                "per epoch"
            )
        if "stop" not in parts:
            return
        stops = [stop_latency(work, data, signal.SIGUSR2) for _ in range(args.repeats)]
        terms = [stop_latency(work, data, signal.SIGTERM) for _ in range(args.repeats)]
        print(
            f"signal -> job exited (median of {args.repeats}, data_slice 5): stop (SIGUSR2, "
            f"exit 6, no checkpoint) {statistics.median(stops):.2f} s "
            f"[{', '.join(f'{s:.2f}' for s in stops)}]; preempt (SIGTERM, exit 143, checkpoint) "
            f"{statistics.median(terms):.2f} s [{', '.join(f'{s:.2f}' for s in terms)}]"
        )


if __name__ == "__main__":
    main()
