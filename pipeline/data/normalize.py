"""Stage ``normalize``: parse the IDX files into arrays the training stage loads fast.

In: ``data/raw/*.gz`` (verified by ``download``); ``params.yaml`` sections
``download.files`` (which files) and ``normalize`` (``scale``: pixels are divided by it).
Out: ``data/prepared/{x_train,y_train,x_test,y_test}.npy`` (x: float32 in [0, 1],
shape (N, 28, 28, 1), memory-mappable; y: uint8 in 0..9) and ``data/summary.json``
(counts per class, pixel mean and std, a digest per split; see ``pipeline.data.prepared``), a DVC
output that every training logs with its run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.cli import run_main
from pipeline.core.errors import UserError
from pipeline.core.params import NormalizeSettings, Params
from pipeline.data.idx import IdxError, read_idx
from pipeline.data.prepared import split_digest

log = logging.getLogger("pipeline.data.normalize")

SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _find(raw_dir: Path, name: str) -> Path:
    for candidate in (raw_dir / name, raw_dir / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    raise UserError(f"{raw_dir / name} is missing; run `dvc repro download` (or python -m pipeline.data.download) first")


def load_split(raw_dir: Path, split: str, scale: float) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = SPLITS[split]
    images = read_idx(_find(raw_dir, img_name))
    labels = read_idx(_find(raw_dir, lbl_name))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxError(f"{img_name}: expected N×28×28 images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IdxError(f"{lbl_name}: {len(labels)} labels for {len(images)} images in {img_name}")
    if labels.size and labels.max() > 9:
        raise IdxError(f"{lbl_name}: label {int(labels.max())} outside 0..9")
    x = (images.astype(np.float32) / np.float32(scale))[..., np.newaxis]
    return x, labels.astype(np.uint8)


def normalize(settings: NormalizeSettings, raw_dir: Path = paths.RAW, out_dir: Path = paths.PREPARED,
              summary_path: Path = paths.DATA_SUMMARY) -> dict:
    scale = settings.scale
    summary: dict = {"scale": float(scale)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepared-", dir=out_dir.parent))
    try:
        for split in SPLITS:
            x, y = load_split(raw_dir, split, float(scale))
            if x.max(initial=0) > 1.0 or x.min(initial=0) < 0.0:
                raise UserError(f"normalize.scale = {scale:g} leaves pixels outside [0, 1]; MNIST pixels need 255")
            np.save(tmp / f"x_{split}.npy", x)
            np.save(tmp / f"y_{split}.npy", y)
            counts = np.bincount(y, minlength=10)
            summary[split] = {
                "n": int(len(y)),
                "pixel_mean": round(float(x.mean(dtype=np.float64)), 6),
                "pixel_std": round(float(x.std(dtype=np.float64)), 6),
                "class_counts": {str(c): int(n) for c, n in enumerate(counts)},
                "digest": split_digest(tmp, split),
            }
            log.info("%s: %d images, pixel mean %.4f, std %.4f", split, len(y),
                     summary[split]["pixel_mean"], summary[split]["pixel_std"])
        tmp.chmod(0o755)  # mkdtemp makes it private; the output should not be
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp_summary = summary_path.with_name(summary_path.name + ".tmp")
    tmp_summary.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp_summary, summary_path)
    return summary


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_main(lambda: normalize(Params.load().normalize))


if __name__ == "__main__":
    main()
