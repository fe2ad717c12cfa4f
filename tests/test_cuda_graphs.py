"""``cuda_graphs``: full-batch steps recorded once as a CUDA graph and replayed.

The CUDA tests run only where a GPU is and skip elsewhere; they and ``bench/gpu.py`` passed on
an NVIDIA H200 and an H100 on 2026-11-27 (bench/results/gpu-*-2026-11-27*.log), before the
watcher's graph path existed. The settings rule and the CPU no-op run everywhere; the watcher's
histograms under graphs are tested in test_watch.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import Interrupt, SaveAndStop, clean_env, run_cli

from trainjob import data, runtime
from trainjob.errors import DivergedError
from trainjob.model import ConvNet
from trainjob.train import Hook, LoopConfig, Progress, Report, evaluate, make_optimizer, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# Seen on an H200 before the fix in GraphedStep: eager steps after a capture synchronizing
# streams because the captured autograd graph was still alive.
no_stream_mismatch = pytest.mark.filterwarnings("error:The AccumulateGrad node")


class NoTracker:
    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []

    def log(self, metrics, step: int) -> None:
        self.rows.append((step, float(metrics["loss"])))


def _train(split: data.Split, device: torch.device, graphs: bool, **loop) -> tuple[list, object]:
    torch.manual_seed(0)
    model = ConvNet([16, 32], 10).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, 0.005)
    cfg = LoopConfig(
        epochs=loop.pop("epochs", 2),
        batch_size=loop.pop("batch_size", 64),
        log_every=5,
        seed=0,
        progress_bar=False,
        cuda_graphs=graphs,
        **loop,
    )
    tracker = NoTracker()
    train(model, optimizer, torch.nn.CrossEntropyLoss(), split, cfg, Report(tracker))
    return [p.detach().float().cpu() for p in model.parameters()], (model, tracker)


def _deterministic(device: torch.device) -> None:
    runtime.configure(0, device)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False  # compare the math, not TF32 rounding
    torch.backends.cudnn.allow_tf32 = False


def _worst_relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).norm() / x.norm()).item() for x, y in zip(a, b, strict=True))


def test_settings_refuse_graphs_only_with_wandbs_watch(tiny_data: Path, tmp_path: Path) -> None:
    """W&B's run.watch hooks cannot run inside a replay: refused (exit 2). trainjob's watcher is
    driven around each replay: accepted (on the CPU, cuda_graphs is a no-op and the job runs)."""
    env = clean_env(
        tmp_path,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_CUDA_GRAPHS="true",
        TRAINJOB_WATCHER="wandb",
    )
    result = run_cli([], env, tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "watch_log='all' is invalid" in lines[0]
    assert "TRAINJOB_WATCHER=wandb needs TRAINJOB_WATCH_LOG=none" in lines[0]
    from trainjob.settings import Settings

    accepted = Settings(cuda_graphs=True, watch_log="all")
    assert accepted.watcher == "trainjob" and accepted.cuda_graphs


def test_graphs_are_a_no_op_on_the_cpu(tiny_data: Path) -> None:
    split = data.load("MNIST", tiny_data, data_slice=1).train
    plain, _ = _train(split, torch.device("cpu"), graphs=False, epochs=1)
    graphed, _ = _train(split, torch.device("cpu"), graphs=True, epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(plain, graphed, strict=True))


@needs_cuda
@no_stream_mismatch
@pytest.mark.parametrize("schedule", ["none", "onecycle"])
def test_graphed_training_matches_eager(tiny_data: Path, schedule: str) -> None:
    """Same start, same batches (7 full batches of 64 and one of 52 per epoch: replays plus an
    eager step), same result: the warm-up steps before the capture are undone and the learning
    rate schedule reaches the replayed optimizer."""
    device = torch.device("cuda")
    _deterministic(device)
    split = data.load("MNIST", tiny_data, data_slice=1, device=device).train
    split = data.Split(split.images[:500], split.labels[:500])  # 7 full batches + 1 of 52
    eager, (_, eager_log) = _train(split, device, False, lr_schedule=schedule)
    graphed, (_, graphed_log) = _train(split, device, True, lr_schedule=schedule)
    # 1.9e-4 was seen on an H200 with cudnn.benchmark on: autotuned (and atomic) kernels differ
    # run to run whatever the graphs do. Deterministic kernels compare the math itself.
    worst = _worst_relative_difference(eager, graphed)
    assert worst < 1e-5, worst
    assert [s for s, _ in eager_log.rows] == [s for s, _ in graphed_log.rows]
    for (_, a), (_, b) in zip(eager_log.rows, graphed_log.rows, strict=True):
        assert math.isclose(a, b, rel_tol=1e-4), (a, b)


class Scaled(ConvNet):
    """The tutorial's net times a device-side factor: a NaN written to it reaches the graph."""

    def __init__(self) -> None:
        super().__init__([16, 32], 10)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class PoisonAt(Hook):
    def __init__(self, model: Scaled, step: int) -> None:
        self.model, self.step = model, step

    def after_step(self, progress: Progress) -> None:
        if progress.step == self.step:
            self.model.scale.fill_(math.nan)


