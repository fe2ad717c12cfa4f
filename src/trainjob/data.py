"""Datasets -> uint8 tensors in memory, on the training device.

Where a dataset's four IDX files are looked for, first place that holds any of them wins:
``DATA_DIR/<Name>/raw/`` (torchvision's layout), ``DATA_DIR/<Name>/``, then ``DATA_DIR/`` itself
(the flat layout the files are distributed in). MNIST, FashionMNIST and KMNIST use the same file
names, so a flat folder holds one dataset; a folder shared by several gives each its own
``<Name>/`` folder.

What is trained on is verified: each file's bytes are hashed and the hash must name the file as
the requested dataset's (a file that is another known dataset's is refused as such). The IDX
arrays are then parsed from those same bytes, so nothing can change between check and use; this
is why torchvision's readers (which take a path and read the file again) are not used here.
Downloads still go through torchvision (its mirrors, its MD5 check).

The data folder is never written (it may be a read-only mount): a ``.gz`` is unpacked into a
cache of our own (``TRAINJOB_CACHE_DIR``), keyed by the MD5 of the ``.gz`` and checked against
the hash recorded when it was unpacked, so jobs reuse it and a damaged copy is unpacked again.
Each epoch is then a seeded ``randperm`` plus slicing, which is what made
tuomaso/train_mnist_fast and KellerJordan/cifar10-airbench fast: the data never leaves the device.

    python -c "from trainjob.data import load; print(load('MNIST', 'data', 5))"
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from . import records
from .choices import DATASET_CLASSES, DATASETS
from .errors import DataError
from .log import logger

log = logger()

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = (*RAW_FILES["train"], *RAW_FILES["test"])

# IDX headers (yann.lecun.com/exdb/mnist): magic 0x00000803 = uint8 with 3 dimensions (images
# N x 28 x 28), 0x00000801 = uint8 with 1 dimension (labels N).
IDX_MAGIC = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}
# The official files' uncompressed sizes, the same for MNIST, FashionMNIST and KMNIST.
OFFICIAL_SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
# MD5 of the *uncompressed* official files. Recompressing a .gz changes its MD5, not these, so
# they identify a file whatever mirror or gzip level it came from. MNIST: measured from the
# files of yann.lecun.com/exdb/mnist. FashionMNIST: the values several public loaders list as
# the unpacked files of github.com/zalandoresearch/fashion-mnist (e.g. the `raw_data` tables of
# torchvision-derived FashionMNIST classes and `gunzip && md5sum` walkthroughs on GitHub; all
# agree). KMNIST: none published that we know of; its files are identified by torchvision's
# MD5 of the .gz (``torchvision.datasets.KMNIST.resources``) only.
RAW_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
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


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/trainjob``, else ``~/.cache/trainjob`` (the XDG base directory spec)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trainjob"


# --- identity: which dataset's file is this? ------------------------------------------------


def _role(base: str) -> str:
    return base.split("-idx")[0]  # "train-images-idx3-ubyte" -> "train-images"


def gz_md5s() -> dict[str, dict[str, str]]:
    """torchvision's published MD5 of each dataset's .gz files."""
    import torchvision.datasets as tvd

    return {
        name: {file.removesuffix(".gz"): md5 for file, md5 in getattr(tvd, name).resources}
        for name in DATASETS
    }


def identify(raw_md5: str, gz_md5: str | None = None) -> tuple[str, str] | None:
    """(dataset, file) whose published checksum matches, or None for an unknown file."""
    checks = [(RAW_MD5, raw_md5)] + ([(gz_md5s(), gz_md5)] if gz_md5 else [])
    for table, md5 in checks:
        for dataset, files in table.items():
            for base, known in files.items():
                if known == md5:
                    return dataset, base
    return None


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()


def _replace_hint(place: Path, base: str) -> str:
    return f"delete it and put the original {base}.gz into {place} (TRAINJOB_DATA_DIR)"


def _verify(
    raw_md5: str,
    size: int,
    gz_md5: str | None,
    source: Path,
    place: Path,
    root: Path,
    name: str,
    base: str,
) -> None:
    """Refuse a file that is another known dataset's (or another file of this one), and an
    official-size file whose checksum is not the one published for ``name``. Files of other
    sizes (subsets, test fixtures) have no published checksum: they get the IDX checks only."""
    owner = identify(raw_md5, gz_md5)
    if owner == (name, base):
        return
    if owner is not None:
        fix = (
            f"put the original {base}.gz there"
            if owner[0] == name
            else f"put {name}'s files into {root / name} (the datasets share file names, so "
            "each needs a folder of its own)"
        )
        raise DataError(
            f"data file {source} is {owner[0]}'s {_role(owner[1])}, not {name}'s "
            f"{_role(base)}; {fix}"
        )
    if size != OFFICIAL_SIZES[base]:
        return
    want_raw = RAW_MD5.get(name, {}).get(base)
    want_gz = gz_md5s()[name].get(base) if gz_md5 else None
    if want_raw:
        got, want, what = raw_md5, want_raw, "unpacked MD5"
    elif want_gz:
        got, want, what = gz_md5, want_gz, ".gz MD5"
    else:
        return  # an uncompressed KMNIST file: nothing published to compare with
    raise DataError(
        f"data file {source} fails its checksum ({what} {got}, expected {want} for {name}'s "
        f"{_role(base)}): it is corrupt or not {name}'s; " + _replace_hint(place, base)
    )


# --- the bytes: found, read, unpacked into the cache ------------------------------------------


def _places(root: Path, name: str) -> tuple[Path, Path, Path]:
    return root / name / "raw", root / name, root


def _find_place(root: Path, name: str) -> Path | None:
    for place in _places(root, name):
        if any((place / b).is_file() or (place / f"{b}.gz").is_file() for b in ALL_FILES):
            return place
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None


def _gunzip(packed: bytes, source: Path, base: str, place: Path) -> bytes:
    try:
        return gzip.decompress(packed)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(
            f"data file {source} is corrupt or truncated ({exc}); " + _replace_hint(place, base)
        ) from None


class Cache:
    """Unpacked .gz files, ``<dir>/<Name>/<file>.<md5 of the .gz>``, each beside a JSON marker
    recording the dataset, the file, the .gz's MD5 and the MD5 and SHA-256 of the unpacked
    bytes. Writes are ``records.replacing`` (a private temp file + ``os.replace``), so concurrent
    jobs never see half a file; a reader re-hashes what it reads, so a damaged or mismatched
    copy is unpacked again, never used."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writable = True

    def _paths(self, name: str, base: str, gz_md5: str) -> tuple[Path, Path]:
        path = self.folder / name / f"{base}.{gz_md5}"
        return path, path.with_name(f"{path.name}.json")

    def get(self, name: str, base: str, gz_md5: str) -> tuple[bytes, str] | None:
        """The cached bytes and their MD5, if they match their record. The check on reuse is
        SHA-256, not MD5: 4x faster on CPUs with SHA instructions (x86 SHA-NI, ARMv8 SHA2);
        the MD5 (for the published checksums) was computed from the same bytes when unpacked."""
        path, marker = self._paths(name, base, gz_md5)
        try:
            record = json.loads(marker.read_text())
            blob = path.read_bytes()
        except (OSError, ValueError):
            return None  # not cached yet (or the marker is unreadable): unpack
        expected = {"dataset": name, "file": base, "source_md5": gz_md5}
        if (
            isinstance(record, dict)
            and all(record.get(k) == v for k, v in expected.items())
            and isinstance(record.get("md5"), str)
            and record.get("sha256") == hashlib.sha256(blob).hexdigest()
        ):
            return blob, record["md5"]
        log.warning(f"cached copy {path} does not match its record; unpacking again")
        return None

    def put(self, name: str, base: str, gz_md5: str, blob: bytes, md5: str, source: Path) -> None:
        if not self.writable:
            return
        path, marker = self._paths(name, base, gz_md5)
        record = {
            "dataset": name,
            "file": base,
            "source": str(source),
            "source_md5": gz_md5,
            "md5": md5,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
        }
        try:
            for target, content in ((path, blob), (marker, json.dumps(record).encode())):
                # Not fsync'd: a reader re-hashes what it reads (a lost write is unpacked again).
                with records.replacing(target, durable=False) as tmp:
                    tmp.write_bytes(content)
        except OSError as exc:
            self.writable = False  # say it once per load, keep training from memory
            log.warning(
                f"cannot cache unpacked data in {self.folder} ({exc.strerror or exc}); "
                "unpacking in memory for this job only (set TRAINJOB_CACHE_DIR to a writable "
                "folder to reuse it)"
            )


