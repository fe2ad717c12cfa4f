"""Diverging training: a non-finite loss stops the run at once, the W&B run is
marked failed (its exit record holds 4) and the job exits 4.

Adam at the largest allowed learning rate (10) does not produce a NaN on this data within
hundreds of steps (measured), so the tests make the model's output non-finite from a chosen
step on: the loop, the tracker and the entrypoint around it are the real ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import SRC, clean_env, offline_runs, read_offline_run, run_cli

from trainjob import data
from trainjob.errors import DivergedError
from trainjob.model import ConvNet
from trainjob.tracking.sync import hint
from trainjob.train import Hook, LoopConfig, Progress, Report, train


class PoisonedNet(ConvNet):
    """The tutorial's ConvNet whose training output becomes ``value`` from call ``at`` on."""

    def __init__(self, at: int, value: float = math.nan) -> None:
        super().__init__([8, 16], 10)
        self.at, self.value, self.calls = at, value, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.at:
                return out * self.value
        return out


class Recorder(Hook):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def after_step(self, progress: Progress) -> None:
        self.steps.append(progress.step)  # where a checkpoint could be written


class Logged:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def log(self, metrics, step: int) -> None:
        self.steps.append(step)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_cpu_stops_at_the_first_bad_step(value: float, tiny_data: Path, tmp_path: Path) -> None:
    loaded = data.load("MNIST", tiny_data, data_slice=1)
    model, hooks, tracker = PoisonedNet(at=7, value=value), Recorder(), Logged()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    cfg = LoopConfig(epochs=3, batch_size=32, log_every=5, seed=0, progress_bar=False)
    progress = Progress()
    with pytest.raises(DivergedError) as err:
        train(
            model,
            optimizer,
            torch.nn.CrossEntropyLoss(),
            loaded.train,
            cfg,
            Report(tracker, progress, hooks=[hooks]),
        )
    assert progress.step == 7  # at once, not at the next log interval (step 10)
    assert hooks.steps == [1, 2, 3, 4, 5, 6]  # no hook (checkpoint) ever saw the bad weights
    assert tracker.steps == [5 * 32]  # the good interval was logged
    assert "by step 7 (epoch 0)" in str(err.value) and "lower TRAINJOB_LEARNING_RATE" in str(
        err.value
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stops_within_one_log_interval(tiny_data: Path) -> None:
    """On CUDA the check is a device-side flag read at log intervals (no per-step sync)."""
    device = torch.device("cuda")
    loaded = data.load("MNIST", tiny_data, data_slice=1, device=device)
    model = PoisonedNet(at=7).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    cfg = LoopConfig(epochs=3, batch_size=32, log_every=5, seed=0, progress_bar=False)
    progress = Progress()
    with pytest.raises(DivergedError):
        train(
            model,
            optimizer,
            torch.nn.CrossEntropyLoss(),
            loaded.train,
            cfg,
            Report(Logged(), progress),
        )
    assert progress.step == 10  # the first log interval after the bad step 7


# A real job whose model turns NaN at training call AT: everything else is the real entrypoint.
_POISONED_JOB = """
import math, sys
from trainjob import model
at, forward, calls = int(sys.argv[1]), model.ConvNet.forward, [0]
def poisoned(self, x):
    out = forward(self, x)
    if self.training:
        calls[0] += 1
        if calls[0] >= at:
            return out * math.nan
    return out
model.ConvNet.forward = poisoned
from trainjob.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def test_diverging_job_exits_4_and_marks_the_run_failed(tiny_data: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    env = clean_env(
        tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), TRAINJOB_LOG_EVERY="2", PYTHONPATH=str(SRC)
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _POISONED_JOB,
            "11",
            "--epochs=2",
            "--batch_size=64",
            "--data_slice=1",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainjob: error:")]
    assert errors == [
        "trainjob: error: loss became nan by step 11 (epoch 1); the run is marked failed: "
        "lower TRAINJOB_LEARNING_RATE or check the data"
    ]
    (run_dir,) = offline_runs(tmp_path)
    run = read_offline_run(run_dir)
    assert run.exit_code == 4  # W&B shows the run as failed
    assert [h["_step"] for h in run.history if "loss" in h] == [128, 256, 384, 512, 640]
    assert all(math.isfinite(h["loss"]) for h in run.history if "loss" in h)
    # No final evaluation: the only test_accuracy is the per-epoch one (the sweep metric) of
    # the epoch before the divergence, which W&B's summary keeps as the last logged value.
    accuracy = [h for h in run.history if "test_accuracy" in h]
    assert [h["_step"] for h in accuracy] == [513]  # epoch 0's 8 steps x 64, + 1
    assert run.summary.get("test_accuracy") == accuracy[0]["test_accuracy"]
    assert not (tmp_path / "outputs" / "model.onnx").exists()  # no model from a diverged run
    assert f"upload it with: {hint(run_dir)}\n" in result.stdout  # the failed run too
    # The epoch-0 checkpoint is gone: a rerun with a lower learning rate starts clean instead
    # of being refused for resuming with other settings.
    assert not list((tmp_path / "outputs" / "checkpoints").glob("ckpt-*"))


def test_huge_learning_rate_alone_is_not_divergence(tiny_data: Path, tmp_path: Path) -> None:
    """The largest allowed learning rate trains (badly) without tripping the check: the check
    fires on non-finite losses only, never on merely large ones."""
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), WANDB_MODE="disabled")
    result = run_cli(["--epochs=1", "--learning_rate=10", "--data_slice=2"], env, tmp_path)
    assert result.returncode == 0, result.stderr
