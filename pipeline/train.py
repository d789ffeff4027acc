"""Stage ``train``: one LeNet-5 variant, one seed, one MLflow run.

In: ``data/prepared`` (made first if missing), ``params.yaml`` (the whole file is validated;
this stage reads ``variants.<name>``, ``train``, ``mlflow``, ``diagnostics`` and ``convergence``) and
command-line overrides (``--epochs`` …) for ``mlflow run``. The seed fixes Python, NumPy,
initialisers, shuffling and dropout masks, with the backend's deterministic mode on
(``train.backend``: TensorFlow or JAX, see ``pipeline.backend``), so a (variant, seed)
pair gives the same numbers twice on one machine.

Out: an MLflow run ``<variant>-s<seed>`` in the study's experiment holding the resolved
settings as params, per-epoch metrics (names in ``pipeline.metric_names``), BN weights,
predictions, confusion matrix, model summary, diagnostics, the held-out accuracy every
``convergence.every_steps`` optimizer steps, and the Keras model: a logged
model ``lenet5-<variant>-s<seed>`` carrying the final epoch's metrics with their datasets,
also registered as a version of the registered model named like the experiment, with alias
``<variant>-s<seed>``; with ``--record DIR`` also the
DVC record in ``DIR`` (``record.json``, ``metrics.json``, ``history.csv``, ``convergence.csv``), written only
after the run finished. ``train(...)`` returns all of it as a ``TrainResult``.

``--grid-rate R`` (the ``lr_grid`` stage) trains one point of the learning-rate grid instead: rate
R, for ``lr_grid.epochs`` epochs when set (else ``train.epochs``), on the training images minus
``lr_grid.validation_images`` of them (chosen by the seed),
whose loss and accuracy are logged every epoch beside the test set's; the run is
``<variant>-s<seed>-lr<R>`` with tags ``lr_grid`` and ``learning_rate``, its model is not registered.
A training whose loss becomes NaN or infinite, or whose epoch mean is above twice a uniform
guess's (``pipeline.callbacks.DIVERGED_LOSS``), stops there and is logged, recorded and reported
as diverged (tag ``diverged``, metric ``timing/diverged_at_step``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline import backend, cli, metric_names, paths, tracking
from pipeline.artifacts import write_artifacts, write_record
from pipeline.cli import TRAIN_OVERRIDE_FLAGS, number, run_main, train_overrides, whole_number
from pipeline.errors import UserError
from pipeline.fields import MAX_SEED
from pipeline.inputs import carve_validation, ensure_prepared, fit_inputs, load_data
from pipeline.logged_model import log_model
from pipeline.params import Params, VariantSpec

TEST_BATCH = 1000


@dataclass(frozen=True)
class TrainOptions:
    """How a caller (benchmark, test, cluster executor) runs a training without changing its math.

    ``callbacks`` are added to ``fit`` after the stage's own; ``compile`` holds extra
    ``model.compile`` keyword arguments (e.g. ``jit_compile``); ``op_determinism`` off
    trades reproducibility for speed; ``inputs`` is ``batches`` (the stage's seeded
    input, ``pipeline.inputs.batches``) or ``arrays`` (NumPy arrays straight into ``fit``).
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

    @property
    def run_name(self) -> str:
        rate = "" if self.grid_rate is None else f"-lr{self.grid_rate:g}"
        return f"{self.spec.name}-s{self.seed}{rate}"

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


# --- The steps --------------------------------------------------------------------------------


def resolve(variant: str, seed: int, params: Params, prepared: Path | None,
            grid_rate: float | None = None) -> TrainSetup:
    """The variant's spec, the experiment (failing fast when the store is unreachable) and the data."""
    import json

    spec = params.variant(variant)
    if not 0 <= seed < MAX_SEED:
        raise UserError(f"--seed = {seed} is invalid: must be from 0 to {MAX_SEED - 1}")
    experiment_id = tracking.prepare_experiment(params.mlflow.experiment)
    if prepared is None:
        ensure_prepared(params)
        prepared = paths.PREPARED
    summary_path = prepared.parent / "summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return TrainSetup(params, spec, seed, experiment_id, prepared, data_summary, grid_rate)


