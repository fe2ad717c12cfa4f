from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import adopt_env, write_tiny_mnist

MNIST_ENV = "MNIST_TEST_DIR"  # set by .ci/run and the Makefile to ../shared/data/mnist


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """In-process data.load calls unpack into a session folder, not the developer's
    ~/.cache/trainjob (child processes get their own HOME from helpers.clean_env)."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder of gzipped IDX files, 512 train / 256 test synthetic images."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture
def tiny_data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy (tests that damage or unpack the files get their own)."""
    import shutil

    target = tmp_path / "data"
    target.mkdir()
    for gz in tiny_data.glob("*.gz"):  # not the MNIST/raw/ that other tests unpacked
        shutil.copyfile(gz, target / gz.name)
    return target


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MNIST .gz files, linked into a private folder."""
    source = os.environ.get(MNIST_ENV)
    if not source or not Path(source).is_dir():
        pytest.skip(f"{MNIST_ENV} is not set to the real MNIST folder (.ci/run sets it)")
    target = tmp_path_factory.mktemp("real-mnist")
    for gz in Path(source).glob("*-ubyte.gz"):
        (target / gz.name).symlink_to(gz.resolve())
    return target


@pytest.fixture
def sweep_env(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's environment as a sweep's: offline W&B in tmp_path, tiny data, 1 epoch."""
    return adopt_env(
        monkeypatch,
        tmp_path,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_EPOCHS="1",
        TRAINJOB_BATCH_SIZE="64",
        TRAINJOB_LOG_EVERY="4",
    )
