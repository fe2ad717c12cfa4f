"""A dataset is never silently another one. MNIST, FashionMNIST and KMNIST use the same four file
names; each file trained on must hash to the requested dataset's published checksum, and a file
that is another known dataset's is refused by name (exit 3, one line) wherever it lies: a flat
folder, the dataset's own folder, or a copy an earlier trainjob staged in ``<Name>/raw/``."""

from __future__ import annotations

import gzip
import shutil
import socket
from pathlib import Path

import pytest
from helpers import RAW, clean_env, offline_runs, run_cli, write_tiny_mnist

from trainjob import data
from trainjob.errors import DataError

TRAIN_IMAGES, TRAIN_LABELS = RAW["train"]
TEST_IMAGES, TEST_LABELS = RAW["test"]


def link_gz(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for base in data.ALL_FILES:
        (target / f"{base}.gz").symlink_to((source / f"{base}.gz").resolve())
    return target


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_fashionmnist_on_mnist_files_exits_3_naming_mnist(real_mnist: Path, tmp_path: Path) -> None:
    root = link_gz(real_mnist, tmp_path / "data")  # the flat layout `make run` creates
    before = files_under(root)
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(root), TRAINJOB_DATASET="FashionMNIST")
    result = run_cli(["--epochs=1", "--data_slice=50"], env, tmp_path, timeout=180)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("trainjob: error:")]
    assert f"data file {root / TRAIN_IMAGES}.gz is MNIST's train-images, not FashionMNIST's" in line
    assert f"put FashionMNIST's files into {root / 'FashionMNIST'}" in line
    assert not offline_runs(tmp_path)  # refused before any W&B run exists
    # Nothing is staged anywhere a later job would look: not in the data folder (the copies a
    # user was told to keep after deleting the .gz), not in the cache.
    assert files_under(root) == before
    assert not list((tmp_path / "home").rglob("FashionMNIST"))
    # The old message said "delete it": with the .gz gone nothing of MNIST is left to train on,
    # and the download (refused at once by a closed local proxy port) fails with exit 3.
    for gz in root.glob("*.gz"):
        gz.unlink()
    port = closed_port()
    proxy = f"http://127.0.0.1:{port}"
    env.update(http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy)
    env.update(no_proxy="", NO_PROXY="")
    result = run_cli(["--epochs=1", "--data_slice=50"], env, tmp_path, timeout=180)
    assert result.returncode == 3, result.stderr
    assert "FashionMNIST not found in" in result.stderr and "download failed" in result.stderr
    assert not offline_runs(tmp_path)


def test_mnist_files_moved_into_fashionmnist_folder_are_refused(
    real_mnist: Path, tmp_path: Path
) -> None:
    """A user who deletes the flat .gz and puts them where FashionMNIST's belong is still told."""
    root = tmp_path / "data"
    link_gz(real_mnist, root / "FashionMNIST")
    with pytest.raises(DataError) as err:
        data.load("FashionMNIST", root, 50, cache_dir=tmp_path / "cache")
    assert "is MNIST's train-images, not FashionMNIST's train-images" in str(err.value)
    assert not list((tmp_path / "cache").rglob("*-ubyte.*"))


def test_previously_staged_mnist_in_fashionmnist_raw_is_caught(
    real_mnist: Path, tmp_path: Path
) -> None:
    """What trainjob before this check left behind: MNIST unpacked into FashionMNIST/raw/, with
    its old size+mtime markers. Those copies are hashed like any other file."""
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for base in data.ALL_FILES:
        with gzip.open(real_mnist / f"{base}.gz") as src, open(raw / base, "wb") as dst:
            shutil.copyfileobj(src, dst)
        (raw / f".{base}.verified").write_text(f"{(raw / base).stat().st_size} 0")
    with pytest.raises(DataError) as err:
        data.load("FashionMNIST", tmp_path / "data", 50, cache_dir=tmp_path / "cache")
    assert f"data file {raw / TRAIN_IMAGES} is MNIST's train-images, not FashionMNIST's" in str(
        err.value
    )


def test_a_swapped_file_is_named(real_mnist: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for base in data.ALL_FILES:
        source = TEST_LABELS if base == TRAIN_LABELS else base  # test labels as train labels
        (root / f"{base}.gz").symlink_to((real_mnist / f"{source}.gz").resolve())
    with pytest.raises(DataError, match="is MNIST's t10k-labels, not MNIST's train-labels"):
        data.load("MNIST", root, 50, cache_dir=tmp_path / "cache")


def test_shared_folder_gives_each_dataset_its_own_place(real_mnist: Path, tmp_path: Path) -> None:
    """Real MNIST flat, a (synthetic, subset) FashionMNIST in its own folder: each loads its own."""
    root = link_gz(real_mnist, tmp_path / "data")
    write_tiny_mnist(root / "FashionMNIST", n_train=64, n_test=32)
    mnist = data.load("MNIST", root, 1, cache_dir=tmp_path / "cache")
    assert (len(mnist.train), len(mnist.test)) == (60_000, 10_000)
    fashion = data.load("FashionMNIST", root, 1, cache_dir=tmp_path / "cache")
    assert (len(fashion.train), len(fashion.test)) == (64, 32)


def test_identify_knows_every_published_checksum() -> None:
    """Unpacked MD5s (MNIST, FashionMNIST) and torchvision's .gz MD5s (all three) name their
    dataset and file; anything else is unknown."""
    for name, files in data.RAW_MD5.items():
        for base, md5 in files.items():
            assert data.identify(md5) == (name, base)
    for name, files in data.gz_md5s().items():
        assert sorted(files) == sorted(data.ALL_FILES)
        for base, md5 in files.items():
            assert data.identify("0" * 32, gz_md5=md5) == (name, base)
    assert data.identify("0" * 32, gz_md5="1" * 32) is None