def build(setup: TrainSetup, options: TrainOptions):
    """The seeded, compiled model: plain SGD and categorical cross-entropy, as in the notebook."""
    import keras

    from pipeline.model import build_lenet

    backend.seed(setup.seed, options.op_determinism)
    settings = setup.params.train
    model = build_lenet(setup.spec)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=settings.learning_rate, momentum=settings.momentum),
                  loss="categorical_crossentropy", metrics=["accuracy"],
                  **{"steps_per_execution": settings.steps_per_execution, **options.compile})
    return model


def run_tags(setup: TrainSetup, dvc_stage: str) -> dict[str, str]:
    tags = {"variant": setup.spec.name, "seed": str(setup.seed), "git_commit": _git_commit(),
            "dvc_stage": dvc_stage, "tracking_store": tracking.redact(tracking.tracking_uri())}
    if setup.grid_rate is not None:
        tags.update({metric_names.TAG_LR_GRID: "true", metric_names.TAG_LEARNING_RATE: f"{setup.grid_rate:g}"})
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def log_setup(setup: TrainSetup, model, data: dict) -> dict[str, Any]:
    """The resolved settings as params, the parameter counts, and the datasets as inputs
    (returned by split, for the model's metrics)."""
    import mlflow

    from pipeline.model import parameter_counts

    mlflow.log_params(flat_params(setup, data))
    mlflow.log_params({f"model.params_{k}": v for k, v in parameter_counts(model).items()})
    datasets = {}
    splits = (("train", "training"), ("val", "validation"), ("test", "testing"))
    for split, context in (s for s in splits if f"y_{s[0]}" in data):
        datasets[split] = (mlflow.data.from_numpy(data[f"x_{split}"], targets=data[f"y_{split}"],
                                                  name=f"mnist-{split}"), context)
    tracking.log_datasets(datasets)  # safe when trainings log the same new dataset at once
    return {split: dataset for split, (dataset, _) in datasets.items()}


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


def convergence_monitor(setup: TrainSetup, data: dict):
    """The held-out accuracy every ``convergence.every_steps`` steps, logged as it is measured; None when off."""
    import mlflow

    from pipeline.convergence import ConvergenceMonitor

    settings = setup.params.convergence
    if not settings.enabled:
        return None
    n = min(settings.images, len(data["y_test"]))
    return ConvergenceMonitor(data["x_test"][:n], data["y_test"][:n], settings.every_steps,
                              lambda step, accuracy: mlflow.log_metric(metric_names.CONVERGENCE_ACCURACY, accuracy,
                                                                       step=step))


def fit(model, data: dict, setup: TrainSetup, options: TrainOptions, callbacks: list
        ) -> tuple[list[dict], dict[str, float]]:
    """Train for the configured epochs; the history has one row per epoch (train and test metrics)."""
    import keras

    from pipeline.callbacks import DivergenceGuard, EpochLogger, SignalGuard
    from pipeline.inputs import batches

    settings = setup.params.train
    history: list[dict] = []
    y_train = keras.utils.to_categorical(data["y_train"], 10)
    eval_batch = max(settings.batch_size, TEST_BATCH)
    test_batches = batches(data["x_test"], keras.utils.to_categorical(data["y_test"], 10), eval_batch)
    validation_batches = (batches(data["x_val"], keras.utils.to_categorical(data["y_val"], 10), eval_batch)
                          if "y_val" in data else None)
    divergence = DivergenceGuard()
    start = time.perf_counter()
    with cli.signals_at_safe_points():  # Ctrl-C or kill: raised at the next batch, not inside TensorFlow
        model.fit(**fit_inputs(data["x_train"], y_train, settings, setup.seed, options.inputs),
                  epochs=settings.epochs, verbose=0,
                  callbacks=[SignalGuard(), divergence, EpochLogger(test_batches, history, validation_batches),
                             *callbacks, *options.callbacks])
    seconds = time.perf_counter() - start
    images = trained_images(len(y_train), settings.batch_size, len(history), divergence.diverged_at_step)
    speed = {"train_seconds": seconds, "images_per_second": images / seconds}
    if divergence.diverged_at_step is not None:
        speed["diverged_at_step"] = divergence.diverged_at_step
    return history, speed


