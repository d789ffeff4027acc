"""Every path the project uses, anchored at the project root and defined once.

``ROOT`` is the working copy the stage runs in (a temporary copy under
``dvc exp run --temp``/``--queue``). ``STORE_ROOT`` is where the default MLflow
store lives: the real repository (``DVC_ROOT``) when DVC says so, so runs from a
temporary copy land in the store that ``mlflow ui`` at the root shows.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"

DATA = ROOT / "data"
RAW = DATA / "raw"
PREPARED = DATA / "prepared"
DATA_SUMMARY = DATA / "summary.json"

RESULTS = ROOT / "results"
REPORTS = ROOT / "reports"
FIGURES = REPORTS / "figures"


def store_root() -> Path:
    """Directory holding the default SQLite store and its artifacts."""
    dvc_root = os.environ.get("DVC_ROOT")
    return Path(dvc_root).resolve() if dvc_root else ROOT


def result_dir(variant: str, seed: int, rate: float | int | None = None, results: Path = RESULTS) -> Path:
    """Where the training stage of one (variant, seed) writes its DVC record; with ``rate``, the
    ``lr_grid`` stage at that learning rate (named, as DVC names the stage, after ``str(rate)``)."""
    if rate is None:
        return results / f"{variant}-s{seed}"
    return results / "lr_grid" / f"{variant}-s{seed}-lr{rate}"


def stage_name(variant: str, seed: int, rate: float | int | None = None) -> str:
    """The DVC stage that trains (variant, seed), or its point of the learning-rate grid at ``rate``."""
    return f"train@{variant}-{seed}" if rate is None else f"lr_grid@{variant}-{seed}-{rate}"
