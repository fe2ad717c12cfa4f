"""Data problems: missing, truncated or corrupt IDX files, a checksum mismatch,
an unwritable data folder. Each is one DataError/StorageError line naming the file and what to
do; in a real job: exit 3 (5 for an unwritable folder) and no traceback."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import RAW, clean_env, idx_images, idx_labels, run_cli, synthetic_split
from storage_helpers import readonly_mount

from trainjob import data
from trainjob.errors import DataError, StorageError

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
    assert f"{tiny_data_copy / 'MNIST' / 'raw' / TRAIN_IMAGES}" in message  # the file ...
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
    with pytest.raises(DataError) as err:  # MNIST: the MD5 of the uncompressed file
        data.load("MNIST", root, 1)
    message = str(err.value)
    assert f"{root / 'MNIST' / 'raw' / TEST_IMAGES} fails its checksum (MD5" in message
    assert "expected 2646ac647ad5339dbf082846283269ea): it is corrupt" in message
    with pytest.raises(DataError) as err:  # KMNIST: torchvision's MD5 of the .gz
        data.load("KMNIST", root, 1)
    assert f"{root / TEST_IMAGES}.gz fails its checksum" in str(err.value)
    # uncompressed KMNIST files have no published checksum: structure checks only
    for gz in root.glob("*.gz"):
        gz.unlink()
    assert len(data.load("KMNIST", root, 1).test) == 10_000


def test_real_mnist_verified_once_and_bit_flip_caught(real_mnist: Path, tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    root.mkdir()
    for gz in real_mnist.glob("*.gz"):
        (root / gz.name).symlink_to(gz.resolve())
    assert len(data.load("MNIST", root, 1).train) == 60_000
    raw = root / "MNIST" / "raw"
    markers = sorted(p.name for p in raw.glob(".*.verified"))
    assert markers == sorted(f".{base}.verified" for base in data.ALL_FILES)
    target = raw / TEST_LABELS
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0x01  # same size, one bit: only the checksum sees it
    target.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"{target} fails its checksum"):
        data.load("MNIST", root, 1)


def test_files_of_other_sizes_are_not_hashed(tiny_data_copy: Path) -> None:
    """Subsets and fixtures have no published MD5: structure checks only, no marker."""
    data.load("MNIST", tiny_data_copy, 1)
    assert not list((tiny_data_copy / "MNIST" / "raw").glob(".*.verified"))


def test_unwritable_data_folder_is_a_storage_error(tiny_data_copy: Path) -> None:
    (tiny_data_copy / "MNIST").write_text("a file where the folder should be")
    with pytest.raises(StorageError) as err:
        data.load("MNIST", tiny_data_copy, 1)
    assert f"cannot unpack {tiny_data_copy}" in str(err.value)
    assert "set TRAINJOB_DATA_DIR to a writable folder" in str(err.value)


def test_read_only_data_folder(tiny_data_copy: Path, tmp_path: Path) -> None:
    with (
        readonly_mount(tiny_data_copy, tmp_path / "ro") as ro,
        pytest.raises(StorageError, match="Read-only file system"),
    ):
        data.load("MNIST", ro, 1)


# --- the same through the real entrypoint: exit code, one line, no traceback --------------------


def _job(data_dir: Path, tmp: Path):
    env = clean_env(tmp, TRAINJOB_DATA_DIR=str(data_dir), TRAINJOB_DATA_SLICE="1")
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


def test_job_with_unwritable_data_folder_exits_5(tiny_data_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(tiny_data_copy / "MNIST", ignore_errors=True)
    (tiny_data_copy / "MNIST").write_text("not a folder")
    result = _job(tiny_data_copy, tmp_path)
    assert result.returncode == 5, result.stderr
    assert "cannot unpack" in _one_error_line(result)
