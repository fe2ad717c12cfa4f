"""Data loading through torchvision's classes, and the model's shape contract."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch
from helpers import RAW, synthetic_split

from trainjob import data
from trainjob.errors import DataError
from trainjob.model import ConvNet


def test_gz_flat_folder_is_read_in_place_and_unpacked_into_the_cache(
    tiny_data_copy: Path, tmp_path: Path
) -> None:
    before = sorted(p.name for p in tiny_data_copy.rglob("*"))
    loaded = data.load("MNIST", tiny_data_copy, data_slice=1, cache_dir=tmp_path / "cache")
    assert loaded.train.images.shape == (512, 1, 28, 28)
    assert loaded.train.images.dtype == torch.uint8
    assert loaded.test.labels.shape == (256,)
    assert sorted(p.name for p in tiny_data_copy.rglob("*")) == before  # nothing written there
    cached = sorted(p.name.split(".")[0] for p in (tmp_path / "cache" / "MNIST").glob("*.json"))
    assert cached == sorted(data.ALL_FILES)
    images, labels = synthetic_split(512, 1)
    assert torch.equal(loaded.train.labels, torch.from_numpy(labels).long())
    assert torch.equal(loaded.train.images[:, 0], torch.from_numpy(images))


def test_slice_matches_tutorial_subset(tiny_data_copy: Path) -> None:
    full = data.load("MNIST", tiny_data_copy, data_slice=1)
    sliced = data.load("MNIST", tiny_data_copy, data_slice=5)
    # The tutorial's Subset(range(0, len, 5)) on both splits.
    assert len(sliced.train) == len(range(0, 512, 5))
    assert torch.equal(sliced.train.images, full.train.images[::5])
    assert torch.equal(sliced.test.labels, full.test.labels[::5])


def test_uncompressed_and_torchvision_layout(tiny_data_copy: Path, tmp_path: Path) -> None:
    layout = tmp_path / "tv" / "FashionMNIST" / "raw"
    layout.mkdir(parents=True)
    for gz in tiny_data_copy.glob("*.gz"):
        with gzip.open(gz) as src, open(layout / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    loaded = data.load("FashionMNIST", tmp_path / "tv", data_slice=1)
    assert len(loaded.train) == 512 and loaded.name == "FashionMNIST"


def test_corrupt_gz_is_a_data_error(tiny_data_copy: Path) -> None:
    target = tiny_data_copy / f"{RAW['train'][0]}.gz"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        data.load("MNIST", tiny_data_copy, data_slice=1)


def test_to_float_is_totensor_scaling() -> None:
    x = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    assert torch.allclose(data.to_float(x), torch.tensor([[0.0, 128 / 255, 1.0]]))


def test_convnet_follows_kernels_and_classes() -> None:
    model = ConvNet([8, 12], classes=11)
    assert model.layer2[0].in_channels == 8  # the tutorial hard-codes 16 here
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 11)
    tutorial = ConvNet([16, 32], 10)
    assert sum(p.numel() for p in tutorial.parameters()) == 28938
