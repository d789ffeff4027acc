"""Stage ``train``: one LeNet-5 variant, one seed, one MLflow run.

In: ``data/prepared`` (made first if missing), ``params.yaml`` (the whole file is validated;
this stage reads ``variants.<name>``, ``train``, ``mlflow``, ``diagnostics`` and ``convergence``) and
command-line overrides (``--epochs`` …) for ``mlflow run``. The seed fixes Python, NumPy,
initialisers, shuffling and dropout masks, with the backend's deterministic mode on
(``train.backend``: TensorFlow or JAX, see ``pipeline.core.backend``), so a (variant, seed)
pair gives the same numbers twice on one machine.

Out: an MLflow run ``<variant>-s<seed>`` in the study's experiment holding the resolved
settings as params, per-epoch metrics (names in ``pipeline.core.metric_names``), BN weights,
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
guess's (``pipeline.train.callbacks.DIVERGED_LOSS``), stops there and is logged, recorded and reported
as diverged (tag ``diverged``, metric ``timing/diverged_at_step``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core import backend, metric_names, paths, tracking
from pipeline.core.cli import TRAIN_OVERRIDE_FLAGS, number, run_main, train_overrides, whole_number
from pipeline.core.params import Params
from pipeline.train import steps
from pipeline.train.artifacts import write_record
from pipeline.train.inputs import carve_validation, load_data
from pipeline.train.logged_model import log_model
from pipeline.train.resolve import TrainOptions, TrainResult, grid_params, resolve, run_tags, tuned_params

__all__ = ["TrainOptions", "TrainResult", "train", "main"]  # the stage's interface for callers (benchmark, sweep)


def train(variant: str, seed: int, *, params: Params | None = None, params_path: Path = paths.PARAMS,
          overrides: dict | None = None, record_dir: Path | None = None, dvc_stage: str = "",
          prepared: Path | None = None, options: TrainOptions = TrainOptions(),
          grid_rate: float | None = None, rate_from: Path | None = None) -> TrainResult:
    """Train one (variant, seed) as one MLflow run; write the DVC record to ``record_dir`` if given.

    With ``grid_rate``, one point of the learning-rate grid: that learning rate, trained on the
    training images minus ``lr_grid.validation_images`` of them (fixed by the seed), which are
    evaluated every epoch; the model is logged but not registered. With ``rate_from`` (the ``choose``
    stage's file), a confirmation: the study's training at the variant's tuned rate, run
    ``<variant>-s<seed>-tuned``, tagged part=confirm, not registered either.
    """
    params = grid_params((params or Params.load(params_path)).with_train(overrides), grid_rate, overrides)
    params, tuned = tuned_params(params, variant, rate_from, grid_rate, overrides)
    backend.activate(params.train.backend, options.op_determinism)  # before anything imports Keras
    setup = resolve(variant, seed, params, prepared, grid_rate, tuned)
    data = load_data(setup.params.train, setup.prepared)
    if grid_rate is not None:
        data = carve_validation(data, setup.params.lr_grid.validation_images, seed)
    model = steps.build(setup, options)
    diag, convergence, callbacks = steps.monitors(setup, model, data)
    with tracking.mlflow_run(setup.experiment_id, setup.run_name, run_tags(setup, dvc_stage),
                             setup.params.mlflow.system_metrics_seconds) as run:
        datasets = steps.log_setup(setup, model, data)
        steps.say_start(setup, model, data, run.info.run_id)
        history, speed = steps.fit(model, data, setup, options, callbacks)
        steps.log_speed(speed, convergence)
        probs, diag_seconds = steps.log_outputs(setup, model, data, history, diag)
        model_id = log_model(model, data["x_test"][:2], probs[:2], run.info.run_id, datasets,
                             name=setup.model_name,
                             registered_name=setup.params.mlflow.experiment if setup.registered else None,
                             alias=setup.run_name, tags={"variant": setup.spec.name, "seed": str(setup.seed)})
    final = history[-1]
    metrics = {"test_loss": final["test_loss"], "test_accuracy": final["test_accuracy"],
               **{k: final[k] for k in metric_names.VALIDATION if k in final}, **speed}
    result = TrainResult(run.info.run_id, run.info.experiment_id, model_id, model, history, metrics,
                         steps.record(setup, run.info, metrics, model), diag_seconds,
                         convergence.curve if convergence is not None else [])
    steps.say_done(setup, result)
    if record_dir is not None:
        write_record(record_dir, result.record, history, result.convergence)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.stage", description="Train one LeNet-5 variant.")
    p.add_argument("--variant", required=True, help="a key of 'variants' in params.yaml")
    p.add_argument("--seed", default="0")
    # Overrides of params.yaml 'train'; empty means "as in params.yaml" (what MLproject passes by default).
    for flag in TRAIN_OVERRIDE_FLAGS:
        p.add_argument(f"--{flag}", default="")
    p.add_argument("--grid-rate", default="", help="train as one point of the learning-rate grid at this rate "
                   "(on the training images minus lr_grid.validation_images of them)")
    p.add_argument("--rate-from", type=Path, help="train at the learning rate this file holds (the choose stage's "
                   "results/chosen/<variant>.json): a confirmation at the variant's tuned rate")
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
                  grid_rate=number("grid-rate", args.grid_rate), rate_from=args.rate_from)

    run_main(body)
