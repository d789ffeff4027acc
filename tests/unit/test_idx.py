"""IDX parsing: the fixture files read correctly, and every kind of damage is a
readable ``IdxError`` (a ``UserError``) naming the file, from both ``read_idx``
and ``payload_sha256``."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_MNIST, fixture_pins
from pipeline.core.errors import UserError
from pipeline.data.idx import IdxError, expected_ndim, parse_header, payload_sha256, read_idx

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


def payload(name: str) -> bytes:
    """The decompressed IDX bytes of a fixture file."""
    return gzip.decompress((FIXTURE_MNIST / name).read_bytes())


def write_gz(path: Path, data: bytes) -> Path:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    return path


def both_readers_fail(path: Path, *words: str) -> None:
    """``read_idx`` and ``payload_sha256`` both reject ``path`` with a message naming it."""
    for reader in (read_idx, payload_sha256):
        with pytest.raises(IdxError) as info:
            reader(path)
        msg = str(info.value)
        assert isinstance(info.value, UserError)
        assert path.name in msg, (reader.__name__, msg)
        for word in words:
            assert word in msg, (reader.__name__, msg)


# --------------------------------------------------------------------------- good files


@pytest.mark.parametrize("name, shape", [
    (TRAIN_IMAGES, (600, 28, 28)),
    (TRAIN_LABELS, (600,)),
    (TEST_IMAGES, (300, 28, 28)),
    (TEST_LABELS, (300,)),
])
def test_read_fixture_files(name, shape):
    arr = read_idx(FIXTURE_MNIST / name)
    assert arr.shape == shape
    assert arr.dtype == np.uint8
    # The array is exactly the payload after the header.
    header_len = 4 + 4 * len(shape)
    assert arr.tobytes() == payload(name)[header_len:]


def test_fixture_content_is_plausible_mnist():
    images = read_idx(FIXTURE_MNIST / TRAIN_IMAGES)
    labels = read_idx(FIXTURE_MNIST / TRAIN_LABELS)
    assert images.max() == 255 and images.min() == 0
    assert set(np.unique(labels)) == set(range(10))


def test_read_accepts_str_path_and_uncompressed_file(tmp_path):
    plain = tmp_path / "train-labels-idx1-ubyte"
    plain.write_bytes(payload(TRAIN_LABELS))
    np.testing.assert_array_equal(read_idx(str(plain)), read_idx(FIXTURE_MNIST / TRAIN_LABELS))
    assert payload_sha256(str(plain)) == fixture_pins()[TRAIN_LABELS]


@pytest.mark.parametrize("name", [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS])
def test_payload_sha256_is_hash_of_decompressed_bytes(name):
    got = payload_sha256(FIXTURE_MNIST / name)
    assert got == hashlib.sha256(payload(name)).hexdigest()
    assert got == fixture_pins()[name]
    # ... and not the hash of the compressed file.
    assert got != hashlib.sha256((FIXTURE_MNIST / name).read_bytes()).hexdigest()


def test_payload_sha256_ignores_gzip_framing(tmp_path):
    """The pin is of the payload, so a mirror compressing differently still verifies."""
    data = payload(TRAIN_LABELS)
    other = tmp_path / TRAIN_LABELS
    with open(other, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=12345, compresslevel=1) as gz:
        gz.write(data)
    assert other.read_bytes() != (FIXTURE_MNIST / TRAIN_LABELS).read_bytes()
    assert payload_sha256(other) == fixture_pins()[TRAIN_LABELS]


def test_payload_sha256_changes_with_one_payload_byte(tmp_path):
    data = bytearray(payload(TRAIN_IMAGES))
    data[-1] ^= 0x01
    path = write_gz(tmp_path / TRAIN_IMAGES, bytes(data))
    assert read_idx(path).shape == (600, 28, 28)  # structurally fine ...
    assert payload_sha256(path) != fixture_pins()[TRAIN_IMAGES]  # ... but not the pinned content


def test_expected_ndim_from_name():
    assert expected_ndim(TRAIN_IMAGES) == 3
    assert expected_ndim(TEST_LABELS) == 1
    assert expected_ndim("something.bin") is None


def test_parse_header_of_fixture():
    dtype, shape, header_len = parse_header(payload(TEST_IMAGES)[:64], TEST_IMAGES)
    assert (dtype, shape, header_len) == (np.dtype(np.uint8), (300, 28, 28), 16)


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("magic", [
    b"\x00\x00\x00\x00",  # ndim 0
    b"\x01\x00\x08\x03",  # first two bytes not zero
    b"\x00\x00\x07\x03",  # unknown dtype code
    b"\x1f\x8b\x08\x00",  # a gzip header where the IDX header should be
])
def test_wrong_magic(tmp_path, magic):
    data = magic + payload(TRAIN_IMAGES)[4:]
    path = write_gz(tmp_path / TRAIN_IMAGES, data)
    both_readers_fail(path, "bad IDX magic", magic.hex())


def test_magic_ndim_disagrees_with_name(tmp_path):
    # A labels payload (ndim 1) saved under an images name (idx3).
    path = write_gz(tmp_path / TRAIN_IMAGES, payload(TRAIN_LABELS))
    both_readers_fail(path, "1 dimension(s)", "file name says 3")


def test_images_under_labels_name(tmp_path):
    path = write_gz(tmp_path / TEST_LABELS, payload(TEST_IMAGES))
    both_readers_fail(path, "3 dimension(s)", "file name says 1")


def test_truncated_payload(tmp_path):
    path = write_gz(tmp_path / TRAIN_IMAGES, payload(TRAIN_IMAGES)[:-100])
    both_readers_fail(path, "(600, 28, 28)")
    with pytest.raises(IdxError, match=r"payload is 470300 bytes, the header \(600, 28, 28\) promises 470400"):
        read_idx(path)


def test_padded_payload(tmp_path):
    path = write_gz(tmp_path / TRAIN_LABELS, payload(TRAIN_LABELS) + b"\x00" * 7)
    both_readers_fail(path, "(600,)")
    with pytest.raises(IdxError, match=r"payload is 607 bytes.*promises 600 .*padded"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = write_gz(tmp_path / TRAIN_IMAGES, payload(TRAIN_IMAGES)[:10])
    both_readers_fail(path, "truncated IDX header")


def test_empty_file(tmp_path):
    path = write_gz(tmp_path / TRAIN_LABELS, b"")
    both_readers_fail(path, "too short")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_gzip_archive(tmp_path, keep):
    gz = (FIXTURE_MNIST / TRAIN_IMAGES).read_bytes()
    path = tmp_path / TRAIN_IMAGES
    path.write_bytes(gz[: int(len(gz) * keep)])
    with pytest.raises(IdxError, match="cannot be read"):
        read_idx(path)
    with pytest.raises(IdxError, match="corrupt or truncated archive"):
        payload_sha256(path)
    both_readers_fail(path)


def test_not_a_gzip_file(tmp_path):
    path = tmp_path / TRAIN_LABELS
    path.write_bytes(payload(TRAIN_LABELS))  # uncompressed bytes under a .gz name
    both_readers_fail(path)


def test_invalid_deflate_stream(tmp_path):
    """Damage inside the compressed stream surfaces from zlib, not as an OSError;
    it must still become an IdxError, not a traceback."""
    path = tmp_path / TRAIN_LABELS
    # A valid gzip member header, then a deflate block with the reserved type 0b11.
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 4 + b"\x00\xff" + b"\x07" + b"\x00" * 16)
    both_readers_fail(path)


def test_crc_mismatch(tmp_path):
    gz = bytearray((FIXTURE_MNIST / TRAIN_LABELS).read_bytes())
    gz[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path = tmp_path / TRAIN_LABELS
    path.write_bytes(bytes(gz))
    both_readers_fail(path)


def test_missing_file(tmp_path):
    both_readers_fail(tmp_path / TRAIN_LABELS)


def test_non_uint8_idx_is_read_with_its_dtype(tmp_path):
    """The format's other dtypes (big-endian) parse too; shape and values survive."""
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    data = struct.pack(">HBB", 0, 0x0C, 2) + struct.pack(">2I", 2, 3) + values.tobytes()
    path = write_gz(tmp_path / "values.gz", data)
    arr = read_idx(path)
    assert arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, values)
    assert payload_sha256(path) == hashlib.sha256(data).hexdigest()
