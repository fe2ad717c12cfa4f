"""trainjob on one CUDA GPU: (a) samples/s against a tutorial-style loop on the same GPU and
config, (b) time to 99% mean test accuracy over 5 seeds on full MNIST with the preset
``presets/fast-h100.env`` (steady state: warm-up excluded), (c) tracking overhead (W&B offline
vs disabled) or "skipped", (d) GPU, torch and CUDA versions. Under 5 minutes on an H100.

    PYTHONPATH=src python bench/gpu.py [--data DIR]   # DIR: the four MNIST *-ubyte.gz files
    PYTHONPATH=src python bench/gpu.py --cpu-smoke    # the same code, CPU, tiny synthetic data

Without CUDA (and without ``--cpu-smoke``) it prints one line saying so and exits 0.

It imports only torch, torchvision and trainjob's settings-free modules (data, model, train,
runtime), so it runs where wandb and pydantic-settings are missing (e.g. a bare Python with
torch); (c) then reports "skipped". Timings are CUDA-synchronized; every variant runs once
untimed first (cuDNN autotuning, ``torch.compile``), and figures are medians with ranges.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import statistics
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

from cpu import RAW, TUTORIAL, stage, tutorial  # noqa: E402  (the baseline, shared with bench/cpu.py)

from trainjob import data, runtime  # noqa: E402
from trainjob.model import ConvNet  # noqa: E402
from trainjob.train import (  # noqa: E402
    Hook,
    LoopConfig,
    LoopStats,
    Report,
    evaluate,
    make_optimizer,
    train,
)

PRESET = ROOT / "presets" / "fast-h100.env"
TARGET = 0.99
SEEDS = 5


class NullTracker:
    def log(self, metrics: Mapping[str, float | int], step: int) -> None:
        return None


def read_preset(path: Path) -> dict[str, str]:
    """``TRAINJOB_X=value`` lines (the ``docker run --env-file`` format) -> {x: value}."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.removeprefix("TRAINJOB_").lower()] = value.strip()
    return values


def flag(values: Mapping[str, str], key: str, default: bool) -> bool:
    return values.get(key, str(default)).lower() in ("1", "true", "yes", "on")


# --- data ------------------------------------------------------------------------------------


def find_data(arg: str | None) -> Path | None:
    candidates = [arg, os.environ.get("MNIST_TEST_DIR"), str(ROOT / "data")]
    candidates += [str(p / "shared" / "data" / "mnist") for p in (ROOT.parent, ROOT.parents[1])]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if all((path / f"{n}.gz").is_file() or (path / "MNIST" / "raw" / n).is_file() for n in RAW):
            return path
    return None


