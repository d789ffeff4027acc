"""Stage ``train``: one LeNet-5 variant, one seed, one MLflow run.

In: ``data/prepared`` (made first if missing), ``params.yaml`` sections ``variants.<name>``,
``train``, ``mlflow`` and ``diagnostics``; command-line overrides (``--epochs`` …) for
``mlflow run``. The seed fixes Python, NumPy, TF initialisers, shuffling and dropout
masks, with TF op determinism on, so a (variant, seed) pair gives the same numbers twice.

Out: an MLflow run ``<variant>-s<seed>`` in the study's experiment holding the resolved
config as params, per-epoch and final metrics, BN weights, predictions, confusion
matrix, model summary, diagnostics, and the Keras model; with ``--record DIR`` also
``DIR/record.json`` (run id, test metrics: ``dvc metrics``) and ``DIR/history.csv``
(per-epoch curves: ``dvc plots``), written only after the run finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline import paths, tracking
from pipeline.config import (DiagnosticsConfig, TrainConfig, UserError, VariantSpec, diagnostics_config,
                             load_params, run_main, section, seeds as read_seeds, train_config, variant_names,
                             variant_spec)

log = logging.getLogger("pipeline.train")

METRIC_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
COADAPTATION_LAYER = "fc1_tanh"  # the Dense(84) units after tanh


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description="Train one LeNet-5 variant.")
    p.add_argument("--variant", required=True, help="a key of 'variants' in params.yaml")
    p.add_argument("--seed", default="0")
    # Overrides of params.yaml 'train'; empty means "as in params.yaml" (what MLproject passes by default).
    for flag in ("epochs", "batch-size", "learning-rate", "momentum", "train-limit", "test-limit"):
        p.add_argument(f"--{flag}", default="")
    p.add_argument("--record", type=Path, help="directory for the DVC record (record.json, history.csv)")
    p.add_argument("--dvc-stage", default="", help="the DVC stage name, logged as a tag")
    p.add_argument("--params", type=Path, default=paths.PARAMS)
    return p.parse_args(argv)


def _number(flag: str, text: str):
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--{flag} = {text!r} is not a number") from None
    return int(value) if value.is_integer() and flag not in ("learning-rate", "momentum") else value


def _seed(text: str) -> int:
    value = _number("seed", text)
    if value is None or not float(value).is_integer() or value < 0:
        raise UserError(f"--seed = {text!r} is invalid: must be a whole number >= 0")
    return int(value)


def overrides_from(args: argparse.Namespace) -> dict:
    return {
        "epochs": _number("epochs", args.epochs),
        "batch_size": _number("batch-size", args.batch_size),
        "learning_rate": _number("learning-rate", args.learning_rate),
        "momentum": _number("momentum", args.momentum),
        "train_limit": _number("train-limit", args.train_limit),
        "test_limit": _number("test-limit", args.test_limit),
    }


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python, NumPy and the backend's global seed
    tf.config.experimental.enable_op_determinism()


def load_data(cfg: TrainConfig, prepared: Path = paths.PREPARED) -> dict[str, np.ndarray]:
    from pipeline.normalize import load_prepared

    arrays = load_prepared(prepared)
    out = {}
    for split, limit in (("train", cfg.train_limit), ("test", cfg.test_limit)):
        n = len(arrays[f"y_{split}"]) if limit is None else min(limit, len(arrays[f"y_{split}"]))
        out[f"x_{split}"] = np.ascontiguousarray(arrays[f"x_{split}"][:n])
        out[f"y_{split}"] = np.ascontiguousarray(arrays[f"y_{split}"][:n]).astype(np.int64)
    return out


def ensure_prepared(params: dict) -> None:
    """``mlflow run`` outside DVC: make the data the way the DVC stages would."""
    if all((paths.PREPARED / f"{k}.npy").exists() for k in ("x_train", "y_train", "x_test", "y_test")):
        return
    from pipeline.download import download
    from pipeline.normalize import normalize

    log.info("data/prepared is missing: running the download and normalize stages first")
    download(section(params, "download"))
    normalize(section(params, "normalize"))


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """``(x, y)`` as a ``tf.data`` pipeline of batches: the input side of ``fit`` and ``evaluate``.

    It does what Keras does with NumPy arrays (a new permutation of the indices every
    epoch, one gather per batch, one batch prefetched), with one difference: tf.data's
    autotuner is off, so the input side never sizes itself up against training on a small
    machine. On 2 cores, Keras' autotuned pipeline ran some whole epochs at about 55% speed
    (2,900 instead of 5,100 images/s for ``bn_hidden``: 5 of 12 epochs in a probe, 0 of 12
    with the autotuner off) and its first epoch is slower; see ``reports/benchmark.md``.
    Shuffling is seeded: the same seed gives the same order, and every epoch a new one.
    """
    import tensorflow as tf

    n = len(x)
    xs, ys = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    order = tf.data.Dataset.range(n)
    if shuffle:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = order.batch(batch_size).map(lambda i: (tf.gather(xs, i), tf.gather(ys, i))).prefetch(1)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return ds.with_options(options)


def fit_inputs(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int) -> dict:
    """Keyword arguments for ``model.fit`` that feed the training data (shuffled by ``batches``)."""
    return {"x": batches(x, y, cfg.batch_size, shuffle=cfg.shuffle, seed=seed), "shuffle": False}


def compile_model(spec: VariantSpec, cfg: TrainConfig):
    import keras

    from pipeline.model import build_lenet

    model = build_lenet(spec)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=cfg.steps_per_execution,
    )
    return model


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def flat_params(spec: VariantSpec, cfg: TrainConfig, seed: int, data: dict, summary: dict,
                diag_cfg: DiagnosticsConfig) -> dict:
    import dataclasses

    flat = {f"variant.{k}": v for k, v in dataclasses.asdict(spec).items()}
    flat["variant.name"] = spec.name
    flat.update(cfg.flat())
    flat["train.seed"] = seed
    flat["train.optimizer"] = "SGD"
    flat["train.loss"] = "categorical_crossentropy"
    flat["data.n_train"] = len(data["y_train"])
    flat["data.n_test"] = len(data["y_test"])
    for split in ("train", "test"):
        flat[f"data.{split}_digest"] = summary.get(split, {}).get("digest", "")
    flat["data.scale"] = summary.get("scale", "")
    flat.update({f"diagnostics.{k}": v for k, v in dataclasses.asdict(diag_cfg).items()})
    return flat


@contextmanager
def mlflow_run(experiment_id: str, run_name: str, tags: dict):
    """Start the run; under ``mlflow run`` reuse the launcher's run when it is in our experiment.

    The run ends FINISHED only when the body completes; an interrupt ends it KILLED,
    any other error FAILED, so a report can never pick up a half-run.
    """
    import mlflow

    launcher_id = os.environ.get("MLFLOW_RUN_ID")
    run_id = None
    if launcher_id:
        launcher = mlflow.MlflowClient().get_run(launcher_id)
        if launcher.info.experiment_id == experiment_id:
            run_id = launcher_id
        else:
            # `mlflow run` without --experiment-name puts its run in another experiment;
            # training goes to the study's experiment and the launcher's run points at it.
            os.environ.pop("MLFLOW_RUN_ID")
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name, tags=tags)
    if launcher_id and run_id is None:
        client = mlflow.MlflowClient()
        client.set_tag(launcher_id, "pipeline.training_run", run.info.run_id)
        client.set_tag(launcher_id, "mlflow.note.content",
                       f"Training was logged in experiment {experiment_id}, run {run.info.run_id}. "
                       "Pass --experiment-name to `mlflow run` to log it here instead.")
    try:
        yield run
    except KeyboardInterrupt as exc:
        _release_store(exc)
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def _release_store(exc: BaseException) -> None:
    """Drop the frames an interrupt left behind, and with them any half-read SQLite cursor.

    A signal that lands inside an MLflow call on a SQLite store can leave a statement open in
    those frames; its lock, held by this very process, would make ending the run wait out
    MLflow's 20 s busy timeout and fail, leaving the run RUNNING. An interrupt's traceback
    is never shown (``run_main`` prints one line), so nothing is lost.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            tb.tb_next, tb = None, tb.tb_next
        exc = exc.__context__
    gc.collect()


