"""Sweep trial overhead: from "config chosen" to the trial's first training step, training excluded.

    python bench/sweep_overhead.py [--trials 3] [--data DIR]

Each trial is its own process (sweep/trials.py). This starts the same trial (`train --epochs 1` on
MNIST with the tutorial's settings, offline W&B run) N times as a cold `python` process (what
W&B's CLI agent does) and N times forked from trainjob's pre-imported fork server, stops each at
its first step, and prints the median of each part and the ratio. The fork server's one-time
start (its imports) is printed separately: a sweep pays it once, while the first point is chosen.
Data: DIR, else $MNIST_TEST_DIR, else ../shared/data/mnist (the IDX .gz files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

T0_ENV, OUT_ENV = "SWEEP_BENCH_T0", "SWEEP_BENCH_OUT"
PARTS = ("process start", "imports", "settings", "data", "wandb.init", "model, watch, rest")


def _instrument(t0: float, marks: dict[str, float]) -> None:
    """Time each stage of the real job by wrapping the functions job.run calls; on entering the
    training loop, write the marks and stop the job (exit 0) without training."""
    from trainjob import data, job, train
    from trainjob.errors import ExitCode, TrainjobError
    from trainjob.tracking import run as tracking

    class Measured(TrainjobError):
        exit_code = ExitCode.OK

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                marks[name] = marks.get(name, 0.0) + time.time() - start

        return wrapper

    def first_step(*_args, **_kwargs):
        marks["total"] = time.time() - t0
        Path(os.environ[OUT_ENV]).write_text(json.dumps(marks))
        raise Measured("bench: stopped at the first training step")

    job.load_settings = timed("settings", job.load_settings)
    data.load = timed("data", data.load)
    tracking.start = timed("wandb.init", tracking.start)
    train.train = first_step  # job.run imports it from trainjob.train at call time


def _imports() -> None:
    from trainjob.sweep.trials import PRELOAD

    for name in PRELOAD:
        __import__(name)


def _quiet() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def forked_trial(argv: list[str], env: dict[str, str], argv0: str) -> None:
    """The fork server's child: same as trials._trial_main, with the stages timed."""
    t0 = float(env[T0_ENV])
    marks = {"process start": time.time() - t0}
    _quiet()
    start = time.time()
    _imports()  # already imported by the fork server: ~0
    marks["imports"] = time.time() - start
    os.environ.update(env)
    _instrument(t0, marks)
    from trainjob.sweep.trials import _trial_main

    _trial_main(argv, env, argv0)


def cold_child(argv: list[str]) -> None:
    t0 = float(os.environ[T0_ENV])
    marks = {"process start": time.time() - t0}
    _quiet()
    start = time.time()
    _imports()
    marks["imports"] = time.time() - start
    _instrument(t0, marks)
    from trainjob.__main__ import main

    sys.exit(main(argv))


def measure(mode: str, runner, argv: list[str], env: dict[str, str], out: Path) -> dict:
    out.unlink(missing_ok=True)
    env = {**env, OUT_ENV: str(out), T0_ENV: repr(time.time())}
    if mode == "cold":
        cmd = [sys.executable, __file__, "--child", *argv]
        code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False).returncode
    else:
        code = runner.start(argv, env).wait()
    if code != 0 or not out.exists():
        raise SystemExit(f"{mode} trial failed (exit {code}); run it by hand: trainjob {argv}")
    marks = json.loads(out.read_text())
    marks["model, watch, rest"] = marks["total"] - sum(marks.get(p, 0.0) for p in PARTS[:-1])
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    default = os.environ.get("MNIST_TEST_DIR") or str(ROOT.parent / "shared/data/mnist")
    parser.add_argument("--data", default=default)
    args = parser.parse_args()
    source = Path(args.data)
    if not any(source.glob("*-ubyte*")):
        raise SystemExit(f"no MNIST IDX files in {source}; pass --data DIR")

    from trainjob.sweep.spec import sweep_engine
    from trainjob.sweep.trials import TrialRunner

    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    data = work / "data"
    data.mkdir()
    for f in source.glob("*-ubyte*"):
        shutil.copyfile(f, data / f.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINJOB_", "WANDB_"))} | {
        "PYTHONPATH": str(ROOT / "src"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(work),
        "TRAINJOB_DATA_DIR": str(data),
        "TRAINJOB_OUTPUT_DIR": str(work / "outputs"),
        "TRAINJOB_PROGRESS": "false",
    }
    argv = ["train", "--epochs=1", "--learning_rate=0.003", "--kernels=[16, 32]"]

    # The engine's proposal (not part of the overhead above): bayes with 5 earlier results.
    sweeps = sweep_engine()
    config = {
        "method": "bayes",
        "metric": {"name": "test_accuracy", "goal": "maximize"},
        "parameters": {
            "learning_rate": {"distribution": "log_uniform_values", "min": 3e-4, "max": 3e-2},
            "batch_size": {"values": [64, 128, 256]},
        },
    }
    prior = [
        sweeps.SweepRun(
            config={"learning_rate": {"value": 1e-3 * (i + 1)}, "batch_size": {"value": 128}},
            summaryMetrics={"test_accuracy": 0.9 + i / 100},  # the alias (pydantic 2)
            state="finished",
        )
        for i in range(5)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's GP convergence notes
        sweeps.next_run(config, prior)  # the first call imports sklearn
        start = time.perf_counter()
        sweeps.next_run(config, prior)
        propose_s = time.perf_counter() - start

    runner = TrialRunner(fork=True, target=forked_trial)
    if not runner.fork:
        raise SystemExit("this platform has no forkserver start method")
    start = time.perf_counter()
    runner.warm_up()
    measure("fork", runner, argv, env, work / "marks.json")  # waits for the server's imports
    preload_s = time.perf_counter() - start

    results: dict[str, list[dict]] = {"cold": [], "fork": []}
    for _ in range(args.trials):  # interleaved: both modes see the same machine load
        for mode in results:
            results[mode].append(measure(mode, runner, argv, env, work / "marks.json"))

    def med(mode: str, part: str) -> float:
        return statistics.median(m.get(part, 0.0) for m in results[mode])

    print(
        f"trial overhead: config chosen -> first training step (training excluded), median of "
        f"{args.trials}\n{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, data {source}, "
        "offline W&B run, tutorial settings\n"
    )
    print(f"  {'':22}{'cold process':>14}{'fork server':>14}")
    for part in PARTS:
        print(f"  {part:22}{med('cold', part):>12.2f} s{med('fork', part):>12.2f} s")
    cold, fork = med("cold", "total"), med("fork", "total")
    print(f"  {'total':22}{cold:>12.2f} s{fork:>12.2f} s   ratio {cold / fork:.1f}x")
    print(f"\n  once per sweep: fork server start incl. first trial {preload_s:.1f} s")
    print(f"  per trial, before 'config chosen': bayes proposal (5 results) {propose_s:.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        cold_child(sys.argv[2:])
    else:
        main()