def synthetic_data(target: Path, n_train: int = 640, n_test: int = 256) -> Path:
    """Tiny learnable IDX files (class k = a bright bar at column 2 + 2.5k) for --cpu-smoke."""
    target.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for (images_name, labels_name), n in ((RAW[:2], n_train), (RAW[2:], n_test)):
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
        for i, k in enumerate(labels.tolist()):
            images[i, 4:24, 2 + int(2.5 * k) : 5 + int(2.5 * k)] = 230
        with gzip.open(target / f"{images_name}.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.numpy().tobytes())
        with gzip.open(target / f"{labels_name}.gz", "wb") as fh:
            fh.write(struct.pack(">II", 0x801, n) + labels.numpy().tobytes())
    return target


# --- trainjob's loop ---------------------------------------------------------------------------


class Trainer:
    """trainjob's training path (as ``job.run`` wires it) on data already on the device; one
    model reused across seeds (re-initialised in place), so compiled graphs are reused."""

    def __init__(self, split: data.Split, device: torch.device, compile_: bool, cl: bool) -> None:
        self.split, self.device, self.cl = split, device, cl
        self.model = ConvNet(TUTORIAL["kernels"], TUTORIAL["classes"]).to(device)
        if cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.run_model = torch.compile(self.model) if compile_ else self.model

    def run(
        self,
        seed: int,
        cfg: LoopConfig,
        lr: float,
        tracker=None,
        hooks: Sequence[Hook] = (),
        watcher=None,
    ) -> tuple[float, LoopStats]:
        torch.manual_seed(seed)  # the same initial weights as `trainjob --seed SEED`
        fresh = ConvNet(TUTORIAL["kernels"], TUTORIAL["classes"]).state_dict()
        self.model.load_state_dict(fresh)
        optimizer = make_optimizer(self.model, lr)
        stats = LoopStats()
        criterion = torch.nn.CrossEntropyLoss()
        sync(self.device)
        start = time.perf_counter()
        train(
            self.run_model,
            optimizer,
            criterion,
            self.split,
            cfg,
            Report(tracker or NullTracker(), hooks=hooks, stats=stats, watcher=watcher),
        )
        sync(self.device)
        return time.perf_counter() - start, stats

    def accuracy(self, test: data.Split, bf16: bool) -> float:
        return evaluate(self.run_model, test, self.cl, bf16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{fmt.format(med)} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


# --- the four parts --------------------------------------------------------------------------


def part_a(root: Path, device: torch.device, epochs: int, repeats: int) -> None:
    """Tutorial config ([::5], batch 128, lr 0.005), tracking off on both sides."""
    print(f"(a) samples/s, tutorial config ([::5], batch 128, lr 0.005, {epochs} epochs, first =")
    print("    warm-up), no tracking on either side:")
    baseline = []
    for _ in range(repeats):
        result = tutorial(str(root), epochs, track=False)
        timed = result["epoch_s"][1:]
        baseline.append(result["examples"] * len(timed) / sum(timed))
    runtime.configure(0, device)  # trainjob's settings: cudnn.benchmark, TF32, threads
    split = data.load("MNIST", root, 5, device).train
    trainer = Trainer(split, device, compile_=False, cl=True)
    print(f"    tutorial-style loop (DataLoader, 2 workers):  {spread(baseline, '{:,.0f}')}")
    for label, graphs in (("eager", False), ("cuda_graphs=true", True)):
        cfg = LoopConfig(epochs, TUTORIAL["batch_size"], 25, 0, False, cuda_graphs=graphs)
        ours = [
            trainer.run(0, cfg, TUTORIAL["learning_rate"])[1].steady_samples_per_s()
            for _ in range(repeats)
        ]
        ratio = statistics.median(ours) / statistics.median(baseline)
        print(
            f"    trainjob, data on the device, {label + ':':<17} {spread(ours, '{:,.0f}')}"
            f"  -> {ratio:.1f}x the tutorial (goal >= 10x on an H100)"
        )


def preset_config(preset: Mapping[str, str], seed: int, smoke: bool) -> tuple[LoopConfig, float]:
    cfg = LoopConfig(
        epochs=1 if smoke else int(preset["epochs"]),
        batch_size=int(preset["batch_size"]),
        log_every=int(preset.get("log_every", "25")),
        seed=seed,
        channels_last=flag(preset, "channels_last", True),
        bf16=preset.get("amp", "none") == "bf16",
        progress_bar=False,
        lr_schedule=preset.get("lr_schedule", "none"),
        cuda_graphs=flag(preset, "cuda_graphs", False),
    )
    return cfg, float(preset["learning_rate"])


def time_to_accuracy(
    dataset: data.Data, device: torch.device, preset: Mapping[str, str], seeds: int, smoke: bool
) -> tuple[list[float], list[float], list[float]]:
    """Per seed: train() wall time, the same minus its first-shape (warm-up) steps, accuracy.
    A warm-up run first (seed 1000, not counted): cuDNN autotune, compile."""
    cfg, lr = preset_config(preset, 1000, smoke)
    trainer = Trainer(dataset.train, device, flag(preset, "compile", False), cfg.channels_last)
    warm_s, warm_stats = trainer.run(1000, cfg, lr)
    print(
        f"    warm-up run (not counted): {warm_s:.2f} s, {warm_stats.warmup_s:.2f} s of it in "
        "first-shape steps (cuDNN autotune, compile, graph capture)"
    )
    walls, steady, accuracies = [], [], []
    for seed in range(seeds):
        cfg, lr = preset_config(preset, seed, smoke)
        seconds, stats = trainer.run(seed, cfg, lr)
        walls.append(seconds)
        steady.append(seconds - stats.warmup_s)
        accuracies.append(trainer.accuracy(dataset.test, cfg.bf16))
        print(
            f"    seed {seed}: {seconds:.3f} s ({steady[-1]:.3f} s without its "
            f"{stats.warmup_steps} first-shape steps)  test accuracy {accuracies[-1]:.4f}"
        )
    return walls, steady, accuracies


def part_b(root: Path, device: torch.device, preset: dict[str, str], smoke: bool) -> None:
    cfg, lr = preset_config(preset, 0, smoke)
    data_slice = int(preset.get("data_slice", "1"))
    seeds = 2 if smoke else SEEDS
    print(
        f"(b) time to {TARGET:.0%} mean test accuracy, {seeds} seeds, preset "
        f"{PRESET.relative_to(ROOT)}: batch {cfg.batch_size}, lr {lr} ({cfg.lr_schedule}), "
        f"{cfg.epochs} epochs, amp {preset.get('amp', 'none')}, cuda_graphs {cfg.cuda_graphs}, "
        f"compile {flag(preset, 'compile', False)}, data_slice {data_slice}:"
    )
    dataset = data.load("MNIST", root, data_slice, device)
    walls, steady, accuracies = time_to_accuracy(dataset, device, preset, seeds, smoke)
    mean = statistics.fmean(accuracies)
    verdict = "reached" if mean >= TARGET else "NOT reached"
    print(f"    training time, train() wall: {spread(walls, '{:.3f}')} s")
    print(f"    training time, steady state: {spread(steady, '{:.3f}')} s (goal <= 0.5 s)")
    print(
        f"    test accuracy: mean {mean:.4f}, range {min(accuracies):.4f}..{max(accuracies):.4f}"
        f" -> {TARGET:.0%} {verdict}"
    )


VARIANTS: dict[str, dict[str, str]] = {
    "preset": {},
    "eager (cuda_graphs off)": {"cuda_graphs": "false"},
    "amp bf16": {"amp": "bf16"},
    "channels_last off": {"channels_last": "false"},
    "batch 1024, lr 0.04": {"batch_size": "1024", "learning_rate": "0.04"},
    "3 epochs": {"epochs": "3"},
    "compile": {"compile": "true"},
}


def part_e(root: Path, device: torch.device, preset: dict[str, str], smoke: bool) -> None:
    """Optional (--variants): the preset with one knob changed, 2 seeds each, for tuning it."""
    print("(e) preset variants, 2 seeds each (steady-state seconds, mean accuracy):")
    dataset = data.load("MNIST", root, int(preset.get("data_slice", "1")), device)
    for name, change in VARIANTS.items():
        started = time.perf_counter()
        _, steady, accuracies = time_to_accuracy(dataset, device, {**preset, **change}, 2, smoke)
        print(
            f"    {name:<26} {statistics.fmean(steady):.3f} s  accuracy "
            f"{statistics.fmean(accuracies):.4f}  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def part_c(root: Path, device: torch.device, epochs: int, tmp: Path, smoke: bool) -> None:
    missing = [m for m in ("wandb", "pydantic_settings") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"(c) tracking overhead: skipped ({', '.join(missing)} not importable here)")
        return
    from trainjob.settings import Settings
    from trainjob.tracking import run as tracking
    from trainjob.tracking.watch import Watcher

    os.environ.update(WANDB_DIR=str(tmp), WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp / ".c"))
    settings = Settings(epochs=epochs, data_dir=root, output_dir=tmp / "outputs")
    split = data.load("MNIST", root, settings.data_slice, device).train
    variants = [  # (label, W&B mode, watcher, cuda_graphs); W&B's hooks cannot run in a graph
        ("eager, disabled", "disabled", None, False),
        ("eager, W&B run.watch", "offline", "wandb", False),
        ("eager, trainjob watcher", "offline", "trainjob", False),
        ("graphs, disabled", "disabled", None, True),
        ("graphs, trainjob watcher", "offline", "trainjob", True),
    ]
    rates: dict[str, list[float]] = {label: [] for label, *_ in variants}
    for _ in range(1 if smoke else 2):  # interleaved repetitions; the median counts
        for label, mode, who, graphs in variants:
            os.environ["WANDB_MODE"] = mode
            cfg = LoopConfig(
                epochs,
                settings.batch_size,
                settings.log_every,
                0,
                progress_bar=False,
                cuda_graphs=graphs,
            )
            trainer = Trainer(split, device, compile_=False, cl=True)  # watch() once per model
            tracker = tracking.start(settings, {"bench": "gpu"})
            watcher = None
            if who == "trainjob":
                watcher = Watcher(trainer.model, "all", settings.watch_freq)
            if who is not None:
                tracker.watch(
                    trainer.model, torch.nn.CrossEntropyLoss(), "all", settings.watch_freq, watcher
                )
            _, stats = trainer.run(0, cfg, settings.learning_rate, tracker, watcher=watcher)
            tracker.finish()
            rates[label].append(stats.steady_samples_per_s())
    median = {label: statistics.median(values) for label, values in rates.items()}
    print(f"(c) tracking overhead, tutorial config, watch all every {settings.watch_freq} steps:")
    for label, value in median.items():
        base = median[f"{label.split(',')[0]}, disabled"]
        print(f"    {label:26s} {value:>10,.0f} samples/s  {100 * (1 - value / base):+6.1f}%")


def versions(device: torch.device) -> str:
    text = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    text += f", cuDNN {torch.backends.cudnn.version()}, Python {sys.version.split()[0]}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gib = props.total_memory / 2**30
        text = f"{props.name} ({gib:.0f} GiB, sm_{props.major}{props.minor}), " + text
    else:
        text = f"CPU smoke run ({os.cpu_count()} CPUs), " + text
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with the four MNIST *-ubyte.gz files")
    parser.add_argument("--cpu-smoke", action="store_true", help="exercise the code on the CPU")
    parser.add_argument("--variants", action="store_true", help="also (e): preset variants")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            f"bench/gpu.py: no CUDA device here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); nothing to measure. Run it on a GPU machine, or pass "
            "--cpu-smoke to exercise the code on the CPU."
        )
        return 0
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    started = time.perf_counter()
    print(f"(d) {versions(device)}", flush=True)
    preset = read_preset(PRESET)
    with tempfile.TemporaryDirectory(prefix="trainjob-gpu-bench-") as name:
        tmp = Path(name)
        if args.cpu_smoke:
            source: Path | None = synthetic_data(tmp / "synthetic")
        else:
            source = find_data(args.data)
            if source is None:
                print("bench/gpu.py: real MNIST not found; pass --data DIR (*-ubyte.gz files)")
                return 3
        # Unpacked once into root/MNIST/raw, torchvision's layout: the tutorial baseline's
        # torchvision.datasets.MNIST and trainjob's data.load both read it there.
        root = stage(source, tmp / "data")
        smoke = args.cpu_smoke
        parts = [
            lambda: part_a(root, device, epochs=2 if smoke else 3, repeats=1 if smoke else 3),
            lambda: part_b(root, device, preset, smoke),
            lambda: part_c(root, device, 2 if smoke else 3, tmp, smoke),
        ]
        if args.variants:
            parts.append(lambda: part_e(root, device, preset, smoke))
        failed = 0
        for part in parts:
            try:  # one part failing (on a machine seen once) must not cost the others' figures
                part()
            except Exception:
                failed += 1
                traceback.print_exc()
            sys.stdout.flush()
    print(
        f"done in {time.perf_counter() - started:.0f} s"
        + (f", {failed} part(s) FAILED" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
