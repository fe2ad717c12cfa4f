"""trainjob vs a W&B-tutorial-style loop on the CPU: steady-state samples/s, their ratio, and
trainjob's own tracking overhead, all measured in one invocation; optionally where the wall
time of a `trainjob --epochs 1` goes.

    python bench/cpu.py                      # the tutorial's 5 epochs, 3 interleaved repetitions
    python bench/cpu.py --amp none           # float32 only (bf16 is slow where it is emulated)
    python bench/cpu.py --epochs 3 --repeats 5 --data DIR  # a folder of the four MNIST .gz files
    python bench/cpu.py --breakdown          # also: wall-time breakdown of one short job
    python bench/cpu.py --ceiling            # also: the FLOP bound and where a step's time goes
    make bench

Both sides train the tutorial's ConvNet on the same real MNIST slice ([::5], 12,000 images)
with the same hyperparameters (batch 128, Adam, lr 0.005, same epochs, same seed) and one
offline W&B run with watch(log="all", log_freq=10) and a log every 25 batches:

- baseline: ``tutorial()`` below, the code path of W&B's "PyTorch integration" tutorial:
  torchvision MNIST with ``transforms.ToTensor()`` (a PIL image per sample), ``Subset`` [::5],
  ``DataLoader(batch_size=128, shuffle=True, pin_memory=True, num_workers=2)``, its ConvNet
  class, ``loss`` logged at step = examples seen. Minus the tutorial's ``wandb.init`` inside
  ``train_log``, which finishes the run and crashes the watch hooks (one active run per process:
  https://docs.wandb.ai/models/runs/multiple-runs-per-process).
- trainjob: ``python -m trainjob`` itself, as a user runs it (its last line reports the
  steady-state samples/s), per precision (``--amp none,bf16``): with ``WANDB_MODE=disabled``,
  with W&B's own ``run.watch`` (``--watcher wandb``) and with trainjob's watcher (the default),
  the last two offline: the tracking overhead of each against disabled, same precision.
- ``--watch-cost``: only the CPU cost of one watch firing, W&B's vs the watcher's, and of
  building one row's ``wandb.Histogram`` s.

Each measurement is a fresh process. Repetitions interleave the three runs (rotating which goes
first) so that load from other processes on the machine hits all of them alike. The first
epoch of each run is warm-up; the figure is samples/s over the remaining epochs, as the median
and range over repetitions, and the ratio is the median of per-repetition ratios.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TUTORIAL = {"batch_size": 128, "learning_rate": 0.005, "kernels": [16, 32], "classes": 10}
STEADY = re.compile(r"steady_samples/s=(\d+)")
WALL = re.compile(r"wall=([\d.]+)s")


# --- the baseline: the tutorial's code path, run in its own process ---------------------------


def tutorial(
    root: str, epochs: int, seed: int = 0, track: bool = True, data_slice: int = 5
) -> dict[str, object]:
    """W&B's tutorial, trimmed to what runs per batch; returns per-epoch seconds.

    ``track=False`` drops W&B (``bench/gpu.py`` runs where wandb is not installed)."""
    import contextlib

    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True  # as the tutorial sets it
    torch.backends.cudnn.benchmark = False
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    class ConvNet(nn.Module):  # the tutorial's class, verbatim in structure
        def __init__(self, kernels, classes=10):
            super().__init__()
            self.layer1 = nn.Sequential(
                nn.Conv2d(1, kernels[0], kernel_size=5, stride=1, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            )
            self.layer2 = nn.Sequential(
                nn.Conv2d(kernels[0], kernels[1], kernel_size=5, stride=1, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            )
            self.fc = nn.Linear(7 * 7 * kernels[-1], classes)

        def forward(self, x):
            out = self.layer1(x)
            out = self.layer2(out)
            out = out.reshape(out.size(0), -1)
            return self.fc(out)

    def get_data(train: bool, slice: int = data_slice):
        full = torchvision.datasets.MNIST(
            root=root, train=train, transform=transforms.ToTensor(), download=False
        )
        return torch.utils.data.Subset(full, indices=range(0, len(full), slice))

    def make_loader(dataset, batch_size):
        return torch.utils.data.DataLoader(
            dataset=dataset, batch_size=batch_size, shuffle=True, pin_memory=True, num_workers=2
        )

    config = dict(epochs=epochs, dataset="MNIST", architecture="CNN", **TUTORIAL)
    if track:
        import wandb

        session = wandb.init(project="pytorch-demo", config=config)
    else:
        session = contextlib.nullcontext(None)
    with session as run:
        loader = make_loader(get_data(train=True), batch_size=config["batch_size"])
        model = ConvNet(config["kernels"], config["classes"]).to(device)
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
        if run is not None:
            run.watch(model, criterion, log="all", log_freq=10)
        example_ct = batch_ct = 0
        epoch_s = []
        for epoch in range(config["epochs"]):
            start = time.perf_counter()
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                loss = criterion(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                example_ct += len(images)
                batch_ct += 1
                if (batch_ct + 1) % 25 == 0:
                    if run is not None:
                        run.log({"epoch": epoch, "loss": loss}, step=example_ct)
                    print(f"Loss after {str(example_ct).zfill(5)} examples: {loss:.3f}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_s.append(time.perf_counter() - start)
    return {"epoch_s": epoch_s, "examples": len(loader.dataset), "threads": torch.get_num_threads()}


# --- orchestration ------------------------------------------------------------------------------


def find_data(arg: str | None) -> Path:
    candidates = [arg, os.environ.get("MNIST_TEST_DIR")]
    candidates += [str(p / "shared" / "data" / "mnist") for p in (ROOT.parent, ROOT.parents[1])]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if all((path / f"{n}.gz").is_file() or (path / "MNIST" / "raw" / n).is_file() for n in RAW):
            return path
    sys.exit("bench: real MNIST not found; pass --data DIR (the four *-ubyte.gz files)")


def stage(source: Path, target: Path) -> Path:
    """Uncompressed copies in ``target/MNIST/raw`` (torchvision's layout, read by both sides):
    the source folder (e.g. a shared, read-only copy) is never written to."""
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW:
        if (source / "MNIST" / "raw" / name).is_file():
            shutil.copyfile(source / "MNIST" / "raw" / name, raw / name)
        else:
            with gzip.open(source / f"{name}.gz") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return target


def child_env(tmp: Path, mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINJOB_", "WANDB_"))}
    env.update(
        PYTHONPATH=str(ROOT / "src"),
        WANDB_MODE=mode,
        WANDB_DIR=str(tmp),
        WANDB_CACHE_DIR=str(tmp / ".cache"),
        WANDB_CONFIG_DIR=str(tmp / ".config"),
        WANDB_DATA_DIR=str(tmp / ".data"),
        WANDB_SILENT="true",
        TRAINJOB_OUTPUT_DIR=str(tmp / "outputs"),
        TRAINJOB_PROGRESS="false",
        TRAINJOB_ONNX_EXPORTER="torchscript",  # not timed here; keeps each run short
    )
    return env


def run_baseline(root: Path, epochs: int, tmp: Path) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(root), "--epochs", str(epochs)],
        env=child_env(tmp, "offline"),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"bench: baseline failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    timed = result["epoch_s"][1:] or result["epoch_s"]
    return result["examples"] * len(timed) / sum(timed)


def run_trainjob(root: Path, epochs: int, tmp: Path, mode: str, *extra: str) -> tuple[float, float]:
    """One ``python -m trainjob`` job; returns (steady samples/s, the job's own wall time)."""
    args = ["--data_dir", str(root), "--epochs", str(epochs), "--data_slice", "5", *extra]
    out = subprocess.run(
        [sys.executable, "-m", "trainjob", *args],
        env=child_env(tmp, mode),
        cwd=tmp,
        capture_output=True,
        text=True,
        check=False,
    )
    steady, wall = STEADY.search(out.stdout), WALL.search(out.stdout)
    if out.returncode != 0 or not steady or not wall:
        sys.exit(f"bench: trainjob failed ({out.returncode}):\n{out.stdout}{out.stderr[-3000:]}")
    return float(steady.group(1)), float(wall.group(1))


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}..{fmt.format(max(values))}]"
    )