@needs_cuda
def test_graphed_divergence_stops_within_one_log_interval(tiny_data: Path) -> None:
    device = torch.device("cuda")
    split = data.load("MNIST", tiny_data, data_slice=1, device=device).train
    model = Scaled().to(device)
    optimizer = make_optimizer(model, 0.005)
    cfg = LoopConfig(3, 32, 5, 0, progress_bar=False, cuda_graphs=True)
    progress = Progress()
    with pytest.raises(DivergedError):
        train(
            model,
            optimizer,
            torch.nn.CrossEntropyLoss(),
            split,
            cfg,
            Report(NoTracker(), progress, hooks=[PoisonAt(model, 7)]),
        )
    assert progress.step == 10  # NaN from step 8 on, read at the log interval


@needs_cuda
def test_graphed_bf16_learns(tiny_data: Path) -> None:
    device = torch.device("cuda")
    loaded = data.load("MNIST", tiny_data, data_slice=1, device=device)
    _, (model, tracker) = _train(loaded.train, device, True, epochs=4, bf16=True)
    assert tracker.rows and all(math.isfinite(v) for _, v in tracker.rows)
    assert evaluate(model, loaded.test, True, True) > 0.5


def test_optimizer_state_of_a_graphed_run_trains_eagerly(tiny_data: Path) -> None:
    """A checkpoint written during a graphed run holds capturable Adam groups with a tensor lr;
    resumed where graphs are off (or on a CPU, where capturable is refused) it still trains."""
    split = data.load("MNIST", tiny_data, data_slice=1).train
    torch.manual_seed(0)
    model = ConvNet([16, 32], 10)
    optimizer = make_optimizer(model, 0.005)
    for group in optimizer.param_groups:
        group["capturable"], group["lr"] = True, torch.tensor(0.005)
    cfg = LoopConfig(1, 64, 5, 0, progress_bar=False, lr_schedule="onecycle")
    train(model, optimizer, torch.nn.CrossEntropyLoss(), split, cfg, Report(NoTracker()))
    group = optimizer.param_groups[0]
    assert type(group["lr"]) is float and 0 < group["lr"] < 0.005 and not group["capturable"]


@needs_cuda
@no_stream_mismatch
def test_graphed_run_resumed_mid_epoch_matches_an_uninterrupted_one(tiny_data: Path) -> None:
    """Checkpoint of a graphed run (capturable Adam, tensor lr), loaded as checkpoint.py loads
    it (map_location=cpu), continued with graphs: the same weights as never stopping."""
    device = torch.device("cuda")
    _deterministic(device)
    split = data.load("MNIST", tiny_data, data_slice=1, device=device).train
    cfg = LoopConfig(2, 64, 5, 0, progress_bar=False, lr_schedule="onecycle", cuda_graphs=True)
    criterion = torch.nn.CrossEntropyLoss()

    def fresh() -> tuple[ConvNet, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = ConvNet([16, 32], 10).to(device).to(memory_format=torch.channels_last)
        return model, make_optimizer(model, 0.005)

    model, optimizer = fresh()
    train(model, optimizer, criterion, split, cfg, Report(NoTracker()))
    uninterrupted = [p.detach().cpu() for p in model.parameters()]

    model, optimizer = fresh()
    stop = SaveAndStop(model, optimizer, at=11)  # epoch 1, batch 3 of 8
    with pytest.raises(Interrupt):
        train(model, optimizer, criterion, split, cfg, Report(NoTracker(), hooks=[stop]))
    model, optimizer = fresh()
    progress = stop.resume(model, optimizer)
    train(model, optimizer, criterion, split, cfg, Report(NoTracker(), progress))
    resumed = [p.detach().cpu() for p in model.parameters()]
    assert progress.step == 16
    assert _worst_relative_difference(uninterrupted, resumed) < 1e-5