def _load_file(root: Path, place: Path, name: str, base: str, cache: Cache) -> tuple[bytes, Path]:
    """The verified, uncompressed bytes of one file, and the file they came from. A .gz wins
    over an uncompressed file beside it (torchvision's download leaves both)."""
    gz, plain = place / f"{base}.gz", place / base
    if gz.is_file():
        packed = _read(gz)
        gz_md5 = _md5(packed)
        cached = cache.get(name, base, gz_md5)
        if cached is not None:
            blob, raw_md5 = cached
        else:
            blob = _gunzip(packed, gz, base, place)
            raw_md5 = _md5(blob)
        _verify(raw_md5, len(blob), gz_md5, gz, place, root, name, base)
        if cached is None:
            cache.put(name, base, gz_md5, blob, raw_md5, gz)
        return blob, gz
    blob = _read(plain)
    _verify(_md5(blob), len(blob), None, plain, place, root, name, base)
    return blob, plain


# --- IDX parsing, from the verified bytes -----------------------------------------------------


def _parse_idx(blob: bytes, source: Path, base: str, place: Path) -> torch.Tensor:
    """The IDX header and the size agree; returns the uint8 array ([N, 28, 28] or [N])."""
    kind = "images" if "images" in base else "labels"
    magic, ndim = IDX_MAGIC[kind]
    header_len = 4 + 4 * ndim
    size = len(blob)
    hint = _replace_hint(place, base)
    if size < header_len:
        raise DataError(
            f"data file {source} is truncated ({size} bytes, not even an IDX header); {hint}"
        )
    found, *dims = struct.unpack(f">I{ndim}I", blob[:header_len])
    if found != magic:
        raise DataError(
            f"data file {source} is not an IDX {kind} file (magic 0x{found:08x}, expected "
            f"0x{magic:08x}); {hint}"
        )
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(f"data file {source} holds {dims[1]}x{dims[2]} images, not 28x28; {hint}")
    expected = header_len + dims[0] * (dims[1] * dims[2] if kind == "images" else 1)
    if size != expected:
        problem = "is truncated" if size < expected else f"has {size - expected} extra bytes"
        raise DataError(
            f"data file {source} {problem}: its header says {dims[0]} {kind} ({expected} bytes), "
            f"the file has {size} bytes; {hint}"
        )
    array = torch.frombuffer(bytearray(blob), dtype=torch.uint8, offset=header_len)
    return array.view(*dims)


