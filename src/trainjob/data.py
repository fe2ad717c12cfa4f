"""Datasets -> uint8 tensors in memory, on the training device.

torchvision's dataset classes do the reading (IDX parsing, the ``ROOT/<Name>/raw/`` layout, the
download mirrors); we take their ``.data``/``.targets`` tensors once and never touch the
per-sample PIL path again. Each epoch is then a seeded ``randperm`` plus slicing, which is what
made tuomaso/train_mnist_fast and KellerJordan/cifar10-airbench fast: the data never leaves the
device and no worker processes are involved.

    python -c "from trainjob.data import load; print(load('MNIST', 'data', 5))"
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DataError, StorageError

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = (*RAW_FILES["train"], *RAW_FILES["test"])
CLASSES = 10  # labels of all three datasets are 0-9

# IDX headers (yann.lecun.com/exdb/mnist): magic 0x00000803 = uint8 with 3 dimensions (images
# N x 28 x 28), 0x00000801 = uint8 with 1 dimension (labels N).
IDX_MAGIC = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}
# The official files: their uncompressed sizes (the same for MNIST, FashionMNIST and KMNIST) and
# the MD5 of MNIST's uncompressed files (of the official files). Recompressing a .gz changes
# its MD5, not these. FashionMNIST/KMNIST only have torchvision's MD5s of their .gz files.
OFFICIAL_SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
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
    distributed (e.g. a shared, read-only copy of the four ``.gz`` files).
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
        tmp = target.with_name(f".{base}.{os.getpid()}.tmp")
        try:
            raw.mkdir(parents=True, exist_ok=True)
            if source.suffix == ".gz":
                with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
            else:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)  # atomic: a concurrent job never sees half a file
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(
                f"data file {source} is corrupt or truncated ({exc}); replace it with the "
                f"original {base}.gz"
            ) from None
        except OSError as exc:  # unwritable, read-only or full data folder
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageError(
                f"cannot unpack {source} into {raw}: {exc.strerror or exc}; set "
                "TRAINJOB_DATA_DIR to a writable folder or put the uncompressed files in "
                f"{raw} yourself"
            ) from None


def _replace_hint(root: Path, name: str, base: str) -> str:
    return f"delete it and put the original {base}.gz into {root} (TRAINJOB_DATA_DIR)"


def _check_idx(path: Path, base: str, root: Path, name: str) -> int:
    """The IDX header and the file size agree; returns the number of items. Cheap: reads 16
    bytes and a stat, so a truncated file is caught before torchvision reshapes it."""
    kind = "images" if "images" in base else "labels"
    magic, ndim = IDX_MAGIC[kind]
    header_len = 4 + 4 * ndim
    with open(path, "rb") as fh:
        header = fh.read(header_len)
    size = path.stat().st_size
    if len(header) < header_len:
        raise DataError(
            f"data file {path} is truncated ({size} bytes, not even an IDX header); "
            + _replace_hint(root, name, base)
        )
    found, *dims = struct.unpack(f">I{ndim}I", header)
    if found != magic:
        raise DataError(
            f"data file {path} is not an IDX {kind} file (magic 0x{found:08x}, expected "
            f"0x{magic:08x}); " + _replace_hint(root, name, base)
        )
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(
            f"data file {path} holds {dims[1]}x{dims[2]} images, not 28x28; "
            + _replace_hint(root, name, base)
        )
    expected = header_len + dims[0] * (dims[1] * dims[2] if kind == "images" else 1)
    if size != expected:
        problem = "is truncated" if size < expected else f"has {size - expected} extra bytes"
        raise DataError(
            f"data file {path} {problem}: its header says {dims[0]} {kind} ({expected} bytes), "
            f"the file has {size} bytes; " + _replace_hint(root, name, base)
        )
    return int(dims[0])


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gz_md5(name: str, base: str) -> str | None:
    import torchvision.datasets as tvd

    return dict(getattr(tvd, name).resources).get(f"{base}.gz")


def _check_checksum(path: Path, base: str, root: Path, name: str) -> None:
    """An official-size file must have the official MD5 (a bit flip keeps the size). Files of
    other sizes (subsets, test fixtures) get the structural checks only. The result is cached in
    ``.<file>.verified`` keyed by size and mtime, so a job re-hashes only changed files."""
    stat = path.stat()
    if stat.st_size != OFFICIAL_SIZES[base]:
        return
    marker = path.with_name(f".{base}.verified")
    key = f"{stat.st_size} {stat.st_mtime_ns}"
    with contextlib.suppress(OSError):
        if marker.read_text() == key:
            return
    if name == "MNIST":
        checked, got, want = path, _md5(path), MNIST_MD5[base]
    else:  # FashionMNIST / KMNIST: torchvision publishes the MD5 of the .gz only
        gz = next(
            (p for p in (root / f"{base}.gz", path.with_name(f"{base}.gz")) if p.is_file()), None
        )
        want = _gz_md5(name, base)
        if gz is None or want is None:
            return
        checked, got = gz, _md5(gz)
    if got != want:
        raise DataError(
            f"data file {checked} fails its checksum (MD5 {got}, expected {want}): it is "
            f"corrupt; " + _replace_hint(root, name, base)
        )
    with contextlib.suppress(OSError):  # a read-only data folder: verify again next time
        marker.write_text(key)


def verify(root: Path, name: str) -> None:
    """Every raw file of ``name`` under ``root`` is a well-formed IDX file of the right kind and
    size, images and labels of each split agree in number, official files match their MD5."""
    raw = _raw_dir(root, name)
    counts = {base: _check_idx(raw / base, base, root, name) for base in ALL_FILES}
    for images, labels in RAW_FILES.values():
        if counts[images] != counts[labels]:
            raise DataError(
                f"data files {raw / images} ({counts[images]} images) and {raw / labels} "
                f"({counts[labels]} labels) do not match; put the original pair of .gz files "
                f"into {root} (TRAINJOB_DATA_DIR) and delete {raw}"
            )
    for base in ALL_FILES:
        _check_checksum(raw / base, base, root, name)


def _missing_message(root: Path, name: str, reason: str) -> str:
    files = ", ".join(f"{b}.gz" for b in (*RAW_FILES["train"], *RAW_FILES["test"]))
    return (
        f"{name} not found in {root} and the download failed ({reason}); put {files} "
        f"into {root} or {_raw_dir(root, name)} (TRAINJOB_DATA_DIR)"
    )


def _download(name: str, root: Path) -> None:
    """No raw file at all: fetch them the way torchvision does (its mirrors, its MD5 check)."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, name)(root=str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(_missing_message(root, name, type(exc).__name__)) from None