def trained_images(n_train: int, batch_size: int, epochs: int, diverged_at_step: int | None) -> int:
    """Images the optimizer saw: every image of every epoch run, or, for a training stopped at a
    divergence, those of its steps up to that one (a stop mid-epoch still ends that epoch's history)."""
    if diverged_at_step is None:
        return epochs * n_train
    steps_per_epoch = -(-n_train // batch_size)
    whole, rest = divmod(diverged_at_step, steps_per_epoch)
    return whole * n_train + min(rest * batch_size, n_train)


def log_outputs(setup: TrainSetup, model, data: dict, history: list[dict], diagnostics) -> tuple[np.ndarray, float]:
    """Artifacts and final diagnostics; returns the test-set probabilities and the diagnostics' seconds."""
    import mlflow

    probs = model.predict(data["x_test"], batch_size=TEST_BATCH, verbose=0)
    seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="lenet-artifacts-") as tmp:
        write_artifacts(Path(tmp), model, setup.spec, data, probs, history)
        if diagnostics is not None:
            start = time.perf_counter()
            diagnostics.finish(Path(tmp) / "diagnostics", f"{setup.run_name}: inputs of tanh and BN layers (probe batch)")
            seconds = time.perf_counter() - start
        mlflow.log_artifacts(tmp)
    return probs, seconds


# --- The stage --------------------------------------------------------------------------------


def train(variant: str, seed: int, *, params: Params | None = None, params_path: Path = paths.PARAMS,
          overrides: dict | None = None, record_dir: Path | None = None, dvc_stage: str = "",
          prepared: Path | None = None, options: TrainOptions = TrainOptions(),
          grid_rate: float | None = None) -> TrainResult:
    """Train one (variant, seed) as one MLflow run; write the DVC record to ``record_dir`` if given.

    With ``grid_rate``, one point of the learning-rate grid: that learning rate, trained on the
    training images minus ``lr_grid.validation_images`` of them (fixed by the seed), which are
    evaluated every epoch; the model is logged but not registered.
    """
    import mlflow

    from pipeline.training_diagnostics import RunDiagnostics

    params = (params or Params.load(params_path)).with_train(overrides)
    if grid_rate is not None:
        # Checked here, before it becomes train.learning_rate, so the error names the flag given.
        if not grid_rate > 0:
            raise UserError(f"--grid-rate = {grid_rate} is invalid: must be a learning rate > 0")
        grid_train: dict = {"learning_rate": grid_rate}
        if params.lr_grid.epochs is not None and (overrides or {}).get("epochs") is None:
            grid_train["epochs"] = params.lr_grid.epochs  # a shorter grid; --epochs still wins
        params = params.with_train(grid_train)
    backend.activate(params.train.backend, options.op_determinism)  # before anything imports Keras
    setup = resolve(variant, seed, params, prepared, grid_rate)
    data = load_data(setup.params.train, setup.prepared)
    if grid_rate is not None:
        data = carve_validation(data, setup.params.lr_grid.validation_images, seed)
    model = build(setup, options)
    diag = RunDiagnostics(setup.params.diagnostics, model, data["x_test"]) if setup.params.diagnostics.any else None
    callbacks = [diag.monitor] if diag is not None and diag.monitor is not None else []
    convergence = convergence_monitor(setup, data)
    callbacks += [convergence] if convergence is not None else []
    with tracking.mlflow_run(setup.experiment_id, setup.run_name, run_tags(setup, dvc_stage)) as run:
        datasets = log_setup(setup, model, data)
        _say_start(setup, model, data, run.info.run_id)
        history, speed = fit(model, data, setup, options, callbacks)
        if convergence is not None:
            convergence.finish()
            speed["convergence_seconds"] = convergence.seconds
        # The last epoch's test metrics are the final ones; logging them again (at step 0)
        # would add a spurious point to the per-epoch curves.
        mlflow.log_metrics({metric_names.TIMING[k]: v for k, v in speed.items() if k in metric_names.TIMING})
        if "diverged_at_step" in speed:
            mlflow.log_metric(metric_names.DIVERGED_AT_STEP, speed["diverged_at_step"])
        mlflow.set_tag(metric_names.TAG_DIVERGED, str("diverged_at_step" in speed).lower())
        probs, diag_seconds = log_outputs(setup, model, data, history, diag)
        model_id = log_model(model, data["x_test"][:2], probs[:2], run.info.run_id, datasets,
                             name=setup.model_name,
                             registered_name=setup.params.mlflow.experiment if grid_rate is None else None,
                             alias=setup.run_name, tags={"variant": setup.spec.name, "seed": str(setup.seed)})
    final = history[-1]
    metrics = {"test_loss": final["test_loss"], "test_accuracy": final["test_accuracy"],
               **{k: final[k] for k in metric_names.VALIDATION if k in final}, **speed}
    result = TrainResult(run.info.run_id, run.info.experiment_id, model_id, model, history, metrics,
                         _record(setup, run.info, metrics, model), diag_seconds,
                         convergence.curve if convergence is not None else [])
    _say_done(setup, result)
    if record_dir is not None:
        write_record(record_dir, result.record, history, result.convergence)
    return result


