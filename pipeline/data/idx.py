"""The IDX format MNIST ships in (big-endian header, then raw bytes).

In: a path to an IDX file, gzip-compressed (``.gz``) or not.
Out: ``read_idx`` returns the payload as a NumPy array after checking the magic
number, the dimensions and the byte count; ``payload_sha256`` hashes the
decompressed payload, which is what the pins in ``params.yaml`` are for.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError

# Third byte of the magic number -> dtype; MNIST uses only 0x08 (unsigned byte).
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(UserError):
    pass


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def expected_ndim(name: str) -> int | None:
    """MNIST naming: ``*-idx3-ubyte*`` holds images (3 dims), ``*-idx1-ubyte*`` labels."""
    for ndim in (1, 3):
        if f"idx{ndim}" in name:
            return ndim
    return None


def parse_header(head: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, header length); raise IdxError naming the file."""
    if len(head) < 4:
        raise IdxError(f"{name}: too short to be an IDX file ({len(head)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", head[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise IdxError(f"{name}: bad IDX magic number 0x{head[:4].hex()} (expected 0x000008NN)")
    want = expected_ndim(name)
    if want is not None and ndim != want:
        raise IdxError(f"{name}: IDX magic says {ndim} dimension(s), the file name says {want}")
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise IdxError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", head[4:header_len])
    return np.dtype(_DTYPES[code]), shape, header_len


def read_idx(path: Path | str) -> np.ndarray:
    path = Path(path)
    try:
        with _open(path) as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path.name}: cannot be read ({exc}); delete it and run the download stage again") from None
    dtype, shape, header_len = parse_header(data[:64], path.name)
    expected = int(np.prod(shape)) * dtype.itemsize
    got = len(data) - header_len
    if got != expected:
        raise IdxError(f"{path.name}: payload is {got} bytes, the header {shape} promises {expected} (truncated or padded file)")
    return np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)


def payload_sha256(path: Path | str) -> str:
    """SHA-256 of the decompressed payload, checking the IDX structure as it streams."""
    path = Path(path)
    digest = hashlib.sha256()
    total = 0
    head = b""
    try:
        with _open(path) as fh:
            while chunk := fh.read(1 << 20):
                if len(head) < 64:
                    head += chunk[: 64 - len(head)]
                digest.update(chunk)
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path.name}: corrupt or truncated archive ({exc})") from None
    dtype, shape, header_len = parse_header(head, path.name)
    expected = int(np.prod(shape)) * dtype.itemsize + header_len
    if total != expected:
        raise IdxError(f"{path.name}: {total} bytes after decompression, the header {shape} promises {expected}")
    return digest.hexdigest()