def hardware() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota = Path("/sys/fs/cgroup/cpu.max").read_text().strip()
    except OSError:
        quota = "n/a"
    return (
        f"{model}, {cpus} CPUs available (cgroup cpu.max: {quota}), {platform.machine()}, "
        f"Python {platform.python_version()}, torch {metadata.version('torch')}, "
        f"wandb {metadata.version('wandb')}"
    )


def compare(root: Path, epochs: int, repeats: int, tmp: Path, amps: list[str]) -> float:
    """The baseline and, per precision, trainjob with W&B disabled, with W&B's own
    ``run.watch`` and with trainjob's watcher (offline), interleaved, rotating who goes first."""
    runs: dict[str, Callable[[Path], float]] = {"baseline": lambda d: run_baseline(root, epochs, d)}
    for amp in amps:
        for who, mode in (
            ("disabled", "disabled"),
            ("run.watch", "offline"),
            ("watcher", "offline"),
        ):
            extra = ["--amp", amp, "--watcher", "wandb" if who == "run.watch" else "trainjob"]
            runs[f"{who} {amp}"] = lambda d, m=mode, e=tuple(extra): run_trainjob(
                root, epochs, d, m, *e
            )[0]
    names = list(runs)
    results: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            work = tmp / f"r{i}-{names.index(name)}"
            work.mkdir()
            results[name].append(runs[name](work))
        row = "  ".join(f"{n} {results[n][-1]:,.0f}" for n in names)
        print(f"  repetition {i + 1}/{repeats}: {row} samples/s", flush=True)

    def per_rep(a: str, b: str, f: Callable[[float, float], float]) -> list[float]:
        return [f(x, y) for x, y in zip(results[a], results[b], strict=True)]

    print(f"\nsteady-state samples/s, median [min..max] over {repeats} repetitions:")
    print(
        f"  {'tutorial-style baseline (W&B offline, run.watch)':52s} {spread(results['baseline'])}"
    )
    for amp in amps:
        for who in ("disabled", "run.watch", "watcher"):
            label = f"trainjob {amp:4s} {who:9s} " + (
                "(WANDB_MODE=disabled)" if who == "disabled" else "(W&B offline)"
            )
            print(f"  {label:52s} {spread(results[f'{who} {amp}'])}")
    print("ratios and overheads (median [min..max] of per-repetition values):")
    for amp in amps:
        ratio = per_rep(f"watcher {amp}", "baseline", lambda x, y: x / y)
        print(f"  trainjob {amp} watcher / baseline: {spread(ratio, '{:.2f}')}x")
        for who in ("run.watch", "watcher"):
            cost = per_rep(f"{who} {amp}", f"disabled {amp}", lambda x, y: 100 * (1 - x / y))
            print(
                f"  tracking overhead {amp} {who:9s} (offline vs disabled): "
                f"{spread(cost, '{:+.1f}')}%  (goal <= 3%)"
            )
    if "none" in amps and "bf16" in amps:
        speedup = per_rep("watcher bf16", "watcher none", lambda x, y: x / y)
        print(f"  bf16 / float32 (watcher): {spread(speedup, '{:.2f}')}x")
    return statistics.median(results["baseline"])