def _epoch_logger(x_test, y_test_onehot, batch_size: int, history: list[dict]):
    import keras
    import mlflow

    test_batches = batches(x_test, y_test_onehot, max(batch_size, 1000))

    class EpochLogger(keras.callbacks.Callback):
        """Test metrics after every epoch, logged with step = epoch (1-based)."""

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            test_loss, test_acc = self.model.evaluate(test_batches, verbose=0)
            row = {"epoch": epoch + 1, "train_loss": float(logs["loss"]), "train_accuracy": float(logs["accuracy"]),
                   "test_loss": float(test_loss), "test_accuracy": float(test_acc)}
            history.append(row)
            mlflow.log_metrics({k: row[k] for k in METRIC_KEYS}, step=row["epoch"])
            print(f"epoch {row['epoch']}/{self.params['epochs']}: loss {row['train_loss']:.4f} "
                  f"acc {row['train_accuracy']:.4f} | test loss {row['test_loss']:.4f} "
                  f"acc {row['test_accuracy']:.4f}", flush=True)

    return EpochLogger()


def _signal_guard():
    import keras

    from pipeline import config

    class SignalGuard(keras.callbacks.Callback):
        """Raises, at the next batch, an interrupt Python swallowed (see config.pending_signals)."""

        def on_train_batch_begin(self, batch, logs=None):
            config.raise_pending_signal()

    return SignalGuard()