def _read_split(name: str, root: Path, train: bool) -> Split:
    import torchvision.datasets as tvd

    try:
        ds = getattr(tvd, name)(root=str(root), train=train, download=False)
    except (RuntimeError, ValueError, AssertionError) as exc:  # verify() should catch these first
        raise DataError(f"{name} raw files in {_raw_dir(root, name)} are corrupt: {exc}") from None
    images, labels = ds.data, ds.targets
    if images.ndim != 3 or images.shape[0] != labels.shape[0] or images.dtype != torch.uint8:
        raise DataError(
            f"{name} raw files in {_raw_dir(root, name)} are inconsistent: images "
            f"{tuple(images.shape)} vs labels {tuple(labels.shape)}; replace them"
        )
    if len(labels) and int(labels.max()) >= CLASSES:
        base = RAW_FILES["train" if train else "test"][1]
        raise DataError(
            f"data file {_raw_dir(root, name) / base} has label {int(labels.max())}; "
            f"{name} labels are 0-{CLASSES - 1}: " + _replace_hint(root, name, base)
        )
    return Split(images.unsqueeze(1).contiguous(), labels.to(torch.int64))


def load(name: str, root: Path | str, data_slice: int, device: torch.device | None = None) -> Data:
    """Load both splits, keep every ``data_slice``-th example (the tutorial slices train *and*
    test with ``[::5]``), and move them to ``device``."""
    root = Path(root)
    _stage_raw_files(root, name)
    raw = _raw_dir(root, name)
    missing = [base for base in ALL_FILES if not (raw / base).is_file()]
    if len(missing) == len(ALL_FILES):
        _download(name, root)
    elif missing:
        names = ", ".join(f"{base}.gz" for base in missing)
        raise DataError(
            f"{name} is incomplete in {root}: {names} missing; put the missing file(s) into "
            f"{root} (TRAINJOB_DATA_DIR), next to the others"
        )
    verify(root, name)
    train, test = _read_split(name, root, True), _read_split(name, root, False)
    train = Split(train.images[::data_slice].contiguous(), train.labels[::data_slice].contiguous())
    test = Split(test.images[::data_slice].contiguous(), test.labels[::data_slice].contiguous())
    if device is not None:
        train, test = train.to(device), test.to(device)
    return Data(train=train, test=test, name=name, data_slice=data_slice)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]: exactly torchvision's ``ToTensor`` for these images."""
    return images.float().div_(255.0)
