"""trainjob's watcher (watch.py) against W&B's own ``run.watch``: the same history records.

Two real offline runs of the job with the same seed, one with ``TRAINJOB_WATCHER=wandb`` (W&B's
hooks) and one with trainjob's watcher, read back with W&B's reader (``wandb leet inspect``);
every histogram must match. The CUDA-graph path of the loop runs here on the CPU through a
stand-in for the graph (``EagerReplay``); the CUDA tests compare real graphs with eager runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import clean_env, offline_runs, read_offline_run, run_cli

from trainjob import cuda_graphs, data, train
from trainjob.model import ConvNet
from trainjob.step import accumulate, train_step
from trainjob.tracking import watch
from trainjob.train import LoopConfig, make_optimizer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _histograms(run_dir: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """step -> {key: histogram} of every history row (rows without histograms included)."""
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for item in read_offline_run(run_dir).history:
        step = int(item["_step"])
        assert step not in rows, f"two history rows at step {step}"
        names = [k[: -len("._type")] for k, v in item.items() if k.endswith("._type")]
        rows[step] = {
            name: {"values": item[f"{name}.values"], "bins": item[f"{name}.bins"]}
            for name in names
            if item[f"{name}._type"] == "histogram"
        }
    return rows


def _job(tmp: Path, tiny_data: Path, watcher: str, **extra: str) -> dict[int, dict[str, Any]]:
    env = clean_env(
        tmp,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_EPOCHS="2",
        TRAINJOB_BATCH_SIZE="32",
        TRAINJOB_LOG_EVERY="5",
        TRAINJOB_WATCHER=watcher,
        **extra,
    )
    result = run_cli([], env, tmp, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = offline_runs(tmp)
    return _histograms(run_dir)


def _assert_same(theirs: dict, ours: dict) -> int:
    assert sorted(ours) == sorted(theirs), "different history rows"
    compared = 0
    for step, row in theirs.items():
        assert sorted(ours[step]) == sorted(row), f"different histogram keys at step {step}"
        for key, hist in row.items():
            mine = ours[step][key]
            assert mine["values"] == hist["values"], f"counts differ: {key} at step {step}"
            assert len(mine["bins"]) == len(hist["bins"])
            for a, b in zip(mine["bins"], hist["bins"], strict=True):
                assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), (key, step, a, b)
            compared += 1
    return compared


@pytest.mark.parametrize(("log", "freq"), [("all", "3"), ("parameters", "2")])
def test_watcher_writes_what_run_watch_writes(
    tiny_data: Path, tmp_path: Path, log: str, freq: str
) -> None:
    """Same rows, keys, counts and bin edges, including the row before the first logged one
    and firings in evaluation (forward hooks count every forward call, also those of the ONNX
    check's deep copy of the model; the exporter's copy has no hooks: see export.py)."""
    theirs = _job(
        tmp_path / "wandb", tiny_data, "wandb", TRAINJOB_WATCH_LOG=log, TRAINJOB_WATCH_FREQ=freq
    )
    ours = _job(
        tmp_path / "trainjob",
        tiny_data,
        "trainjob",
        TRAINJOB_WATCH_LOG=log,
        TRAINJOB_WATCH_FREQ=freq,
    )
    compared = _assert_same(theirs, ours)
    # 2 epochs x 16 steps, a row every 5 steps, histograms every 3: every row has them,
    # including W&B's row at step 0 (before the first logged row) and the test_accuracy row.
    # The ConvNet has 6 parameters. Rows 0 (W&B's row before the first logged one) to 800 get
    # 6 gradients and/or 6 weights each; row 960 the weights of the evaluation's forward call
    # (the 33rd call: a firing). The per-epoch test_accuracy row after epoch 1 (step 513)
    # holds the 6 histograms fired after row 480. The final row (1025) has none: the exporter
    # runs a hook-free copy (a job with a cached ONNX template runs no exporter at all, so its
    # histograms must not depend on the cache); the ONNX check's one forward call is no firing.
    if log == "all":
        assert compared == 6 * 12 + 6 and theirs[0] and theirs[513] and not theirs[1025]
    else:  # every 2nd call
        assert compared == 8 * 6 and theirs[513] and not theirs[1025]


class Capture:
    """Receives W&B's own ``log_tensor_stats`` output (``run._log`` of an offline run)."""

    def __init__(self) -> None:
        self.logged: dict[str, Any] = {}

    def __call__(self, data: dict[str, Any], commit: bool | None = None) -> None:
        self.logged.update(data)


EDGE_CASES = {
    "normal": lambda: torch.randn(1000),
    "nan_and_inf": lambda: torch.tensor(
        [1.0, float("nan"), -2.0, float("inf"), 0.5, -float("inf")]
    ),
    "all_equal": lambda: torch.full((7, 3), 0.25),
    "all_equal_but_nan": lambda: torch.tensor([3.0, float("nan"), 3.0]),
    "no_finite_values": lambda: torch.tensor([float("nan"), float("inf")]),
    "empty": lambda: torch.zeros(0),
    "bf16": lambda: torch.randn(300).to(torch.bfloat16),
    "float64": lambda: torch.randn(300, dtype=torch.float64) * 1e-3,
    "integers": lambda: torch.arange(-5, 60),
    "tiny_range": lambda: 1 + torch.rand(500) * 1e-6,
}


