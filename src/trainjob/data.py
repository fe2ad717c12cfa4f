"""Datasets -> uint8 tensors in memory, on the training device.

torchvision's dataset classes do the reading (IDX parsing, the ``ROOT/<Name>/raw/`` layout, the
download mirrors); we take their ``.data``/``.targets`` tensors once and never touch the
per-sample PIL path again. Each epoch is then a seeded ``randperm`` plus slicing, which is what
made tuomaso/train_mnist_fast and KellerJordan/cifar10-airbench fast: the data never leaves the
device and no worker processes are involved.

    python -c "from trainjob.data import load; print(load('MNIST', 'data', 5))"
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DataError, StorageError

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Split:
    """One split, resident on a device: images uint8 [N, 1, 28, 28], labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Data:
    train: Split
    test: Split
    name: str
    data_slice: int

    def metadata(self) -> dict[str, int | str]:
        return {
            "name": self.name,
            "train_examples": len(self.train),
            "test_examples": len(self.test),
            "data_slice": self.data_slice,
        }


def _raw_dir(root: Path, name: str) -> Path:
    return root / name / "raw"


def _stage_raw_files(root: Path, name: str) -> None:
    """Put each raw file where torchvision looks (``ROOT/<Name>/raw/<file>``, uncompressed).

    Accepted sources, first found wins: the torchvision layout itself, its ``.gz`` as torchvision
    downloads it, or a flat folder of ``.gz`` / uncompressed files as the IDX files are
    distributed (e.g. ``../shared/data/mnist``).
    """
    raw = _raw_dir(root, name)
    for base in (*RAW_FILES["train"], *RAW_FILES["test"]):
        target = raw / base
        if target.is_file():
            continue
        candidates = [raw / f"{base}.gz", root / f"{base}.gz", root / base]
        source = next((c for c in candidates if c.is_file()), None)
        if source is None:
            continue  # left for torchvision's download (or our error message)
        try:
            raw.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{base}.{os.getpid()}.tmp")
            if source.suffix == ".gz":
                with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
            else:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)  # atomic: a concurrent job never sees half a file
        except (gzip.BadGzipFile, EOFError) as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(
                f"data file {source} is corrupt or truncated ({exc}); replace it with the "
                f"original {base}.gz"
            ) from None
        except PermissionError as exc:
            raise StorageError(
                f"cannot unpack {source} into {raw}: {exc.strerror}; set TRAINJOB_DATA_DIR to a "
                "writable folder or put the uncompressed files there yourself"
            ) from None


def _missing_message(root: Path, name: str, reason: str) -> str:
    files = ", ".join(f"{b}.gz" for b in (*RAW_FILES["train"], *RAW_FILES["test"]))
    return (
        f"{name} not found in {root} and the download failed ({reason}); put {files} "
        f"into {root} or {_raw_dir(root, name)} (TRAINJOB_DATA_DIR)"
    )


def _read_split(name: str, root: Path, train: bool) -> Split:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    try:
        ds = cls(root=str(root), train=train, download=False)
    except RuntimeError:  # "Dataset not found": fetch it the way torchvision does
        try:
            ds = cls(root=str(root), train=train, download=True)
        except Exception as exc:
            raise DataError(_missing_message(root, name, type(exc).__name__)) from None
    except (ValueError, AssertionError) as exc:
        raise DataError(f"{name} raw files in {_raw_dir(root, name)} are corrupt: {exc}") from None
    images, labels = ds.data, ds.targets
    if images.ndim != 3 or images.shape[0] != labels.shape[0] or images.dtype != torch.uint8:
        raise DataError(
            f"{name} raw files in {_raw_dir(root, name)} are inconsistent: images "
            f"{tuple(images.shape)} vs labels {tuple(labels.shape)}; replace them"
        )
    return Split(images.unsqueeze(1).contiguous(), labels.to(torch.int64))


def load(name: str, root: Path | str, data_slice: int, device: torch.device | None = None) -> Data:
    """Load both splits, keep every ``data_slice``-th example (the tutorial slices train *and*
    test with ``[::5]``), and move them to ``device``."""
    root = Path(root)
    _stage_raw_files(root, name)
    train, test = _read_split(name, root, True), _read_split(name, root, False)
    train = Split(train.images[::data_slice].contiguous(), train.labels[::data_slice].contiguous())
    test = Split(test.images[::data_slice].contiguous(), test.labels[::data_slice].contiguous())
    if device is not None:
        train, test = train.to(device), test.to(device)
    return Data(train=train, test=test, name=name, data_slice=data_slice)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]: exactly torchvision's ``ToTensor`` for these images."""
    return images.float().div_(255.0)
