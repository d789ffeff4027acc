"""Every path the project uses, anchored at the project root and defined once.

``ROOT`` is the working copy the stage runs in (a temporary copy under
``dvc exp run --temp``/``--queue``). ``store_root()`` is where the default MLflow
store lives: the real repository (``DVC_ROOT``) when DVC says so, so runs from a
temporary copy land in the store that ``mlflow ui`` at the root shows.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.labels import TUNED, record_name

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"

DATA = ROOT / "data"
RAW = DATA / "raw"
PREPARED = DATA / "prepared"
DATA_SUMMARY = DATA / "summary.json"

RESULTS = ROOT / "results"
REPORTS = ROOT / "reports"


def store_root() -> Path:
    """Directory holding the default SQLite store and its artifacts."""
    dvc_root = os.environ.get("DVC_ROOT")
    return Path(dvc_root).resolve() if dvc_root else ROOT


def result_dir(variant: str, seed: int, rate: float | int | str | None = None, results: Path = RESULTS) -> Path:
    """Where the training stage of one (variant, seed) writes its DVC record; with ``rate``, the
    ``lr_grid`` stage at that learning rate (named, as DVC names the stage, after ``str(rate)``); with
    ``TUNED``, the ``confirm`` stage at the variant's tuned rate."""
    folder = results if rate is None else results / "confirm" if rate == TUNED else results / "lr_grid"
    return folder / record_name(variant, seed, rate)


def chosen_file(variant: str, results: Path = RESULTS) -> Path:
    """The ``choose`` stage's output for one variant: its tuned rate (``pipeline.compare.choice``)."""
    return results / "chosen" / f"{variant}.json"


def choice_details(variant: str, results: Path = RESULTS) -> Path:
    """The ``choose`` stage's full account for one variant: the candidates, the grid's edge."""
    return results / "chosen" / f"{variant}.candidates.json"
