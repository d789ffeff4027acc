"""Stage ``normalize``: the fixture subset becomes float32 images in [0, 1] and uint8
labels, with a summary that matches the arrays; a failure leaves no output and no
temporary directory behind."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_MNIST, tiny_params
from pipeline.core.errors import UserError
from pipeline.core.params import NormalizeSettings, Params
from pipeline.data.idx import IdxError, read_idx
from pipeline.data.normalize import SPLITS, normalize
from pipeline.data.prepared import load_prepared

N = {"train": 600, "test": 300}
KEYS = ("x_train", "y_train", "x_test", "y_test")


def fixture_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    img, lbl = SPLITS[split]
    return read_idx(FIXTURE_MNIST / img), read_idx(FIXTURE_MNIST / lbl)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data, mtime=0))


@pytest.fixture
def layout(tmp_path) -> dict[str, Path]:
    """A data/ folder whose raw/ holds copies of the four fixture files."""
    data = tmp_path / "data"
    raw = data / "raw"
    raw.mkdir(parents=True)
    for img, lbl in SPLITS.values():
        shutil.copyfile(FIXTURE_MNIST / img, raw / img)
        shutil.copyfile(FIXTURE_MNIST / lbl, raw / lbl)
    return {"data": data, "raw": raw, "out": data / "prepared", "summary": data / "summary.json"}


def run(layout, scale=255.0) -> dict:
    return normalize(NormalizeSettings(scale=scale), raw_dir=layout["raw"], out_dir=layout["out"], summary_path=layout["summary"])


def assert_nothing_written(layout) -> None:
    assert not layout["out"].exists()
    assert not layout["summary"].exists()
    names = sorted(p.name for p in layout["data"].iterdir())
    assert names == ["raw"], names  # no .prepared-* temp dir, no summary temp file


# --------------------------------------------------------------------------- outputs


def test_arrays_from_session_fixture(prepared_fixture):
    arrays = load_prepared(prepared_fixture)
    assert set(arrays) == set(KEYS)
    for split, n in N.items():
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.uint8
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(x.max()) == 1.0  # 255 maps to exactly 1
        assert set(np.unique(y)) <= set(range(10))
        images, labels = fixture_arrays(split)
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / np.float32(255.0))


def test_load_prepared_is_memory_mapped(prepared_fixture):
    arrays = load_prepared(prepared_fixture)
    for key in KEYS:
        assert isinstance(arrays[key], np.memmap), key
        assert not arrays[key].flags.writeable
    eager = load_prepared(prepared_fixture, mmap=False)
    for key in KEYS:
        assert not isinstance(eager[key], np.memmap)
        np.testing.assert_array_equal(eager[key], arrays[key])


def test_load_prepared_missing(tmp_path):
    with pytest.raises(UserError, match=r"x_train\.npy is missing; run `dvc repro normalize`"):
        load_prepared(tmp_path / "prepared")


def test_summary_matches_arrays(layout):
    returned = run(layout)
    summary = json.loads(layout["summary"].read_text())
    assert summary == returned
    assert summary["scale"] == 255.0
    arrays = load_prepared(layout["out"])
    for split, n in N.items():
        s = summary[split]
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        assert s["n"] == n == len(y)
        counts = {str(c): int(k) for c, k in enumerate(np.bincount(y, minlength=10))}
        assert s["class_counts"] == counts
        assert sum(s["class_counts"].values()) == n
        assert s["pixel_mean"] == pytest.approx(float(np.mean(x, dtype=np.float64)), abs=1e-6)
        assert s["pixel_std"] == pytest.approx(float(np.std(x, dtype=np.float64)), abs=1e-6)
        assert 0.05 < s["pixel_mean"] < 0.3 and 0.2 < s["pixel_std"] < 0.45  # MNIST-like
        assert len(s["digest"]) == 32 and int(s["digest"], 16) >= 0


def test_output_is_deterministic_and_replaces_previous(layout):
    first = run(layout)
    stale = layout["out"] / "stale.npy"
    stale.write_bytes(b"old")
    second = run(layout)
    assert first == second  # same digests: byte-identical arrays
    assert sorted(p.name for p in layout["out"].iterdir()) == sorted(f"{k}.npy" for k in KEYS)
    assert sorted(p.name for p in layout["data"].iterdir()) == ["prepared", "raw", "summary.json"]


def test_output_dir_is_not_private(layout):
    run(layout)
    assert layout["out"].stat().st_mode & 0o055 == 0o055


def test_reads_uncompressed_raw_files(layout):
    for path in list(layout["raw"].iterdir()):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    summary = run(layout)
    assert summary["train"]["n"] == 600 and summary["test"]["n"] == 300


def test_other_scale_is_applied(layout):
    run(layout, scale=510)
    x = load_prepared(layout["out"])["x_test"]
    assert float(x.max()) == 0.5
    assert json.loads(layout["summary"].read_text())["scale"] == 510.0


# --------------------------------------------------------------------------- failures


def test_label_count_mismatch(layout):
    _, labels = fixture_arrays("test")
    write_idx_gz(layout["raw"] / SPLITS["test"][1], labels[:-1])
    with pytest.raises(IdxError) as info:
        run(layout)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "299 labels for 300 images" in msg
    assert_nothing_written(layout)


def test_label_out_of_range(layout):
    _, labels = fixture_arrays("train")
    labels = labels.copy()
    labels[17] = 12
    write_idx_gz(layout["raw"] / SPLITS["train"][1], labels)
    with pytest.raises(IdxError, match=r"train-labels-idx1-ubyte\.gz: label 12 outside 0\.\.9"):
        run(layout)
    assert_nothing_written(layout)


def test_images_not_28x28(layout):
    images, _ = fixture_arrays("test")
    write_idx_gz(layout["raw"] / SPLITS["test"][0], images[:, :, :27])
    with pytest.raises(IdxError, match=r"t10k-images-idx3-ubyte\.gz: expected N×28×28 images, got shape \(300, 28, 27\)"):
        run(layout)
    assert_nothing_written(layout)


@pytest.mark.parametrize("scale", [100, 254.9])
def test_scale_leaving_pixels_above_one(layout, scale):
    with pytest.raises(UserError, match=rf"normalize.scale = {scale} leaves pixels outside \[0, 1\]"):
        run(layout, scale=scale)
    assert_nothing_written(layout)


@pytest.mark.parametrize("scale", [0, -255.0, "255", None, True])
def test_invalid_scale(layout, scale):
    with pytest.raises(UserError, match=r"'normalize.scale' = .* is invalid: must be a number > 0"):
        run(layout, scale=Params.from_dict({**tiny_params(), "normalize": {"scale": scale}}).normalize.scale)
    assert_nothing_written(layout)


def test_missing_raw_file(layout):
    (layout["raw"] / SPLITS["test"][0]).unlink()
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz is missing; run `dvc repro download`"):
        run(layout)
    assert_nothing_written(layout)


def test_corrupt_raw_file(layout):
    path = layout["raw"] / SPLITS["train"][0]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(IdxError, match=r"train-images-idx3-ubyte\.gz: cannot be read"):
        run(layout)
    assert_nothing_written(layout)


def test_failure_keeps_previous_output_intact(layout):
    """A failed rerun neither half-replaces the prepared arrays nor rewrites the summary."""
    run(layout)
    before = {p.name: p.read_bytes() for p in layout["out"].iterdir()}
    summary_before = layout["summary"].read_text()
    with pytest.raises(UserError):
        run(layout, scale=1)
    assert {p.name: p.read_bytes() for p in layout["out"].iterdir()} == before
    assert layout["summary"].read_text() == summary_before
    assert not [p for p in layout["data"].iterdir() if p.name.startswith(".prepared-")]