def _missing_message(root: Path, name: str, reason: str) -> str:
    files = ", ".join(f"{b}.gz" for b in ALL_FILES)
    return (
        f"{name} not found in {root} and the download failed ({reason}); put {files} "
        f"into {root / name} (or into {root} itself if it holds no other dataset; "
        "TRAINJOB_DATA_DIR)"
    )


def _download(name: str, root: Path) -> None:
    """No file at all: fetch them the way torchvision does (its mirrors, its MD5 check) into
    ``root/<Name>/raw``."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, name)(root=str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(_missing_message(root, name, type(exc).__name__)) from None


def load(
    name: str,
    root: Path | str,
    data_slice: int,
    device: torch.device | None = None,
    cache_dir: Path | str | None = None,
) -> Data:
    """Load both splits, keep every ``data_slice``-th example (the tutorial slices train *and*
    test with ``[::5]``), and move them to ``device``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    root = Path(root)
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    place = _find_place(root, name)
    if place is None:
        _download(name, root)
        place = _find_place(root, name) or root / name / "raw"
    missing = [
        b for b in ALL_FILES if not (place / b).is_file() and not (place / f"{b}.gz").is_file()
    ]
    if missing:
        names = ", ".join(f"{b}.gz" for b in missing)
        raise DataError(
            f"{name} is incomplete in {place}: {names} missing; put the missing file(s) into "
            f"{place} (TRAINJOB_DATA_DIR), next to the others"
        )
    arrays, sources = {}, {}
    for base in ALL_FILES:
        blob, sources[base] = _load_file(root, place, name, base, cache)
        arrays[base] = _parse_idx(blob, sources[base], base, place)
    splits = {}
    for split, (images, labels) in RAW_FILES.items():
        x, y = arrays[images], arrays[labels]
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"data files {sources[images]} ({x.shape[0]} images) and {sources[labels]} "
                f"({y.shape[0]} labels) do not match; put the original pair of .gz files "
                f"into {place} (TRAINJOB_DATA_DIR)"
            )
        if len(y) and int(y.max()) >= DATASET_CLASSES:
            raise DataError(
                f"data file {sources[labels]} has label {int(y.max())}; {name} labels are "
                f"0-{DATASET_CLASSES - 1}: " + _replace_hint(place, labels)
            )
        splits[split] = Split(
            x[::data_slice].unsqueeze(1).contiguous(), y[::data_slice].to(torch.int64)
        )
    train, test = splits["train"], splits["test"]
    if device is not None:
        train, test = train.to(device), test.to(device)
    return Data(train=train, test=test, name=name, data_slice=data_slice)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]: exactly torchvision's ``ToTensor`` for these images."""
    return images.float().div_(255.0)
