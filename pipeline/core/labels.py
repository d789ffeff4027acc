"""The names a training goes by, defined once.

In: a variant name, a seed, and for a point of the learning-rate grid its rate.
Out: ``run_label`` (the MLflow run name and the name in progress lines: ``bn_hidden-s0``,
``dropout-s1-lr0.3``), ``stage_name`` (the DVC stage: ``train@bn_hidden-0``,
``lr_grid@dropout-1-0.3``) and ``record_name`` (the folder of its DVC record under ``results/``);
for a confirmation at the tuned rate, ``confirm_label`` (``dropout-s10-tuned``) and ``confirm_stage``
(``confirm@dropout-10``), its record in ``results/confirm/<record_name>``.
DVC names a grid stage after the rate as written in ``params.yaml`` (``str(rate)``: ``1.0`` stays
``1.0``); the run label writes the rate as a number (``1``), the same however it was written.
"""

from __future__ import annotations


def run_label(variant: str, seed: int, rate: float | int | str | None = None) -> str:
    return f"{variant}-s{seed}" + ("" if rate is None else f"-lr{float(rate):g}")


def stage_name(variant: str, seed: int, rate: float | int | None = None) -> str:
    return f"train@{variant}-{seed}" if rate is None else f"lr_grid@{variant}-{seed}-{rate}"


def record_name(variant: str, seed: int, rate: float | int | None = None) -> str:
    return f"{variant}-s{seed}" if rate is None else f"{variant}-s{seed}-lr{rate}"


def confirm_label(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}-tuned"


def confirm_stage(variant: str, seed: int) -> str:
    return f"confirm@{variant}-{seed}"
