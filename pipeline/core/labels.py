"""The names a training goes by, defined once.

In: a variant name, a seed, and a rate: None for the study's training, a number for a point of the
learning-rate grid, or ``TUNED`` for a confirmation at the variant's tuned rate.
Out: ``run_label`` (the MLflow run name and the name in progress lines: ``bn_hidden-s0``,
``dropout-s1-lr0.3``, ``dropout-s10-tuned``), ``stage_name`` (the DVC stage: ``train@bn_hidden-0``,
``lr_grid@dropout-1-0.3``, ``confirm@dropout-10``) and ``record_name`` (the folder of its DVC record
under ``results/``, ``results/lr_grid/`` or ``results/confirm/``: ``pipeline.core.paths.result_dir``).
DVC names a grid stage after the rate as written in ``params.yaml`` (``str(rate)``: ``1.0`` stays
``1.0``); the run label writes the rate as a number (``1``), the same however it was written.
"""

from __future__ import annotations

TUNED = "tuned"  # the "rate" of a confirmation: the one its choose stage picked


def run_label(variant: str, seed: int, rate: float | int | str | None = None) -> str:
    if rate == TUNED:
        return f"{variant}-s{seed}-tuned"
    return f"{variant}-s{seed}" + ("" if rate is None else f"-lr{float(rate):g}")


def stage_name(variant: str, seed: int, rate: float | int | str | None = None) -> str:
    if rate == TUNED:
        return f"confirm@{variant}-{seed}"
    return f"train@{variant}-{seed}" if rate is None else f"lr_grid@{variant}-{seed}-{rate}"


def record_name(variant: str, seed: int, rate: float | int | str | None = None) -> str:
    return f"{variant}-s{seed}" if rate is None or rate == TUNED else f"{variant}-s{seed}-lr{rate}"
