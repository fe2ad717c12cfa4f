"""The settings' choices that the loop modules check too: the datasets (and the classes they
share) and what ``run.watch`` logs, declared once.

They cannot live in settings.py, because the loop modules (data.py, tracking/watch.py) check
them and must not import pydantic (tests/test_perf.py); settings.py builds its fields' types,
bounds and descriptions from them.
"""

from __future__ import annotations

from typing import Literal, get_args

Dataset = Literal["MNIST", "FashionMNIST", "KMNIST"]
DATASETS: tuple[str, ...] = get_args(Dataset)
DATASET_CLASSES = 10  # all three torchvision datasets have ten labels, 0-9
WatchLog = Literal["gradients", "parameters", "all", "none"]  # what run.watch records
WATCH_LOG_CHOICES: tuple[str, ...] = get_args(WatchLog)
