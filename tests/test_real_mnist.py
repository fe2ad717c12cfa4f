"""Real MNIST (the folder in MNIST_TEST_DIR; skipped when unset): one epoch at the tutorial's
settings must reach the accuracy floor.

Floor: seeds 0-3 gave 0.9635, 0.9670, 0.9675, 0.9640 (mean 0.9655, spread 0.004) after 1 epoch
on the [::5] slice, 2 CPU threads. 0.95 is ~4 spreads below the worst seed.
"""

from __future__ import annotations

from pathlib import Path

from helpers import clean_env, offline_runs, read_offline_run, run_cli

FLOOR = 0.95


def test_one_epoch_tutorial_settings(real_mnist: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(real_mnist))
    result = run_cli(["--epochs=1"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = offline_runs(tmp_path)
    run = read_offline_run(run_dir)
    assert run.config["data"] == {
        "name": "MNIST",
        "train_examples": 12000,
        "test_examples": 2000,
        "data_slice": 5,
    }
    assert run.summary["test_accuracy"] >= FLOOR
    assert len([h for h in run.history if "loss" in h]) == 94 // 25
