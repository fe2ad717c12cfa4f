"""The speed work keeps the model's function, determinism and imports; the benchmarks run.

No timed asserts: speed is measured by bench/cpu.py and bench/gpu.py, which print ratios.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, clean_env, run_cli

from trainjob import data, runtime
from trainjob.model import ConvNet
from trainjob.train import (
    LoopConfig,
    LoopStats,
    Report,
    evaluate,
    learning_rate_at,
    make_optimizer,
    train,
)

TUTORIAL_KEYS = [
    "layer1.0.weight",
    "layer1.0.bias",
    "layer2.0.weight",
    "layer2.0.bias",
    "fc.weight",
    "fc.bias",
]


class NullTracker:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log(self, metrics, step):
        self.rows.append(dict(metrics))


@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_before_relu_is_bit_identical_to_the_tutorial_order(channels_last: bool) -> None:
    torch.manual_seed(3)
    model = ConvNet()
    x = torch.rand(64, 1, 28, 28)
    x[:, :, :6] = 0  # MNIST-like empty rows: all-equal windows (ties) in the pools
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    results = []
    for forward in (model.forward, model.forward_tutorial_order):
        model.zero_grad()
        out = forward(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        results.append((out.detach().clone(), [p.grad.clone() for p in model.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    assert list(model.state_dict()) == TUTORIAL_KEYS  # checkpoints and ONNX names unchanged


def _train(split: data.Split, seed: int, schedule: str = "none", stats: LoopStats | None = None):
    torch.manual_seed(seed)
    model = ConvNet().to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, 0.005)
    cfg = LoopConfig(
        epochs=2, batch_size=96, log_every=2, seed=seed, progress_bar=False, lr_schedule=schedule
    )
    tracker = NullTracker()
    train(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        split,
        cfg,
        Report(tracker, stats=stats if stats is not None else LoopStats()),
    )
    return model, optimizer, tracker


def test_fused_adam_and_schedule_are_deterministic_and_learn(tiny_data_copy: Path) -> None:
    loaded = data.load("MNIST", tiny_data_copy, data_slice=1)
    for schedule in ("none", "onecycle"):
        a, opt, tracker = _train(loaded.train, 5, schedule)
        b, _, _ = _train(loaded.train, 5, schedule)
        assert opt.param_groups[0]["fused"] is True
        assert all(
            torch.equal(x, y)
            for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )
        assert evaluate(a, loaded.test) > 0.8
        assert tracker.rows
        assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in tracker.rows)


def test_loop_stats_time_epochs_and_warmup(tiny_data_copy: Path) -> None:
    loaded = data.load("MNIST", tiny_data_copy, data_slice=1)
    stats = LoopStats()
    _train(loaded.train, 0, stats=stats)
    # 512 examples in batches of 96: 5 full + 1 partial; the first of each shape is warm-up.
    assert stats.warmup_steps == 2 and stats.warmup_s > 0
    assert [n for n, _ in stats.epochs] == [512 - 96 - 32, 512]
    assert stats.steady_samples_per_s() == pytest.approx(512 / stats.epochs[1][1])


def test_onecycle_schedule_shape() -> None:
    total, peak = 100, 0.01
    lrs = [learning_rate_at(s, total, peak, "onecycle") for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 25)
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 25
    assert all(a <= b for a, b in itertools.pairwise(lrs[:26]))  # rising
    assert all(a >= b for a, b in itertools.pairwise(lrs[25:]))  # then falling
    assert lrs[-1] < peak / 100
    assert {learning_rate_at(s, total, peak, "none") for s in range(total)} == {peak}


def test_allocator_tuning_respects_the_users_malloc_variables(monkeypatch) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert runtime.keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert runtime.keep_freed_memory() is False


def _python(tmp: Path, code: str, **env: str) -> str:
    base = {k: v for k, v in clean_env(tmp).items() if not k.startswith(("OMP_", "GOMP_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_openmp_threads_sleep_unless_the_user_says_otherwise(tmp_path: Path) -> None:
    code = "import trainjob, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _python(tmp_path, code) == "PASSIVE"
    assert _python(tmp_path, code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert _python(tmp_path, code, GOMP_SPINCOUNT="1000") == "None"


def test_loop_modules_need_neither_pydantic_nor_wandb(tmp_path: Path) -> None:
    """bench/gpu.py runs on machines with torch only (the device tool's Python 3.12)."""
    code = (
        "import sys, json; import trainjob.train, trainjob.model, trainjob.data, "
        "trainjob.runtime; print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pydantic', 'pydantic_settings', 'wandb', 'trainjob'))))"
    )
    modules = json.loads(_python(tmp_path, code))
    assert not [m for m in modules if not m.startswith("trainjob")], modules
    assert "trainjob.settings" not in modules and "trainjob.tracking.run" not in modules


def _bench(tmp_path: Path, script: str, *args: str, timeout: float, **env: str):
    """One ``bench/`` script as a user runs it, in a clean environment rooted at ``tmp_path``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_gpu_bench_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    result = _bench(tmp_path, "gpu.py", timeout=120, CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr
    assert "no CUDA device here" in result.stdout
    assert "Traceback" not in result.stderr


def test_gpu_bench_cpu_smoke_runs_every_part(tmp_path: Path) -> None:
    result = _bench(tmp_path, "gpu.py", "--cpu-smoke", timeout=600, CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for part in ("(a) samples/s", "(b) time to 99%", "(c) tracking overhead", "(d) CPU smoke"):
        assert part in out, out
    for mode in ("eager:", "cuda_graphs=true:"):
        assert re.search(rf"{mode}\s+[\d,]+ .*-> [\d.]+x the tutorial", out), out
    assert re.search(r"seed 1: [\d.]+ s", out) and "steady state:" in out, out
    assert "FAILED" not in out and "Traceback" not in result.stderr, result.stderr
    for variant in ("eager, W&B run.watch", "eager, trainjob watcher", "graphs, trainjob watcher"):
        assert re.search(rf"{variant}\s+[\d,]+ samples/s\s+[+-][\d.]+%", out), out


def test_job_reports_steady_throughput_the_way_bench_cpu_reads_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from cpu import STEADY, WALL

    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), WANDB_MODE="disabled")
    result = run_cli(["--epochs=2", "--data_slice=1", "--batch_size=128"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    steady, wall = STEADY.search(result.stdout), WALL.search(result.stdout)
    assert steady and int(steady.group(1)) > 0 and wall, result.stdout


@pytest.mark.parametrize("preset", sorted((ROOT / "presets").glob("*.env")), ids=lambda p: p.name)
def test_presets_are_valid_settings(preset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from trainjob.settings import Settings, load_settings

    for key in list(os.environ):
        if key.startswith("TRAINJOB_"):
            monkeypatch.delenv(key)
    values = {}
    for line in preset.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.startswith("TRAINJOB_") and value == value.strip(), line
            values[key] = value
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = load_settings([])  # unknown TRAINJOB_* names or bad values raise here
    assert settings.epochs == int(values["TRAINJOB_EPOCHS"])
    assert settings.lr_schedule == "onecycle"
    assert Settings.model_fields["lr_schedule"].default == "none"  # the tutorial's default kept


def test_cpu_bench_ceiling_prints_the_bound_and_a_step_profile(
    real_mnist: Path, tmp_path: Path
) -> None:
    """``bench/cpu.py --ceiling``: the FLOP count it divides by is the model's, and every part of
    a step lands in one of its rows (what bench/README.md's "why not 3x" quotes)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from cpu import step_flops

    # by hand: conv1 28*28*16*25 MACs, conv2 14*14*32*16*25, fc 1568*10; x2 FLOPs per MAC;
    # conv1 has no input gradient (2 passes), conv2 and fc have three
    per_sample = 2 * (2 * 313_600 + 3 * 2_508_800 + 3 * 15_680)
    assert sum(step_flops(1).values()) == per_sample
    result = _bench(tmp_path, "cpu.py", "--ceiling-only", "--data", str(real_mnist), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"matrix multiply on \d+ threads: \d+ GFLOP/s", out), out
    assert re.search(r"2\.10 GFLOP per batch of 128 .* [\d,]+ samples/s", out), out
    rows = re.findall(
        r"^    (conv[12] (?:forward|backward)|max-pool|zero-filling|everything)", out, re.M
    )
    assert len(rows) == 7, out


def test_two_process_experiment_merges_the_whole_gradient_and_reports_every_mode(
    real_mnist: Path, tmp_path: Path
) -> None:
    """``bench/cpu_two_process.py`` (the data-parallel experiment bench/README.md quotes): the
    gradient merged from two processes is one process's, and each mode gets a figure."""
    args = ("--data", str(real_mnist), "--epochs", "2", "--repeats", "1", "--data-slice", "50")
    result = _bench(tmp_path, "cpu_two_process.py", *args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    difference = re.search(r"two processes vs one: max relative difference (\S+)", out)
    assert difference and float(difference.group(1)) < 1e-4, out
    for mode in ("one process, 2 threads", "one process, 1 thread", "two processes, 1 thread"):
        assert re.search(rf"^  {mode}.* +[\d,]+ \[", out, re.M), out
    assert re.search(r"two processes / one process with 2 threads: [\d.]+x", out), out


def test_tracking_overhead_bench_reports_each_pair_and_where_the_time_goes(
    real_mnist: Path, tmp_path: Path
) -> None:
    """``bench/tracking_overhead.py`` (the offline-vs-disabled figures bench/README.md quotes):
    both modes run, each pair and the median get a figure, the CPU is named, and the breakdown
    finds the watcher, the log path and wandb-core in the offline job only."""
    args = ("--data", str(real_mnist), "--epochs", "2", "--pairs", "1", "--data-slice", "50")
    result = _bench(tmp_path, "tracking_overhead.py", *args, "--breakdown", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^hardware: .*avx512_bf16 (yes|no), amx_bf16 (yes|no)", out, re.M), out
    assert re.search(r"pair 1/1 .* disabled [\d,]+ offline [\d,]+ -> [+-][\d.]+%", out), out
    assert re.search(r"steady samples/s +[+-][\d.]+ \[.*\]% +\(goal <= 3%\)", out), out
    disabled, offline = out.split("\n  disabled: training loop")[1].split("\n  offline: ")
    for part in ("watcher: parameter hook", "of which the statistics", "wandb-core"):
        assert part in offline and part not in disabled, out
    assert "of which the histograms" in offline, out
