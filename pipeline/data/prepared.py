"""The prepared-data contract: what the normalize stage writes and every other stage reads.

In: ``data/prepared`` (or another folder of the same files).
Out: ``FILES`` (the four arrays: ``x_train``, ``y_train``, ``x_test``, ``y_test``, each ``<name>.npy``),
``exists``, ``load_prepared`` (memory-mapped arrays) and ``split_digest`` (the digest of a split
that ``data/summary.json`` records and every training logs). Imports nothing of the stages that
make the data: the training stage reads data through this module alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.errors import UserError

FILES = ("x_train", "y_train", "x_test", "y_test")


def exists(prepared: Path = paths.PREPARED) -> bool:
    return all((prepared / f"{name}.npy").exists() for name in FILES)


def load_prepared(prepared: Path = paths.PREPARED, mmap: bool = True) -> dict[str, np.ndarray]:
    """The four arrays written by ``normalize``, memory-mapped by default."""
    out = {}
    for key in FILES:
        path = prepared / f"{key}.npy"
        if not path.exists():
            raise UserError(f"{path} is missing; run `dvc repro normalize` (or `python -m pipeline.data` to make the data "
                            "without DVC) first")
        out[key] = np.load(path, mmap_mode="r" if mmap else None)
    return out




def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()




def split_digest(prepared: Path, split: str) -> str:
    """A split's digest in data/summary.json: the first 16 hex digits of the SHA-256 of its
    ``x_<split>.npy`` then of its ``y_<split>.npy``."""
    return _sha256(prepared / f"x_{split}.npy")[:16] + _sha256(prepared / f"y_{split}.npy")[:16]
