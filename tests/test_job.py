"""A whole job, end to end, in W&B offline mode on tiny data; the run's files are read back."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import clean_env, offline_runs, read_offline_run, run_cli, synthetic_split

from trainjob import data
from trainjob.model import ConvNet
from trainjob.tracking.sync import hint
from trainjob.train import LoopConfig, Report, evaluate, train

EPOCHS, BATCH, LOG_EVERY = 2, 32, 5


@pytest.fixture(scope="module")
def finished_job(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("job")
    env = clean_env(
        tmp,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_LOG_EVERY=str(LOG_EVERY),
        TRAINJOB_ONNX_EXPORTER="dynamo",  # the default exporter, exercised once here
    )
    result = run_cli(
        ["--epochs", str(EPOCHS), "--batch_size", str(BATCH), "--learning_rate=0.005"], env, tmp
    )
    assert result.returncode == 0, result.stderr
    runs = offline_runs(tmp)
    assert len(runs) == 1, runs  # exactly one run per job (the tutorial's re-init made more)
    return tmp, result, read_offline_run(runs[0])


def test_config_is_the_validated_settings(finished_job) -> None:
    _, _, run = finished_job
    config = run.config
    assert config["epochs"] == EPOCHS and config["batch_size"] == BATCH
    assert config["learning_rate"] == 0.005 and config["kernels"] == [16, 32]
    assert config["dataset"] == "MNIST" and config["architecture"] == "CNN"
    assert config["data"]["train_examples"] == 512
    assert config["model"]["parameters"] == 28938
    assert config["env"]["device"] == "cpu"
    assert "data_dir" not in config and "output_dir" not in config


def test_history_rows_follow_log_every(finished_job) -> None:
    _, _, run = finished_job
    batches = math.ceil(512 / BATCH) * EPOCHS
    rows = [h for h in run.history if "loss" in h]
    assert len(rows) == batches // LOG_EVERY
    steps = [h["_step"] for h in rows]
    # step = examples seen, as in the tutorial: every full batch is BATCH examples.
    assert steps == [LOG_EVERY * BATCH * (i + 1) for i in range(len(rows))]
    assert all(isinstance(h["loss"], float) and math.isfinite(h["loss"]) for h in rows)
    means = [h["train/loss_mean"] for h in rows]  # the interval's mean, summed on the device
    assert all(isinstance(m, float) and math.isfinite(m) and m > 0 for m in means)
    assert [h["epoch"] for h in rows] == [(LOG_EVERY * (i + 1) - 1) // 16 for i in range(len(rows))]
    assert any(k.startswith("gradients/") for h in run.history for k in h)  # run.watch works
    assert any(k.startswith("parameters/") for h in run.history for k in h)


def test_summary_and_exit(finished_job) -> None:
    _, result, run = finished_job
    summary = run.summary
    assert summary["test_accuracy"] > 0.9  # the synthetic bars are easy; see helpers
    assert summary["perf/samples_per_s"] > 0
    assert summary["onnx/max_abs_diff"] <= 1e-4
    assert run.exit_code == 0
    assert "test_accuracy=" in result.stdout and "model:" in result.stdout
    assert "run saved locally; upload it with: trainjob sync " in result.stdout


def test_model_saved_with_run_and_as_artifact(finished_job) -> None:
    tmp, _, run = finished_job
    saved = run.path / "files" / "model.onnx"
    assert saved.is_file() and not saved.is_symlink()
    assert not list((run.path / "files").glob("*.onnx.data"))  # weights inside the file
    artifacts = [r["artifact"] for r in run.records if r.get("type") == "artifact"]
    assert len(artifacts) == 1 and artifacts[0]["type"] == "model"
    assert "test_accuracy" in artifacts[0]["metadata"]
    onnx.checker.check_model(onnx.load(str(saved)), full_check=True)
    session = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
    images, labels = synthetic_split(64, 2)  # the first test images, any batch size works
    x = images[:, None].astype(np.float32) / 255.0
    (logits,) = session.run(None, {"images": x})
    assert logits.shape == (64, 10)
    assert (logits.argmax(1) == labels).mean() > 0.85
    assert (tmp / "outputs" / "model.onnx").read_bytes() == saved.read_bytes()
    assert not list((tmp / "outputs" / "checkpoints").glob("ckpt-*"))  # a done job leaves none


def _train_once(tiny_data_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    loaded = data.load("MNIST", tiny_data_dir, data_slice=1)
    torch.manual_seed(seed)
    model = ConvNet([16, 32], 10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)

    class Null:
        def log(self, metrics, step):
            pass

    cfg = LoopConfig(epochs=1, batch_size=64, log_every=3, seed=seed, progress_bar=False)
    train(model, optimizer, torch.nn.CrossEntropyLoss(), loaded.train, cfg, Report(Null()))
    assert evaluate(model, loaded.test) > 0.5
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_identical_weights(tiny_data_copy: Path) -> None:
    a, b = _train_once(tiny_data_copy, 7), _train_once(tiny_data_copy, 7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _train_once(tiny_data_copy, 8)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_disabled_mode_runs_the_same_code_path(tiny_data: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), WANDB_MODE="disabled")
    result = run_cli(["--epochs=1", "--data_slice=2", "--batch_size=64"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not offline_runs(tmp_path)
    assert (tmp_path / "outputs" / "model.onnx").is_file()
    assert "tracking disabled" in result.stdout


def test_no_key_no_mode_goes_offline(tiny_data: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data))
    del env["WANDB_MODE"]
    result = run_cli(["--epochs=1", "--data_slice=4", "--batch_size=64"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = offline_runs(tmp_path)
    assert f"upload it with: {hint(run_dir)}\n" in result.stdout