def write_artifacts(out: Path, model, spec: VariantSpec, data: dict, probs: np.ndarray, history: list[dict]) -> None:
    """Everything a run keeps besides metrics and the model, into ``out``."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    from pipeline import figures
    from pipeline.model import bn_layers, bn_site

    y = data["y_test"]
    pred = probs.argmax(axis=1)
    pd.DataFrame({"index": np.arange(len(y)), "label": y, "predicted": pred,
                  "probability": probs[np.arange(len(y)), pred].round(6), "correct": (pred == y).astype(int)}
                 ).to_csv(out / "predictions.csv", index=False)
    cm = confusion_matrix(y, pred, labels=list(range(10)))
    pd.DataFrame(cm, index=[f"true_{i}" for i in range(10)], columns=[f"pred_{i}" for i in range(10)]
                 ).to_csv(out / "confusion_matrix.csv")
    figures.confusion_matrix(cm, out / "confusion_matrix.png", f"{spec.name}: test confusion matrix")
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)

    lines: list[str] = []
    # Keras renders with rich, which crops to the console: 80 columns when stdout is not a
    # terminal (DVC, mlflow run). A wider table silently loses its "Param #" column.
    model.summary(print_fn=lambda line, *a, **k: lines.append(line), line_length=80)
    (out / "model_summary.txt").write_text("\n".join(lines) + "\n")

    bn_dir = out / "bn_weights"  # created only for a model with BN layers
    summary = {}
    weights = {}
    for layer in bn_layers(model):
        site = bn_site(layer.name)
        bn_dir.mkdir(exist_ok=True)
        w = {"gamma": layer.gamma.numpy(), "beta": layer.beta.numpy(),
             "moving_mean": layer.moving_mean.numpy(), "moving_variance": layer.moving_variance.numpy()}
        np.savez(bn_dir / f"{site}.npz", **w)
        weights[site] = w
        summary[site] = {name: {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
                                "min": float(v.min()), "max": float(v.max())} for name, v in w.items()}
    if weights:
        (bn_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        figures.bn_distributions({spec.name: weights}, bn_dir / "distributions.png")


class Diagnostics:
    """Wires pipeline.diagnostics into a training run: metrics while training, artifacts after.

    Only the diagnostics switched on in ``cfg`` run; ``monitor`` (the callback for ``fit``)
    is None when neither covariate shift nor co-adaptation is on.
    """

    def __init__(self, cfg: DiagnosticsConfig, model, x_test: np.ndarray):
        from pipeline import diagnostics

        self.cfg = cfg
        self.model = model
        self.probe_x = x_test[-min(cfg.probe_size, len(x_test)):]
        self.variance_x = x_test[:min(cfg.variance_shift_images, len(x_test))]
        self.monitor = None
        if cfg.covariate_shift or cfg.coadaptation:
            self.monitor = diagnostics.CovariateShiftMonitor(
                self.probe_x, cfg.every_n_batches, self._on_record,
                coadaptation_layer=COADAPTATION_LAYER if cfg.coadaptation else None,
                covariate_shift=cfg.covariate_shift)

    def _on_record(self, step: int, record: dict, coadaptation: float | None) -> None:
        import mlflow

        metrics = {f"ics.{k}": v for k, v in record.items()}
        if coadaptation is not None:
            metrics["coadaptation.fc1"] = coadaptation
        mlflow.log_metrics(metrics, step=step)

    def finish(self, out: Path, title: str) -> dict:
        """After training: final measurements as metrics, history/summary/figure as artifacts."""
        import mlflow
        import pandas as pd

        from pipeline import diagnostics

        start = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        summary: dict = {"probe_size": len(self.probe_x), "every_n_batches": self.cfg.every_n_batches}
        metrics: dict[str, float] = {}
        monitor = self.monitor
        if monitor is not None and (not monitor.history or monitor.history[-1][0] < monitor.steps_done):
            monitor.record(monitor.steps_done)  # the end of training is a checkpoint too
        if self.cfg.covariate_shift:
            summary["drift"] = diagnostics.drift_summary(monitor.history)
            pd.DataFrame([{"step": s, **r} for s, r in monitor.history]).to_csv(out / "history.csv", index=False)
            diagnostics.plot_percentiles(monitor.history, out / "covariate_shift.png", title)
        if self.cfg.coadaptation:
            summary["coadaptation_fc1"] = metrics["coadaptation_fc1"] = monitor.coadaptation_history[-1][1]
            summary["coadaptation_history"] = monitor.coadaptation_history
            # The probe images' fc1 activations at the end: the report compares variants on them, image by image.
            np.save(out / "fc1_activations.npy", monitor.last_output.astype(np.float32))
        if self.cfg.variance_shift:
            ratios = diagnostics.variance_ratios(self.model, self.variance_x)  # one pass, batched
            summary["variance_shift"] = diagnostics.shift_from_ratios(ratios)
            summary["variance_ratio_mean"] = {k: float(np.mean(v)) for k, v in ratios.items()}
            metrics.update({f"variance_shift.{k}": v for k, v in summary["variance_shift"].items()})
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
        mlflow.log_metrics({**metrics, "diagnostics_final_seconds": time.perf_counter() - start})
        return summary


def write_record(record_dir: Path, record: dict, history: list[dict]) -> None:
    import pandas as pd

    record_dir.mkdir(parents=True, exist_ok=True)
    for name, write in (("history.csv", lambda p: pd.DataFrame(history).to_csv(p, index=False)),
                        ("record.json", lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))):
        tmp = record_dir / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, record_dir / name)


def train(variant: str, seed: int, overrides: dict | None = None, record_dir: Path | None = None,
          dvc_stage: str = "", params_path: Path = paths.PARAMS, prepared: Path | None = None) -> dict:
    params = load_params(params_path)
    spec = variant_spec(params, variant)
    # The whole study's settings, not only this stage's: under `dvc repro` a broken variant or
    # seed list then stops the first training, not a later one after others have trained.
    for name in variant_names(params):
        variant_spec(params, name)
    read_seeds(params)
    cfg = train_config(params, overrides)
    diag_cfg = diagnostics_config(params)
    if seed < 0:
        raise UserError(f"--seed = {seed} is invalid: must be >= 0")
    experiment = section(params, "mlflow").get("experiment")
    if not experiment or not isinstance(experiment, str):
        raise UserError("params: 'mlflow.experiment' must name the experiment")
    experiment_id = tracking.prepare_experiment(experiment)  # fails fast when the store is unreachable

    if prepared is None:
        ensure_prepared(params)
        prepared = paths.PREPARED
    summary_path = prepared.parent / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    import keras
    import mlflow

    from pipeline.model import parameter_counts

    data = load_data(cfg, prepared)
    seed_everything(seed)
    model = compile_model(spec, cfg)
    counts = parameter_counts(model)
    y_train = keras.utils.to_categorical(data["y_train"], 10)
    y_test = keras.utils.to_categorical(data["y_test"], 10)

    tags = {"variant": spec.name, "seed": str(seed), "git_commit": git_commit(),
            "dvc_stage": dvc_stage, "tracking_store": tracking.redact(tracking.tracking_uri())}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    run_name = f"{spec.name}-s{seed}"
    history: list[dict] = []
    callbacks = [_signal_guard(), _epoch_logger(data["x_test"], y_test, cfg.batch_size, history)]
    diag = Diagnostics(diag_cfg, model, data["x_test"]) if diag_cfg.any else None
    if diag is not None and diag.monitor is not None:
        callbacks.append(diag.monitor)
    with mlflow_run(experiment_id, run_name, tags) as run:
        mlflow.log_params(flat_params(spec, cfg, seed, data, summary, diag_cfg))
        mlflow.log_params({f"model.params_{k}": v for k, v in counts.items()})
        for split, ctx in (("train", "training"), ("test", "testing")):
            ds = mlflow.data.from_numpy(data[f"x_{split}"], targets=data[f"y_{split}"], name=f"mnist-{split}")
            mlflow.log_input(ds, context=ctx)
        print(f"training {run_name}: {spec.describe()}; {counts['total']:,} parameters; "
              f"{len(y_train)} images, {cfg.epochs} epoch(s), run {run.info.run_id}", flush=True)
        start = time.perf_counter()
        model.fit(**fit_inputs(data["x_train"], y_train, cfg, seed), epochs=cfg.epochs, verbose=0,
                  callbacks=callbacks)
        seconds = time.perf_counter() - start
        # The last epoch's test metrics are the final ones; logging them again (at step 0)
        # would add a spurious point to the per-epoch curves.
        speed = {"train_seconds": seconds, "images_per_second": cfg.epochs * len(y_train) / seconds}
        mlflow.log_metrics(speed)
        final = {"test_loss": history[-1]["test_loss"], "test_accuracy": history[-1]["test_accuracy"], **speed}
        probs = model.predict(data["x_test"], batch_size=1000, verbose=0)
        with tempfile.TemporaryDirectory(prefix="lenet-artifacts-") as tmp:
            write_artifacts(Path(tmp), model, spec, data, probs, history)
            if diag is not None:
                diag.finish(Path(tmp) / "diagnostics", f"{run_name}: inputs of tanh and BN layers (probe batch)")
            mlflow.log_artifacts(tmp)
        from mlflow.models import infer_signature

        mlflow.keras.log_model(
            model, name="model", signature=infer_signature(data["x_test"][:2], probs[:2]),
            pip_requirements=[f"tensorflow-cpu=={_version('tensorflow-cpu')}", f"keras=={keras.__version__}",
                              f"mlflow=={mlflow.__version__}"],
        )
        record = {"run_id": run.info.run_id, "experiment_id": experiment_id, "variant": spec.name, "seed": seed,
                  **final, "parameters": counts["total"]}
    print(f"done {run_name}: test loss {final['test_loss']:.4f}, test accuracy {final['test_accuracy']:.4f}, "
          f"{seconds:.1f} s ({final['images_per_second']:.0f} images/s); run {record['run_id']}", flush=True)
    if record_dir is not None:
        write_record(record_dir, record, history)
    return record


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = parse_args(argv)
    run_main(lambda: train(args.variant, _seed(args.seed), overrides_from(args), args.record, args.dvc_stage,
                           args.params))


if __name__ == "__main__":
    main(sys.argv[1:])