# --- how far the hardware lets trainjob go ------------------------------------------------------


def step_flops(batch: int, kernels: tuple[int, int] = (16, 32), classes: int = 10) -> dict:
    """Multiply-add FLOPs (2 per MAC) of one training step of the tutorial's ConvNet, per layer:
    forward, input gradient (not for conv1: the images need none) and weight gradient."""
    k1, k2 = kernels
    conv1 = 2 * batch * 28 * 28 * k1 * 1 * 25  # 28x28 outputs, 5x5 window, 1 input channel
    conv2 = 2 * batch * 14 * 14 * k2 * k1 * 25
    fc = 2 * batch * 7 * 7 * k2 * classes
    return {"conv1": 2 * conv1, "conv2": 3 * conv2, "fc": 3 * fc}


def ceiling(root: Path, baseline: float | None) -> None:
    """The machine's float32 matrix-multiply rate (what convolutions lower to) against the
    FLOPs of a training step, and where trainjob's step time goes (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(ROOT / "src"))
    from trainjob import data, runtime
    from trainjob.model import ConvNet
    from trainjob.train import LoopConfig, make_optimizer, train_step

    threads = runtime.configure(0, torch.device("cpu"))
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    rates = []
    for _ in range(12):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * 1024**3 / (time.perf_counter() - start) / 1e9)
    gemm = statistics.median(rates[2:])
    batch = TUTORIAL["batch_size"]
    flops = step_flops(batch)
    per_sample = sum(flops.values()) / batch
    bound = gemm * 1e9 / per_sample
    print(f"\nceiling: float32 1024^3 matrix multiply on {threads} threads: {gemm:.0f} GFLOP/s")
    print(
        f"  one training step = {sum(flops.values()) / 1e9:.2f} GFLOP per batch of {batch} "
        f"({per_sample / 1e6:.1f} MFLOP/sample); all of it at that rate, nothing else costing "
        f"anything: {bound:,.0f} samples/s"
    )
    if baseline:
        print(
            f"  3x the baseline ({3 * baseline:,.0f} samples/s) needs {3 * baseline / bound:.0%} "
            f"of that bound end to end; the bound itself is {bound / baseline:.1f}x the baseline"
        )

    split = data.load("MNIST", root, 5).train
    torch.manual_seed(0)
    model = ConvNet(TUTORIAL["kernels"], TUTORIAL["classes"]).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TUTORIAL["learning_rate"])
    criterion = torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(split))
    cfg = LoopConfig(epochs=1, batch_size=batch, log_every=10**9, seed=0, progress_bar=False)

    def step(i: int) -> None:  # the loop's own step (train.py), without its logging
        idx = order[(i % 90) * batch : (i % 90 + 1) * batch]
        train_step(model, optimizer, criterion, split, idx, cfg)
        optimizer.zero_grad(set_to_none=True)

    for i in range(15):
        step(i)
    steps = 40
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    step_ms = (time.perf_counter() - start) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(steps):
            step(i)
    groups: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        shapes = str(event.input_shapes)
        if event.key in ("aten::mkldnn_convolution", "aten::convolution_backward"):
            layer = "conv1" if "[16, 1, 5, 5]" in shapes else "conv2"
            label = f"{layer} {'forward' if 'mkldnn' in event.key else 'backward'}"
        elif "pool" in event.key or "threshold" in event.key or "clamp" in event.key:
            label = "max-pool + ReLU (forward, backward)"
        elif event.key == "aten::fill_":
            label = "zero-filling (max-pool backward)"
        else:
            label = "everything else (Adam, fc, loss, batch gather)"
        groups[label] = groups.get(label, 0.0) + event.self_cpu_time_total / 1e3 / steps
    total = sum(groups.values())
    print(
        f"  trainjob's step: {step_ms:.1f} ms ({batch / step_ms * 1e3:,.0f} samples/s); "
        "under torch.profiler, self time per step:"
    )
    work = {"conv1 forward": flops["conv1"] / 2, "conv1 backward": flops["conv1"] / 2}
    work |= {"conv2 forward": flops["conv2"] / 3, "conv2 backward": 2 * flops["conv2"] / 3}
    for label, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        rate = ""
        if label in work:
            gflops = work[label] / (ms / 1e3) / 1e9
            rate = f"  {gflops:5.0f} GFLOP/s = {gflops / gemm:4.0%} of the ceiling"
        print(f"    {label:48s} {ms:6.2f} ms {ms / total:4.0%}{rate}")


def watch_cost(repeats: int = 30) -> None:
    """The Python/CPU cost of one watch firing (all 12 tensors of the tutorial's ConvNet) with
    W&B's ``log_tensor_stats`` and with trainjob's watcher, and of turning one row's histograms
    into ``wandb.Histogram`` s: what decides whether packaging belongs off the training thread."""
    import torch
    import wandb

    sys.path.insert(0, str(ROOT / "src"))
    from trainjob.model import ConvNet
    from trainjob.tracking import run as tracking
    from trainjob.tracking import watch

    torch.manual_seed(0)
    model = ConvNet(TUTORIAL["kernels"], TUTORIAL["classes"])
    tensors = [p.detach() for p in model.parameters()] * 2  # weights and same-shaped "grads"
    with tempfile.TemporaryDirectory() as name:
        run = wandb.init(mode="offline", dir=name, settings=wandb.Settings(x_disable_viewer=True))
        history = run._torch

        def theirs() -> None:
            for i, t in enumerate(tensors):
                history.log_tensor_stats(t, f"k{i}")

        watcher = watch.Watcher(model, "all", 1)

        def ours() -> None:  # on the CPU: watch.cpu_stats
            for i, t in enumerate(tensors):
                watcher._record(i, t)

        def device_route() -> None:  # what a GPU runs, here on the CPU
            for t in tensors:
                watch.tensor_stats(t)

        ours()
        filled = watcher.buffer.clone()
        found = watcher.collect()

        def row() -> None:
            watcher.buffer.copy_(filled)
            watcher.pending = True
            assert len(tracking.package(watcher.collect())) == len(tensors)

        def package() -> None:
            tracking.package(found)

        timings = {}
        for label, fn in (
            ("W&B log_tensor_stats, one firing (12 tensors)", theirs),
            ("trainjob watcher, one firing: CPU route (cpu_stats)", ours),
            ("  the device route (tensor_stats) on the same tensors", device_route),
            ("trainjob watcher, one row: host copy + wandb.Histogram x12", row),
            ("  of which wandb.Histogram x12 from lists", package),
        ):
            fn()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - start) * 1e3)
            timings[label] = samples
        run.finish()
    print("\nwatch cost on the CPU, ms, median [min..max]:")
    for label, samples in timings.items():
        print(f"  {label:60s} {spread(samples, '{:.2f}')}")


# --- where the wall time of one short job goes --------------------------------------------------

PHASES = [  # (module file, function) in trainjob, timed with cProfile's cumulative time
    ("settings.py", "load_settings", "settings (pydantic)"),
    ("data.py", "load", "data: read + slice"),
    ("tracking/run.py", "start", "wandb.init (offline)"),
    ("tracking/run.py", "watch", "run.watch"),
    ("train.py", "train", "train (1 epoch)"),
    ("train.py", "evaluate", "evaluate"),
    ("export.py", "export_onnx", "ONNX export"),
    ("export.py", "check_onnx", "ONNX check + onnxruntime"),
    ("tracking/run.py", "save_model", "save model + artifact"),
    ("tracking/run.py", "finish", "run.finish"),
]


def profile_worker(argv: list[str], out: str) -> None:
    """Run ``python -m trainjob ARGV`` under cProfile; write {phase: seconds} to ``out``."""
    import cProfile
    import pstats

    from trainjob.__main__ import main as trainjob_main  # not cli(): its os._exit ends us too

    profile = cProfile.Profile()
    sys.argv = ["trainjob", *argv]
    profile.enable()
    code = trainjob_main(argv)
    profile.disable()
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    phases = {}
    for file, func, label in PHASES:
        suffix = f"trainjob/{file}"
        phases[label] = sum(
            v[3] for (f, _, name), v in stats.items() if name == func and f.endswith(suffix)
        )
    Path(out).write_text(json.dumps({"code": code, "phases": phases}))


def import_seconds(modules: list[str]) -> dict[str, float]:
    """Cold-ish import cost of each package alone, in a fresh interpreter each."""
    seconds = {}
    for module in modules:
        code = f"import time; t = time.perf_counter(); import {module}; "
        code += "print(time.perf_counter() - t)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        seconds[module] = float(out.stdout.strip() or "nan")
    return seconds


def timed_job(command: list[str], argv: list[str], work: Path, exporter: str) -> tuple[float, int]:
    """Wall seconds and exit status of one ``python COMMAND ARGV`` job in the fresh folder
    ``work`` (W&B offline, the given ONNX exporter)."""
    work.mkdir()
    env = child_env(work, "offline") | {"TRAINJOB_ONNX_EXPORTER": exporter}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command, *argv], env=env, cwd=work, capture_output=True)
    return time.perf_counter() - start, done.returncode


def exit_cost(argv: list[str], tmp: Path, repeats: int = 3) -> None:
    """``python -m trainjob`` (its quick exit: atexit handlers, then ``os._exit``) against the
    same ``main()`` ended by Python's normal exit (interpreter teardown), interleaved."""
    normal = "import sys; from trainjob.__main__ import main; sys.exit(main())"
    commands = {"quick": ["-m", "trainjob"], "normal": ["-c", normal]}
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for rep in range(repeats):
        for name, command in commands.items():
            wall, code = timed_job(command, argv, tmp / f"exit-{name}-{rep}", "torchscript")
            walls[name].append(wall)
            if code != 0:
                print(f"  exit comparison: the {name} run failed (exit {code})")
                return
    quick, normal_wall = statistics.median(walls["quick"]), statistics.median(walls["normal"])
    print(
        f"  process wall, torchscript, quick exit {quick:.1f} s vs normal exit {normal_wall:.1f} s "
        f"(median of {repeats}): {normal_wall - quick:.1f} s saved, "
        f"ratio {normal_wall / quick:.2f}x"
    )


def breakdown(root: Path, tmp: Path) -> None:
    print("\nwall time of `python -m trainjob --epochs 1` (tutorial settings, W&B offline):")
    argv = ["--data_dir", str(root), "--epochs", "1", "--data_slice", "5"]
    for exporter in ("dynamo", "torchscript"):
        wall, code = timed_job(["-m", "trainjob"], argv, tmp / f"wall-{exporter}", exporter)
        print(f"  process wall, onnx_exporter={exporter}: {wall:.1f} s (exit {code})")
    exit_cost(argv, tmp)
    work = tmp / "profile"
    work.mkdir()
    env = child_env(work, "offline") | {"TRAINJOB_ONNX_EXPORTER": "dynamo"}
    result = work / "phases.json"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--profile", str(result), "--", *argv],
        env=env,
        cwd=work,
        capture_output=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if not result.exists():
        print(f"  the cProfile run wrote no phases ({result}); skipped")
        return
    phases = json.loads(result.read_text())["phases"]
    print(f"  under cProfile (dynamo), {wall:.1f} s in all; cumulative seconds per phase:")
    for label, seconds in phases.items():
        print(f"    {label:28s} {seconds:6.2f}")
    rest = wall - sum(phases.values())
    print(f"    {'interpreter, imports, exit':28s} {rest:6.2f}  (the remainder)")
    print("  import cost of each package alone (fresh interpreter, seconds):")
    modules = ["torch", "torchvision", "wandb", "pydantic_settings", "onnx", "onnxruntime"]
    for module, seconds in import_seconds(modules).items():
        print(f"    {module:28s} {seconds:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with the four MNIST *-ubyte.gz files")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (first = warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions")
    parser.add_argument(
        "--amp",
        default="none,bf16",
        help="precisions to compare, comma-separated (none = float32, bf16 = CPU autocast)",
    )
    parser.add_argument("--watch-cost", action="store_true", help="only: cost of a watch firing")
    parser.add_argument("--breakdown", action="store_true", help="also break down a 1-epoch job")
    parser.add_argument("--breakdown-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", action="store_true", help="also: the machine's FLOP bound")
    parser.add_argument("--ceiling-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the baseline
    parser.add_argument("--profile", help=argparse.SUPPRESS)  # internal: profile one job
    args, rest = parser.parse_known_args()
    if args.worker:
        print(json.dumps(tutorial(args.worker, args.epochs)))
        return
    if args.profile:
        profile_worker([a for a in rest if a != "--"], args.profile)
        return
    if args.watch_cost:
        print(f"hardware: {hardware()}")
        watch_cost()
        return
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    source = find_data(args.data)
    print(f"hardware: {hardware()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"config: MNIST [::5] from {source}, ConvNet{tuple(TUTORIAL['kernels'])}, "
        f"batch {TUTORIAL['batch_size']}, Adam lr {TUTORIAL['learning_rate']}, "
        f"{args.epochs} epochs (first = warm-up), {args.repeats} repetitions",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="trainjob-bench-") as name:
        tmp = Path(name)
        root = stage(source, tmp / "data")
        baseline = None
        if not args.breakdown_only and not args.ceiling_only:
            amps = [a.strip() for a in args.amp.split(",") if a.strip()]
            baseline = compare(root, args.epochs, args.repeats, tmp, amps)
        if args.ceiling or args.ceiling_only:
            ceiling(root, baseline)
        if args.breakdown or args.breakdown_only:
            breakdown(root, tmp)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
