"""The steps of one training, in the order the stage runs them (``pipeline.train.stage.train``).

In: a ``TrainSetup`` and ``TrainOptions`` (``pipeline.train.resolve``), the loaded data, the model.
Out: the compiled model (``build``), the run's params and datasets (``log_setup``), the convergence
monitor, the per-epoch history and speed (``fit``), artifacts and final diagnostics (``log_outputs``),
the DVC record's content (``record``) and the progress lines.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import backend, cli, metric_names, tracking
from pipeline.train.artifacts import write_artifacts
from pipeline.train.inputs import fit_inputs
from pipeline.train.resolve import TrainOptions, TrainResult, TrainSetup, flat_params

TEST_BATCH = 1000


def build(setup: TrainSetup, options: TrainOptions):
    """The seeded, compiled model: plain SGD and categorical cross-entropy, as in the notebook."""
    import keras

    from pipeline.train.model import build_lenet

    backend.seed(setup.seed, options.op_determinism)
    settings = setup.params.train
    model = build_lenet(setup.spec)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=settings.learning_rate, momentum=settings.momentum),
                  loss="categorical_crossentropy", metrics=["accuracy"],
                  **{"steps_per_execution": settings.steps_per_execution, **options.compile})
    return model


def log_setup(setup: TrainSetup, model, data: dict) -> dict[str, Any]:
    """The resolved settings as params, the parameter counts, and the datasets as inputs
    (returned by split, for the model's metrics)."""
    import mlflow

    from pipeline.train.model import parameter_counts

    mlflow.log_params(flat_params(setup, data))
    mlflow.log_params({f"model.params_{k}": v for k, v in parameter_counts(model).items()})
    datasets = {}
    splits = (("train", "training"), ("val", "validation"), ("test", "testing"))
    for split, context in (s for s in splits if f"y_{s[0]}" in data):
        datasets[split] = (mlflow.data.from_numpy(data[f"x_{split}"], targets=data[f"y_{split}"],
                                                  name=f"mnist-{split}"), context)
    tracking.log_datasets(datasets)  # safe when trainings log the same new dataset at once
    return {split: dataset for split, (dataset, _) in datasets.items()}


def convergence_monitor(setup: TrainSetup, data: dict):
    """The held-out accuracy every ``convergence.every_steps`` steps, logged as it is measured; None when off."""
    import mlflow

    from pipeline.train.convergence import ConvergenceMonitor, held_out

    settings = setup.params.convergence
    if not settings.enabled:
        return None
    idx = held_out(len(data["y_test"]), settings.images)
    return ConvergenceMonitor(data["x_test"][idx], data["y_test"][idx], settings.every_steps,
                              lambda step, accuracy: mlflow.log_metric(metric_names.CONVERGENCE_ACCURACY, accuracy,
                                                                       step=step))


def fit(model, data: dict, setup: TrainSetup, options: TrainOptions, callbacks: list
        ) -> tuple[list[dict], dict[str, float]]:
    """Train for the configured epochs; the history has one row per epoch (train and test metrics)."""
    import keras

    from pipeline.train.callbacks import DivergenceGuard, EpochLogger, SignalGuard
    from pipeline.train.inputs import batches

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


def monitors(setup: TrainSetup, model, data: dict) -> tuple[Any, Any, list]:
    """The diagnostics (None when all are off), the convergence monitor (None when off) and the callbacks
    they add to ``fit``."""
    from pipeline.train.diagnostics import RunDiagnostics

    settings = setup.params.diagnostics
    diag = RunDiagnostics(settings, model, data) if settings.any else None
    callbacks = [diag.monitor] if diag is not None and diag.monitor is not None else []
    convergence = convergence_monitor(setup, data)
    return diag, convergence, callbacks + ([convergence] if convergence is not None else [])


def log_speed(speed: dict, convergence) -> None:
    """Timing and divergence of the finished ``fit`` (the convergence monitor's last check is taken here)."""
    import mlflow

    if convergence is not None:
        convergence.finish()
        speed["convergence_seconds"] = convergence.seconds
    # The last epoch's test metrics are the final ones; logging them again (at step 0)
    # would add a spurious point to the per-epoch curves.
    mlflow.log_metrics({metric_names.TIMING[k]: v for k, v in speed.items() if k in metric_names.TIMING})
    if "diverged_at_step" in speed:
        mlflow.log_metric(metric_names.DIVERGED_AT_STEP, speed["diverged_at_step"])
    mlflow.set_tag(metric_names.TAG_DIVERGED, str("diverged_at_step" in speed).lower())


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


def record(setup: TrainSetup, run_info, metrics: dict, model) -> dict[str, Any]:
    from pipeline.train.model import parameter_counts

    grid = {} if setup.grid_rate is None else {"learning_rate": setup.grid_rate,
                                                 "validation_images": setup.params.lr_grid.validation_images}
    tuned = {} if setup.tuned_rate is None else {"learning_rate": setup.tuned_rate, "part": setup.part}
    return {"run_id": run_info.run_id, "experiment_id": run_info.experiment_id, "variant": setup.spec.name,
            "seed": setup.seed, **grid, **tuned,
            **metrics, "parameters": parameter_counts(model)["total"]}


def say_start(setup: TrainSetup, model, data: dict, run_id: str) -> None:
    from pipeline.train.model import parameter_counts

    print(f"training {setup.run_name}: {setup.spec.describe()}; {parameter_counts(model)['total']:,} parameters; "
          f"{len(data['y_train'])} images, {setup.params.train.epochs} epoch(s), run {run_id}", flush=True)


def say_done(setup: TrainSetup, result: TrainResult) -> None:
    m = result.metrics
    checks = f", held-out checks {m['convergence_seconds']:.1f} s of it" if "convergence_seconds" in m else ""
    if "diverged_at_step" in m:
        from pipeline.train.callbacks import DIVERGED_LOSS

        print(f"{setup.run_name} DIVERGED: the training loss became NaN or infinite, or an epoch's mean above "
              f"{DIVERGED_LOSS:.1f} (twice a uniform guess's), at optimizer step "
              f"{m['diverged_at_step']} (learning rate {setup.params.train.learning_rate:g}); training stopped there",
              flush=True)
    print(f"done {setup.run_name}: test loss {m['test_loss']:.4f}, test accuracy {m['test_accuracy']:.4f}, "
          f"{m['train_seconds']:.1f} s ({m['images_per_second']:.0f} images/s{checks}); run {result.run_id}",
          flush=True)
