"""What a training is, resolved and checked before anything is trained or logged.

In: the variant name, the seed, the validated ``Params`` (with command-line overrides applied)
and, for a point of the learning-rate grid, its rate; for a confirmation, the ``choose`` stage's file
(``tuned_rate``: the rate the variant was tuned to, ``pipeline.compare.choice`` writes it).
Out: a ``TrainSetup`` (spec, seed, experiment, data folder and summary, run label), the MLflow
tags and flat params a run is logged with, and the ``TrainOptions``/``TrainResult`` types the
stage takes and returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.core import store
from pipeline.core import labels, metric_names, paths, tracking
from pipeline.core.errors import UserError
from pipeline.core.fields import MAX_SEED
from pipeline.core.params import Params, VariantSpec
from pipeline.data import prepared as prepared_data


@dataclass(frozen=True)
class TrainOptions:
    """How a caller (benchmark, test, cluster executor) runs a training without changing its math.

    ``callbacks`` are added to ``fit`` after the stage's own; ``compile`` holds extra
    ``model.compile`` keyword arguments (e.g. ``jit_compile``); ``op_determinism`` off
    trades reproducibility for speed; ``inputs`` is ``batches`` (the stage's seeded
    input, ``pipeline.train.inputs.batches``) or ``arrays`` (NumPy arrays straight into ``fit``).
    """

    callbacks: Sequence[Any] = ()
    compile: dict[str, Any] = field(default_factory=dict)
    op_determinism: bool = True
    inputs: str = "batches"


@dataclass(frozen=True)
class TrainSetup:
    """Everything a training needs, resolved and checked before anything is trained or logged."""

    params: Params
    spec: VariantSpec
    seed: int
    experiment_id: str
    prepared: Path
    data_summary: dict
    grid_rate: float | None = None  # a learning-rate grid training at this rate (see ``lr_grid`` in params)
    tuned_rate: float | None = None  # a confirmation at the variant's tuned rate (see ``confirm`` in params)

    @property
    def run_name(self) -> str:
        rate = labels.TUNED if self.tuned_rate is not None else self.grid_rate
        return labels.run_label(self.spec.name, self.seed, rate)

    @property
    def part(self) -> str:
        return (metric_names.PART_LR_GRID if self.grid_rate is not None
                else metric_names.PART_CONFIRM if self.tuned_rate is not None else metric_names.PART_STUDY)

    @property
    def registered(self) -> bool:
        """Only the study's models become versions of the registered model (their aliases are its runs')."""
        return self.part == metric_names.PART_STUDY

    @property
    def model_name(self) -> str:
        return f"lenet5-{self.run_name}".replace(".", "_")  # MLflow refuses '.' in a logged model's name


@dataclass
class TrainResult:
    """What one training made: the model, its history, its final metrics and where it was logged."""

    run_id: str
    experiment_id: str
    model_id: str
    model: Any
    history: list[dict]
    metrics: dict[str, float]
    record: dict[str, Any]
    diagnostics_seconds: float = 0.0
    convergence: list[dict] = field(default_factory=list)  # {"step", "test_accuracy"} (convergence.csv)


def grid_params(params: Params, grid_rate: float | None, overrides: dict | None) -> Params:
    """For a point of the learning-rate grid: its rate, and ``lr_grid.epochs`` unless ``--epochs`` was given.
    The choice reads validation metrics only, so a grid training measures nothing else: no diagnostics,
    no held-out convergence checks (and, in ``train``, no model registration)."""
    if grid_rate is None:
        return params
    # Checked here, before it becomes train.learning_rate, so the error names the flag given.
    if not grid_rate > 0:
        raise UserError(f"--grid-rate = {grid_rate} is invalid: must be a learning rate > 0")
    grid_train: dict = {"learning_rate": grid_rate}
    if params.lr_grid.epochs is not None and (overrides or {}).get("epochs") is None:
        grid_train["epochs"] = params.lr_grid.epochs  # a shorter grid; --epochs still wins
    grid = params.with_train(grid_train)
    return grid.model_copy(update={"diagnostics": grid.diagnostics.model_copy(update={"enabled": False}),
                                   "convergence": grid.convergence.model_copy(update={"enabled": False})})


def tuned_rate(path: Path, variant: str) -> float:
    """The learning rate the ``choose`` stage picked for ``variant`` (its file: ``--rate-from``)."""
    how = f"run `dvc repro choose@{variant}` (it needs lr_grid.learning_rates and the grid's trainings)"
    try:
        choice = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--rate-from {path}: not found; {how}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"--rate-from {path}: not a chosen-rate file (not JSON); {how}") from None
    if not isinstance(choice, dict) or choice.get("variant") != variant:
        found = choice.get("variant") if isinstance(choice, dict) else None
        raise UserError(f"--rate-from {path} holds the choice for {found!r}, not for {variant!r}")
    rate = choice.get("learning_rate")
    if rate is None:
        raise UserError(f"--rate-from {path}: no rate was chosen for {variant} ({choice.get('reason', 'no reason given')})")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
        raise UserError(f"--rate-from {path}: learning_rate = {rate!r} is not a rate > 0; {how}")
    return float(rate)


def tuned_params(params: Params, variant: str, rate_from: Path | None, grid_rate: float | None,
                 overrides: dict | None) -> tuple[Params, float | None]:
    """For a confirmation (``--rate-from``): the params at the variant's tuned rate, and that rate."""
    if rate_from is None:
        return params, None
    if grid_rate is not None or (overrides or {}).get("learning_rate") is not None:
        given = "--grid-rate" if grid_rate is not None else "--learning-rate"
        raise UserError(f"--rate-from and {given} both set the learning rate; give one of them")
    rate = tuned_rate(rate_from, variant)
    return params.with_train({"learning_rate": rate}), rate