def _record(setup: TrainSetup, run_info, metrics: dict, model) -> dict[str, Any]:
    from pipeline.model import parameter_counts

    grid = {} if setup.grid_rate is None else {"learning_rate": setup.grid_rate,
                                                 "validation_images": setup.params.lr_grid.validation_images}
    return {"run_id": run_info.run_id, "experiment_id": run_info.experiment_id, "variant": setup.spec.name,
            "seed": setup.seed, **grid,
            **metrics, "parameters": parameter_counts(model)["total"]}


def _say_start(setup: TrainSetup, model, data: dict, run_id: str) -> None:
    from pipeline.model import parameter_counts

    print(f"training {setup.run_name}: {setup.spec.describe()}; {parameter_counts(model)['total']:,} parameters; "
          f"{len(data['y_train'])} images, {setup.params.train.epochs} epoch(s), run {run_id}", flush=True)


def _say_done(setup: TrainSetup, result: TrainResult) -> None:
    m = result.metrics
    checks = f", held-out checks {m['convergence_seconds']:.1f} s of it" if "convergence_seconds" in m else ""
    if "diverged_at_step" in m:
        from pipeline.callbacks import DIVERGED_LOSS

        print(f"{setup.run_name} DIVERGED: the training loss became NaN or infinite, or an epoch's mean above "
              f"{DIVERGED_LOSS:.1f} (twice a uniform guess's), at optimizer step "
              f"{m['diverged_at_step']} (learning rate {setup.params.train.learning_rate:g}); training stopped there",
              flush=True)
    print(f"done {setup.run_name}: test loss {m['test_loss']:.4f}, test accuracy {m['test_accuracy']:.4f}, "
          f"{m['train_seconds']:.1f} s ({m['images_per_second']:.0f} images/s{checks}); run {result.run_id}",
          flush=True)


def _git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# --- Command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description="Train one LeNet-5 variant.")
    p.add_argument("--variant", required=True, help="a key of 'variants' in params.yaml")
    p.add_argument("--seed", default="0")
    # Overrides of params.yaml 'train'; empty means "as in params.yaml" (what MLproject passes by default).
    for flag in TRAIN_OVERRIDE_FLAGS:
        p.add_argument(f"--{flag}", default="")
    p.add_argument("--grid-rate", default="", help="train as one point of the learning-rate grid at this rate "
                   "(on the training images minus lr_grid.validation_images of them)")
    p.add_argument("--record", type=Path, help="directory for the DVC record (record.json, metrics.json, history.csv)")
    p.add_argument("--dvc-stage", default="", help="the DVC stage name, logged as a tag")
    p.add_argument("--params", type=Path, default=paths.PARAMS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = parse_args(argv)

    def body() -> None:
        # Under `mlflow run`, stopped before training: the launcher's run ends too. A lost server: one line.
        with tracking.launcher_run_ended(), tracking.server_loss_in_one_line():
            train(args.variant, whole_number("seed", args.seed), overrides=train_overrides(args),
                  record_dir=args.record, dvc_stage=args.dvc_stage, params_path=args.params,
                  grid_rate=number("grid-rate", args.grid_rate))

    run_main(body)


if __name__ == "__main__":
    main(sys.argv[1:])
