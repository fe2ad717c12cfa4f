"""``train/loss_mean`` (a metric accumulated on the device): the mean batch loss over each
log interval, summed on the device with no sync, carried by checkpoints so that a resumed
interval logs the same mean as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import Interrupt, SaveAndStop

from trainjob import data
from trainjob.model import ConvNet
from trainjob.train import LoopConfig, Report, make_optimizer, train


class Rows:
    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}

    def log(self, metrics, step: int) -> None:
        self.rows[step] = dict(metrics)


def _fresh() -> tuple[ConvNet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = ConvNet([8, 16], 10)
    return model, make_optimizer(model, 0.005)


def _cfg(log_every: int) -> LoopConfig:
    return LoopConfig(epochs=2, batch_size=48, log_every=log_every, seed=0, progress_bar=False)


@pytest.fixture
def split(tiny_data: Path) -> data.Split:
    return data.load("MNIST", tiny_data, data_slice=1).train  # 512 / 48: 11 batches, 1 partial


def test_loss_mean_is_the_mean_of_the_intervals_batch_losses(split: data.Split) -> None:
    every_step = Rows()
    model, optimizer = _fresh()
    train(model, optimizer, torch.nn.CrossEntropyLoss(), split, _cfg(1), Report(every_step))
    losses = [row["loss"] for _, row in sorted(every_step.rows.items())]
    assert len(losses) == 22
    for row in every_step.rows.values():
        assert row["train/loss_mean"] == pytest.approx(row["loss"], rel=1e-6)

    every_4 = Rows()
    model, optimizer = _fresh()
    train(model, optimizer, torch.nn.CrossEntropyLoss(), split, _cfg(4), Report(every_4))
    means = [row["train/loss_mean"] for _, row in sorted(every_4.rows.items())]
    # the same training (logging never changes it), so the same losses, in windows of 4 that
    # run across the epoch boundary (step 11 -> 12)
    expected = [sum(losses[i : i + 4]) / 4 for i in range(0, 20, 4)]
    assert means == pytest.approx(expected, rel=1e-5)
    assert len(set(means)) == len(means)  # each its own window, not a constant


def test_loss_mean_of_a_resumed_interval_equals_the_uninterrupted_one(split: data.Split) -> None:
    uninterrupted = Rows()
    model, optimizer = _fresh()
    train(model, optimizer, torch.nn.CrossEntropyLoss(), split, _cfg(4), Report(uninterrupted))

    before, after = Rows(), Rows()
    model, optimizer = _fresh()
    stop = SaveAndStop(model, optimizer, at=14)  # epoch 1, mid-interval (rows at 12 and 16)
    with pytest.raises(Interrupt):
        train(
            model,
            optimizer,
            torch.nn.CrossEntropyLoss(),
            split,
            _cfg(4),
            Report(before, hooks=[stop]),
        )
    assert stop.state()["progress"]["loss_sum"] > 0  # two batch losses of the interval
    model, optimizer = _fresh()
    progress = stop.resume(model, optimizer)
    train(model, optimizer, torch.nn.CrossEntropyLoss(), split, _cfg(4), Report(after, progress))
    assert _values({**before.rows, **after.rows}) == _values(uninterrupted.rows)  # bit-exact


def _values(rows: dict[int, dict[str, float]]) -> dict[int, tuple[float, ...]]:
    """The rows without their timing (perf/samples_per_s)."""
    return {s: (r["epoch"], r["loss"], r["train/loss_mean"]) for s, r in rows.items()}