def resolve(variant: str, seed: int, params: Params, prepared: Path | None,
            grid_rate: float | None = None, tuned: float | None = None) -> TrainSetup:
    """The variant's spec, the experiment (failing fast when the store is unreachable) and the data."""
    spec = params.variant(variant)
    if not 0 <= seed < MAX_SEED:
        raise UserError(f"--seed = {seed} is invalid: must be from 0 to {MAX_SEED - 1}")
    experiment_id = tracking.prepare_experiment(params.mlflow.experiment,  # a store that is down fails first
                                                variants=list(params.variants))
    prepared = prepared or paths.PREPARED
    if not prepared_data.exists(prepared):
        raise UserError(f"no prepared data in {prepared}; run `dvc repro normalize` (or `python -m pipeline.data`, "
                        "which makes it without DVC) first")
    summary_path = prepared.parent / "summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return TrainSetup(params, spec, seed, experiment_id, prepared, data_summary, grid_rate, tuned)


def run_tags(setup: TrainSetup, dvc_stage: str) -> dict[str, str]:
    tags = {"variant": setup.spec.name, "seed": str(setup.seed), "git_commit": git_commit(),
            "dvc_stage": dvc_stage, "tracking_store": store.redact(store.tracking_uri()),
            metric_names.TAG_PART: setup.part}
    if setup.grid_rate is not None:
        tags.update({metric_names.TAG_LR_GRID: "true", metric_names.TAG_LEARNING_RATE: f"{setup.grid_rate:g}"})
    if setup.tuned_rate is not None:
        tags[metric_names.TAG_LEARNING_RATE] = f"{setup.tuned_rate:g}"
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def flat_params(setup: TrainSetup, data: dict) -> dict[str, Any]:
    flat = {f"variant.{k}": v for k, v in setup.spec.model_dump().items()}
    flat.update(setup.params.train.flat())
    flat.update({"train.seed": setup.seed, "train.optimizer": "SGD", "train.loss": "categorical_crossentropy",
                 "data.n_train": len(data["y_train"]), "data.n_test": len(data["y_test"]),
                 "data.scale": setup.data_summary.get("scale", "")})
    if "y_val" in data:  # a grid training: its validation split, fixed by the seed
        flat.update({"data.n_validation": len(data["y_val"]), "lr_grid.validation_images": len(data["y_val"]),
                     "lr_grid.validation_split_seed": setup.seed})
    for split in ("train", "test"):
        flat[f"data.{split}_digest"] = setup.data_summary.get(split, {}).get("digest", "")
    flat.update({f"diagnostics.{k}": v for k, v in setup.params.diagnostics.model_dump().items()})
    convergence = setup.params.convergence
    flat.update({"convergence.enabled": convergence.enabled, "convergence.every_steps": convergence.every_steps,
                 "convergence.images": min(convergence.images, len(data["y_test"]))})
    return flat


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
