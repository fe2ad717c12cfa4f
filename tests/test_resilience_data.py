"""Data problems: missing, truncated or corrupt IDX files, a checksum mismatch, a damaged cache,
a read-only data folder or an unwritable cache. Each problem is one DataError line naming the file
and what to do; in a real job: exit 3 and no traceback. A read-only data folder is no problem."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import RAW, clean_env, idx_images, idx_labels, run_cli, synthetic_split
from storage_helpers import readonly_mount, under_a_file

from trainjob import data
from trainjob.errors import DataError

TRAIN_IMAGES, TRAIN_LABELS = RAW["train"]
TEST_IMAGES, TEST_LABELS = RAW["test"]


def put(folder: Path, base: str, blob: bytes) -> Path:
    """Replace ``base`` in a flat folder with ``blob`` (uncompressed: it wins over nothing, so
    the .gz of that name is removed)."""
    (folder / f"{base}.gz").unlink(missing_ok=True)
    (folder / base).write_bytes(blob)
    return folder / base


def raw_of(folder: Path, base: str) -> bytes:
    with gzip.open(folder / f"{base}.gz") as fh:
        return fh.read()


def test_missing_file_is_named(tiny_data_copy: Path) -> None:
    (tiny_data_copy / f"{TEST_LABELS}.gz").unlink()
    with pytest.raises(DataError) as err:
        data.load("MNIST", tiny_data_copy, 1)
    message = str(err.value)
    assert f"{TEST_LABELS}.gz missing" in message and str(tiny_data_copy) in message
    assert TEST_IMAGES not in message  # only what is really missing


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda b: b[:5000], "is truncated: its header says 512 images (401424 bytes)"),
        (lambda b: b[:10], "is truncated (10 bytes, not even an IDX header)"),
        (lambda b: b + b"\0" * 7, "has 7 extra bytes"),
        (lambda b: struct.pack(">I", 0x00000801) + b[4:], "not an IDX images file (magic"),
        (lambda b: b"GIF89a" + b[6:], "not an IDX images file (magic 0x47494638"),
    ],
    ids=["truncated", "header-only", "extra-bytes", "labels-magic", "not-idx"],
)
def test_corrupt_idx_is_named(tiny_data_copy: Path, damage, expected: str) -> None:
    path = put(tiny_data_copy, TRAIN_IMAGES, damage(raw_of(tiny_data_copy, TRAIN_IMAGES)))
    with pytest.raises(DataError) as err:
        data.load("MNIST", tiny_data_copy, 1)
    message = str(err.value)
    assert expected in message
    assert f"data file {tiny_data_copy / TRAIN_IMAGES} " in message  # the user's file ...
    assert f"put the original {TRAIN_IMAGES}.gz into {tiny_data_copy}" in message  # ... the fix
    assert path.is_file()  # nothing of the user's is deleted


def test_wrong_image_size(tiny_data_copy: Path) -> None:
    images = np.zeros((512, 32, 32), dtype=np.uint8)
    put(tiny_data_copy, TRAIN_IMAGES, idx_images(images))
    with pytest.raises(DataError, match="holds 32x32 images, not 28x28"):
        data.load("MNIST", tiny_data_copy, 1)


def test_images_and_labels_disagree(tiny_data_copy: Path) -> None:
    _, labels = synthetic_split(500, 1)
    put(tiny_data_copy, TRAIN_LABELS, idx_labels(labels))
    with pytest.raises(DataError) as err:
        data.load("MNIST", tiny_data_copy, 1)
    assert "(512 images) and" in str(err.value) and "(500 labels) do not match" in str(err.value)


def test_label_out_of_range(tiny_data_copy: Path) -> None:
    _, labels = synthetic_split(256, 2)
    labels[7] = 12
    put(tiny_data_copy, TEST_LABELS, idx_labels(labels))
    with pytest.raises(DataError, match=f"{TEST_LABELS} has label 12; MNIST labels are 0-9"):
        data.load("MNIST", tiny_data_copy, 1)


def test_corrupt_gzip_stream(tiny_data_copy: Path) -> None:
    gz = tiny_data_copy / f"{TRAIN_LABELS}.gz"
    blob = bytearray(gz.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # a bit flip inside the deflate stream (or its CRC)
    gz.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"{gz} is corrupt or truncated"):
        data.load("MNIST", tiny_data_copy, 1)


def test_checksum_mismatch_of_an_official_size_file(tmp_path: Path) -> None:
    """Files with the official size of the t10k set (10,000 images) but other bytes: the
    structure is fine, only the MD5 can tell (a bit flip in a real file looks the same)."""
    from helpers import write_tiny_mnist

    root = write_tiny_mnist(tmp_path / "d", n_train=64, n_test=10_000)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:  # MNIST: the MD5 of the unpacked file
        data.load("MNIST", root, 1, cache_dir=cache)
    message = str(err.value)
    assert f"data file {root / TEST_IMAGES}.gz fails its checksum (unpacked MD5" in message
    assert "expected 2646ac647ad5339dbf082846283269ea for MNIST's t10k-images)" in message
    assert "it is corrupt or not MNIST's" in message
    with pytest.raises(DataError) as err:  # KMNIST: torchvision's MD5 of the .gz
        data.load("KMNIST", root, 1, cache_dir=cache)
    assert f"{root / TEST_IMAGES}.gz fails its checksum (.gz MD5" in str(err.value)
    assert "expected 5c965bf0a639b31b8f53240b1b52f4d7 for KMNIST's t10k-images" in str(err.value)
    assert not list(cache.glob(f"*/{TEST_IMAGES}.*"))  # a refused file is never cached
    # Uncompressed, in each dataset's own folder: FashionMNIST's unpacked MD5s are published ...
    for name in ("FashionMNIST", "KMNIST"):
        write_tiny_mnist(tmp_path / "own" / name / "raw", n_train=64, n_test=10_000, gz=False)
    with pytest.raises(DataError, match="expected 8181f5470baa50b63fa0f6fddb340f0a for"):
        data.load("FashionMNIST", tmp_path / "own", 1, cache_dir=cache)
    # ... KMNIST's are not: an uncompressed KMNIST file gets the structure checks only
    assert len(data.load("KMNIST", tmp_path / "own", 1, cache_dir=cache).test) == 10_000


def test_real_mnist_cache_verified_on_every_use(real_mnist: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    first = data.load("MNIST", real_mnist, 1, cache_dir=cache)
    assert len(first.train) == 60_000
    records = {}
    for marker in (cache / "MNIST").glob("*.json"):
        record = json.loads(marker.read_text())
        records[record["file"]] = record
        assert record["dataset"] == "MNIST"
        gz = real_mnist / f"{record['file']}.gz"
        assert record["source_md5"] == hashlib.md5(gz.read_bytes()).hexdigest()
    assert {f: r["md5"] for f, r in records.items()} == data.RAW_MD5["MNIST"]
    cached = cache / "MNIST" / f"{TEST_LABELS}.{records[TEST_LABELS]['source_md5']}"
    blob = bytearray(cached.read_bytes())
    blob[100] ^= 0x01  # same size, one bit: only a checksum sees it
    cached.write_bytes(bytes(blob))
    capsys.readouterr()
    again = data.load("MNIST", real_mnist, 1, cache_dir=cache)
    assert torch.equal(again.test.labels, first.test.labels)  # the damaged copy was not used
    (line,) = capsys.readouterr().err.splitlines()
    assert f"cached copy {cached} does not match its record; unpacking again" in line
    assert hashlib.md5(cached.read_bytes()).hexdigest() == data.RAW_MD5["MNIST"][TEST_LABELS]


def test_real_mnist_uncompressed_bit_flip_caught(real_mnist: Path, tmp_path: Path) -> None:
    raw = tmp_path / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for base in data.ALL_FILES:
        (raw / base).write_bytes(raw_of(real_mnist, base))
    assert len(data.load("MNIST", tmp_path / "d", 1, cache_dir=tmp_path / "c").test) == 10_000
    target = raw / TEST_LABELS
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0x01
    target.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"{target} fails its checksum"):
        data.load("MNIST", tmp_path / "d", 1, cache_dir=tmp_path / "c")


def test_a_changed_gz_is_never_served_from_the_cache(tiny_data_copy: Path, tmp_path: Path) -> None:
    """Subsets have no published checksum; their cache entry is still tied to their .gz."""
    cache = tmp_path / "cache"
    assert len(data.load("MNIST", tiny_data_copy, 1, cache_dir=cache).train) == 512
    images, labels = synthetic_split(100, 7)
    for base, blob in ((TRAIN_IMAGES, idx_images(images)), (TRAIN_LABELS, idx_labels(labels))):
        with gzip.open(tiny_data_copy / f"{base}.gz", "wb") as fh:
            fh.write(blob)
    loaded = data.load("MNIST", tiny_data_copy, 1, cache_dir=cache)
    assert torch.equal(loaded.train.labels, torch.from_numpy(labels).long())
    assert len(list((cache / "MNIST").glob(f"{TRAIN_LABELS}.*.json"))) == 2  # old and new


def test_unwritable_cache_trains_from_memory(tiny_data_copy: Path, tmp_path: Path, capsys) -> None:
    cache = under_a_file(tmp_path, "cache")
    assert len(data.load("MNIST", tiny_data_copy, 1, cache_dir=cache).train) == 512
    (line,) = capsys.readouterr().err.splitlines()  # said once, not once per file
    assert f"cannot cache unpacked data in {cache}" in line
    assert "set TRAINJOB_CACHE_DIR to a writable folder" in line


def test_read_only_data_folder(tiny_data_copy: Path, tmp_path: Path) -> None:
    with readonly_mount(tiny_data_copy, tmp_path / "ro") as ro:
        loaded = data.load("MNIST", ro, 1, cache_dir=tmp_path / "cache")
        assert len(loaded.train) == 512 and len(loaded.test) == 256


# --- the same through the real entrypoint: exit code, one line, no traceback --------------------


def _job(data_dir: Path, tmp: Path):
    env = clean_env(
        tmp,
        TRAINJOB_DATA_DIR=str(data_dir),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_ONNX_EXPORTER="torchscript",  # 0.2 s instead of 2-8 s: export is not tested here
    )
    return run_cli(["--epochs=1"], env, tmp, timeout=180)


def _one_error_line(result) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainjob: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_job_with_truncated_file_exits_3(tiny_data_copy: Path, tmp_path: Path) -> None:
    put(tiny_data_copy, TEST_IMAGES, raw_of(tiny_data_copy, TEST_IMAGES)[:-100])
    result = _job(tiny_data_copy, tmp_path)
    assert result.returncode == 3, result.stderr
    line = _one_error_line(result)
    assert TEST_IMAGES in line and "is truncated" in line
    assert not (tmp_path / "wandb").exists()  # failed before any run was created


def test_job_on_read_only_data_trains_and_reuses_its_cache(
    tiny_data_copy: Path, tmp_path: Path
) -> None:
    """A read-only bind mount (EROFS, for root too): the job trains (exit 0; it was exit 5 when
    the .gz files were unpacked beside themselves), and a second job reuses the cache."""
    before = sorted(p.name for p in tiny_data_copy.rglob("*"))
    with readonly_mount(tiny_data_copy, tmp_path / "ro") as ro:
        first = _job(ro, tmp_path)
        assert first.returncode == 0, first.stderr
        cache = tmp_path / "home" / ".cache" / "trainjob" / "MNIST"
        stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()}
        assert len(stamps) == 2 * len(data.ALL_FILES)  # each file and its record
        second = _job(ro, tmp_path)
        assert second.returncode == 0, second.stderr
        assert "warning" not in first.stderr + second.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()} == stamps
    assert sorted(p.name for p in tiny_data_copy.rglob("*")) == before


def _load_digest(args: tuple[str, str]) -> str:
    root, cache = args
    loaded = data.load("MNIST", root, 1, cache_dir=cache)
    return hashlib.md5(loaded.train.images.numpy().tobytes()).hexdigest()


def test_concurrent_jobs_share_one_cache(tiny_data_copy: Path, tmp_path: Path, capfd) -> None:
    """Two processes unpack into the same empty cache at once: both get the same data, neither
    warns, and no temp file is left (each writes a private temp file and renames it over the
    other's identical copy)."""
    import multiprocessing

    cache = tmp_path / "cache"
    data.gz_md5s()  # import torchvision once here, not in each forked child
    with multiprocessing.get_context("fork").Pool(2) as pool:
        digests = pool.map(_load_digest, [(str(tiny_data_copy), str(cache))] * 2)
    assert len(set(digests)) == 1
    assert "warning" not in capfd.readouterr().err
    assert len(list((cache / "MNIST").iterdir())) == 2 * len(data.ALL_FILES)
    assert not list(cache.rglob(".*.tmp"))