def _wandb_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A real offline W&B run whose ``_log`` is captured, and its ``TorchHistory``."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(
        mode="offline", dir=tmp_path, project="t", settings=wandb.Settings(x_disable_viewer=True)
    )
    capture = Capture()
    monkeypatch.setattr(run, "_log", capture)
    return run, capture


def test_statistics_follow_wandbs_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """NaN/inf dropped, all-equal tensors as one bin, no finite values: nothing logged, other
    dtypes through float32: W&B's ``log_tensor_stats`` itself is the reference."""
    from trainjob.tracking.run import package

    torch.manual_seed(0)
    run, capture = _wandb_reference(monkeypatch, tmp_path)
    try:
        for name, make in EDGE_CASES.items():
            tensor = make()
            run._torch.log_tensor_stats(tensor, name)
            ours = package(watch.histograms([name], watch.tensor_stats(tensor)[None]))
            if name in ("no_finite_values", "empty"):
                assert name not in capture.logged and not ours
                continue
            theirs = capture.logged[name]
            assert ours[name].histogram == theirs.histogram, name
            assert ours[name].bins == theirs.bins, name
    finally:
        run.finish()


def test_cpu_route_gives_wandbs_statistics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``cpu_stats`` (the watcher's route on the CPU) against W&B's ``log_tensor_stats`` on the
    edge cases it takes (the others, NaN/inf/empty, go to ``tensor_stats``), and equal to
    ``tensor_stats`` bit for bit on random tensors of every dtype, values on bin edges and
    non-contiguous layouts included."""
    import numpy as np

    from trainjob.tracking.run import package

    run, capture = _wandb_reference(monkeypatch, tmp_path)
    cases = dict(EDGE_CASES)
    cases["signed_zeros"] = lambda: torch.tensor([0.0, -0.0, 1.0, -0.0, 2.0])
    cases["channels_last"] = lambda: torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last)
    try:
        for name, make in cases.items():
            tensor, row = make(), np.zeros(watch._HEAD + watch.BINS)
            run._torch.log_tensor_stats(tensor, name)
            taken = watch.cpu_stats(tensor, row)
            assert taken == (tensor.numel() > 0 and bool(torch.isfinite(tensor.float()).all()))
            if not taken:
                continue
            ours = package(watch.histograms([name], torch.from_numpy(row)[None]))
            assert ours[name].histogram == capture.logged[name].histogram, name
            assert ours[name].bins == capture.logged[name].bins, name
    finally:
        run.finish()
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        tensor = torch.randn(1 + seed * 61, generator=g) * 10.0 ** (seed % 9 - 4) + seed % 7
        tensor = torch.round(tensor * 8) / 8 if seed % 4 == 0 else tensor  # ties on the edges
        dtype = (torch.float32, torch.float64, torch.bfloat16, torch.float16)[seed % 4]
        tensor = tensor.to(dtype)[::2] if seed % 3 == 0 else tensor.to(dtype)
        row = np.zeros(watch._HEAD + watch.BINS)
        if watch.cpu_stats(tensor, row):
            assert torch.equal(torch.from_numpy(row), watch.tensor_stats(tensor)), seed
        else:  # float16 overflow: infinities
            assert watch.tensor_stats(tensor)[2] < tensor.numel(), seed


class RowRecorder:
    """What tracking.Tracker does with a watcher, minus W&B: a row's histograms are collected
    when a higher step is logged (W&B's open row)."""

    def __init__(self, watcher: watch.Watcher) -> None:
        self.watcher, self.open_step = watcher, 0
        self.rows: dict[int, dict[str, tuple[list[float], list[float]]]] = {}

    def log(self, metrics: Any, step: int) -> None:
        if step > self.open_step:
            found = self.watcher.collect()
            if found:
                self.rows[self.open_step] = {h.key: (h.counts, h.edges) for h in found}
            self.open_step = step


def _train_watched(split: data.Split, device: torch.device, graphs: bool, freq: int = 3):
    torch.manual_seed(0)
    model = ConvNet([16, 32], 10).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, 0.005)
    watcher = watch.Watcher(model, "all", freq)
    watcher.start()
    recorder = RowRecorder(watcher)
    cfg = LoopConfig(
        epochs=2, batch_size=64, log_every=5, seed=0, progress_bar=False, cuda_graphs=graphs
    )
    train.train(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        split,
        cfg,
        train.Report(recorder, watcher=watcher),
    )
    recorder.log({}, step=10**9)  # close the last row
    return recorder.rows, watcher


class EagerReplay:
    """A CPU stand-in for ``cuda_graphs.GraphedStep``: one eager step per call with the watcher's
    hooks off, as in a replay, and the step's gradient tensors in ``grads``."""

    watcher: watch.Watcher

    def __init__(self, model, optimizer, criterion, data_, first_idx, cfg, nonfinite, loss_sum):
        self.args = (model, optimizer, criterion, data_)
        self.cfg, self.nonfinite, self.loss_sum = cfg, nonfinite, loss_sum
        self.grads: list[torch.Tensor | None] = []

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        model = self.args[0]
        with self.watcher.paused():
            loss = train_step(*self.args, idx, self.cfg)
        accumulate(loss, self.nonfinite, self.loss_sum)
        self.grads = [p.grad for p in model.parameters()]
        return loss


def test_graph_path_gives_the_hooks_histograms_on_the_cpu(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's CUDA-graph branch (watcher paused for the capture, driven around each replay)
    gives the same rows and histograms as the hooks of an eager run; and firings that the next
    one overwrites before a row are skipped, not computed."""
    split = data.load("MNIST", tiny_data, data_slice=1).train  # 512: 8 steps per epoch
    eager, eager_watcher = _train_watched(split, torch.device("cpu"), graphs=False)
    holder: dict[str, watch.Watcher] = {}

    def stand_in(*args: Any) -> EagerReplay:
        step = EagerReplay(*args)
        step.watcher = holder["watcher"]
        return step

    original = watch.Watcher.start

    def remember(self: watch.Watcher) -> None:
        holder["watcher"] = self
        original(self)

    monkeypatch.setattr(watch.Watcher, "start", remember)
    monkeypatch.setattr(cuda_graphs, "graphs_available", lambda device: True)
    monkeypatch.setattr(cuda_graphs, "GraphedStep", stand_in)
    # A CPU Adam with capturable=True and a tensor lr rounds differently: keep the eager form,
    # so that the two runs train identically and only the watcher's path differs.
    eager_form = cuda_graphs.set_optimizer_form
    monkeypatch.setattr(cuda_graphs, "set_optimizer_form", lambda o, g, d: eager_form(o, False, d))
    graphed, graphed_watcher = _train_watched(split, torch.device("cpu"), graphs=True)
    assert eager and graphed == eager
    # 16 steps, rows after steps 5, 10 and 15, firings at steps 3, 6, 9, 12 and 15 (one
    # parameter hook and 6 gradient hooks each). The firing at 12 is overwritten by 15 before
    # the next row: skipped. The one at 6 is computed: the epoch ends at step 8, where a job logs
    # its per-epoch metric (this bare loop does not, so 9 overwrites it: wasted, never wrong).
    for w in (eager_watcher, graphed_watcher):
        assert w.skipped == 1 * 7 and w.computed == 4 * 12


def test_a_firing_without_finite_values_keeps_the_earlier_one() -> None:
    model = torch.nn.Linear(3, 2)
    watcher = watch.Watcher(model, "gradients", 1)
    watcher.backward_event([torch.ones(2, 3), torch.tensor([1.0, 2.0])])
    watcher.backward_event([torch.full((2, 3), float("nan")), torch.tensor([5.0, 7.0])])
    found = {h.key: h for h in watcher.collect()}
    assert found["gradients/weight"].counts == [6.0]  # the all-ones firing, kept
    assert found["gradients/bias"].edges[0] == 5.0
    assert watcher.collect() == []  # one copy per row: nothing left after it


@needs_cuda
def test_cuda_statistics_match_wandbs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On a GPU W&B's hooks use CUDA histc: the device statistics must give the same counts."""
    from trainjob.tracking.run import package

    torch.manual_seed(0)
    run, capture = _wandb_reference(monkeypatch, tmp_path)
    try:
        for name, make in EDGE_CASES.items():
            tensor = make().cuda()
            run._torch.log_tensor_stats(tensor, name)
            ours = package(watch.histograms([name], watch.tensor_stats(tensor)[None].cpu()))
            if name in capture.logged:
                assert ours[name].histogram == capture.logged[name].histogram, name
                assert ours[name].bins == capture.logged[name].bins, name
            else:
                assert not ours
    finally:
        run.finish()


@needs_cuda
def test_graphed_histograms_match_eager_ones(tiny_data: Path) -> None:
    """Real CUDA graphs: the watcher's rows from replays against the hooks of an eager run
    (deterministic kernels; counts may move by an element across a bin edge, no more)."""
    from trainjob import runtime

    device = torch.device("cuda")
    runtime.configure(0, device)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    split = data.load("MNIST", tiny_data, data_slice=1, device=device).train
    eager, _ = _train_watched(split, device, graphs=False)
    graphed, _ = _train_watched(split, device, graphs=True)
    assert sorted(graphed) == sorted(eager) and len(eager) >= 3
    for step, row in eager.items():
        assert sorted(graphed[step]) == sorted(row)
        for key, (counts, edges) in row.items():
            g_counts, g_edges = graphed[step][key]
            assert sum(g_counts) == sum(counts)
            assert sum(abs(a - b) for a, b in zip(g_counts, counts, strict=True)) <= 0.02 * sum(
                counts
            )
            assert all(
                math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)
                for a, b in zip(g_edges, edges, strict=True)
            )
