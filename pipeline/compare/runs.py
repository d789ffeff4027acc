"""The training runs a report is about, read back from MLflow.

In: the training stages' records ``results/<variant>-s<seed>/record.json`` (and the learning-rate
grid's ``results/lr_grid/<variant>-s<seed>-lr<rate>/record.json``; each names its MLflow run and
experiment) and the tracking URI of the store the runs were logged in.
Out: ``read_records(...)`` returns the records by (variant, seed); ``fetch_runs(records, uri)``
returns a ``RunData`` per record: the run's final metrics, parameter count, per-image
correctness (``predictions.csv``), per-epoch test curves, the held-out accuracy per optimizer
step, batch-norm weights and diagnostics; ``fetch_grid`` returns a grid run's final validation and test
metrics and whether it diverged. Missing records, stores, runs or metrics, unfinished runs and records that
disagree with their run are refused with a ``UserError`` naming the stage to rerun.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import labels
from pipeline.core import metric_names
from pipeline.core import paths
from pipeline.core import store, tracking
from pipeline.core.errors import UserError

# The MLflow names of what the report reads: final test metrics, training time, the curves.
FINAL_METRICS = (metric_names.TEST_LOSS, metric_names.TEST_ACCURACY, metric_names.TRAIN_SECONDS)
CURVE_METRICS = ("test_accuracy", "test_loss")

RunKey = tuple[str, int]  # (variant, seed)
GridKey = tuple[str, int, float]  # (variant, seed, learning rate as written in params.yaml)


@dataclass
class RunData:
    variant: str
    seed: int
    run_id: str
    test_loss: float
    test_accuracy: float
    train_seconds: float
    parameters: int
    correct: np.ndarray
    curves: pd.DataFrame                      # epoch, test_accuracy, test_loss
    n_train: int = 0
    convergence: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["step", "test_accuracy"]))
    convergence_seconds: float = float("nan")
    bn: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)


def read_records(variants: list[str], seeds: list[int], results: Path = paths.RESULTS,
                 rates: list | None = None) -> dict:
    """The records by (variant, seed); with ``rates``, the learning-rate grid's by (variant, seed, rate)."""
    records = {}
    for rate in (rates if rates is not None else [None]):
        for variant in variants:
            for seed in seeds:
                path = paths.result_dir(variant, seed, rate, results) / "record.json"
                if not path.exists():
                    raise UserError(f"no training record {path.relative_to(results.parent)}; "
                                    f"run `dvc repro {labels.stage_name(variant, seed, rate)}` "
                                    "(or `dvc repro` for the whole study)")
                records[(variant, seed) if rate is None else (variant, seed, rate)] = json.loads(path.read_text())
    return records


def require_store(uri: str) -> None:
    db = store.sqlite_path(uri)
    if db is not None and not db.exists():
        raise UserError(f"no MLflow store at {db}; run `dvc repro` to train the variants first "
                        "(or set MLFLOW_TRACKING_URI to the store they were logged in)")
    tracking.check_store(uri)  # a server answers; a SQLite store is sound and writable


def _find_runs(client, records: dict[RunKey, dict]) -> dict:
    """The recorded runs, by run id, in one query (those the store lacks are simply absent)."""
    run_ids = [record["run_id"] for record in records.values()]
    experiment_ids = sorted({str(record["experiment_id"]) for record in records.values()})
    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids)
    found = client.search_runs(experiment_ids, filter_string=f"attributes.run_id IN ({quoted})",
                               max_results=max(len(run_ids), 1))
    return {run.info.run_id: run for run in found}


def _check_run(run, run_id: str, key: tuple, uri: str, metrics: tuple[str, ...] = FINAL_METRICS) -> None:
    stage, label = labels.stage_name(*key), labels.run_label(*key)
    if run is None:
        record = (paths.result_dir(*key) / "record.json").relative_to(paths.ROOT)
        raise UserError(f"run {run_id} ({label}) is not in the MLflow store {store.redact(uri)}, though {record} "
                        "names it: set MLFLOW_TRACKING_URI to the store the study was logged in (a team's tracking "
                        f"server: README, 'Working as a team'), or retrain it with `dvc repro -f {stage}`")
    if run.info.status != "FINISHED":
        raise UserError(f"run {run_id} ({label}) is {run.info.status}, not FINISHED; "
                        f"re-run `dvc repro -f {stage}`")
    missing = set(metrics) - set(run.data.metrics)
    if missing:
        raise UserError(f"run {run_id} ({label}) lacks metrics {sorted(missing)}")


def _download(run_id: str, artifact_path: str, dst: Path, uri: str) -> Path:
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst), tracking_uri=uri))


def _curves(client, run_id: str) -> pd.DataFrame:
    return pd.DataFrame({
        key: pd.Series({point.step: point.value
                        for point in client.get_metric_history(run_id, metric_names.EPOCH[key])})
        for key in CURVE_METRICS
    }).rename_axis("epoch").reset_index()


def _convergence(client, run_id: str) -> pd.DataFrame:
    """The held-out accuracy per optimizer step (empty when convergence was off for the run)."""
    points = client.get_metric_history(run_id, metric_names.CONVERGENCE_ACCURACY)
    return pd.DataFrame({"step": [p.step for p in points], "test_accuracy": [p.value for p in points]},
                        columns=["step", "test_accuracy"]).sort_values("step", ignore_index=True)


def _bn_weights(bn_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    weights = {}
    for npz in sorted(bn_dir.glob("*.npz")):
        with np.load(npz) as arrays:
            weights[npz.stem] = {name: arrays[name] for name in arrays.files}
    return weights


def _diagnostics(diag_dir: Path) -> dict:
    diagnostics = {"summary": json.loads((diag_dir / "summary.json").read_text())}
    if (diag_dir / "history.csv").exists():  # absent when covariate_shift was switched off
        diagnostics["history"] = pd.read_csv(diag_dir / "history.csv")
    if (diag_dir / "fc1_activations.npy").exists():
        diagnostics["fc1_activations"] = np.load(diag_dir / "fc1_activations.npy")
    if (diag_dir / "recalibrated_predictions.csv").exists():  # networks with batch norm
        diagnostics["recalibrated_correct"] = (
            pd.read_csv(diag_dir / "recalibrated_predictions.csv")["correct"].to_numpy().astype(bool))
    return diagnostics


def _read_run(client, run, key: RunKey, dst: Path, uri: str) -> RunData:
    run_id = run.info.run_id
    predictions = pd.read_csv(_download(run_id, "predictions.csv", dst, uri))
    artifacts = {artifact.path for artifact in client.list_artifacts(run_id)}
    bn = _bn_weights(_download(run_id, "bn_weights", dst, uri)) if "bn_weights" in artifacts else {}
    diagnostics = _diagnostics(_download(run_id, "diagnostics", dst, uri)) if "diagnostics" in artifacts else {}
    metrics, run_params = run.data.metrics, run.data.params
    return RunData(
        variant=key[0], seed=key[1], run_id=run_id, test_loss=float(metrics[metric_names.TEST_LOSS]),
        test_accuracy=float(metrics[metric_names.TEST_ACCURACY]),
        train_seconds=float(metrics[metric_names.TRAIN_SECONDS]),
        parameters=int(float(run_params.get("model.params_total", "nan"))),
        n_train=int(float(run_params.get("data.n_train", "0"))),
        correct=predictions["correct"].to_numpy().astype(bool), curves=_curves(client, run_id), bn=bn,
        diagnostics=diagnostics, convergence=_convergence(client, run_id),
        convergence_seconds=float(metrics.get(metric_names.CONVERGENCE_SECONDS, "nan")))


def fetch_runs(records: dict, uri: str) -> dict:
    """Read every recorded run back from MLflow (keyed as ``records``: by (variant, seed), or by
    (variant, seed, rate) for grid runs); refuse unknown or unfinished runs."""
    import mlflow

    require_store(uri)
    client = mlflow.MlflowClient(uri)
    found = _find_runs(client, records)
    for key, record in records.items():
        _check_run(found.get(record["run_id"]), record["run_id"], key, uri)
    with tempfile.TemporaryDirectory(prefix="lenet-compare-") as tmp:
        return {key: _read_run(client, found[record["run_id"]], key, Path(tmp) / record["run_id"], uri)
                for key, record in records.items()}


def check_records_match(records: dict, runs: dict) -> None:
    """A record whose test accuracy is not its run's was written by another training (``runs`` keyed as
    ``records``, each with ``run_id`` and ``test_accuracy``: ``RunData`` or ``GridRun``)."""
    for key, record in records.items():
        run = runs[key]
        if not math.isclose(record["test_accuracy"], run.test_accuracy, rel_tol=1e-9):
            raise UserError(f"{labels.run_label(*key)}: record says test_accuracy {record['test_accuracy']}, MLflow run "
                            f"{run.run_id} says {run.test_accuracy}; re-run `dvc repro -f {labels.stage_name(*key)}`")


@dataclass
class GridRun:
    """One training of the learning-rate grid, as its MLflow run says (final epoch's metrics)."""

    variant: str
    seed: int
    rate: float
    run_id: str
    validation_accuracy: float
    validation_loss: float
    test_accuracy: float
    test_loss: float
    diverged: bool


GRID_METRICS = (metric_names.VALIDATION_ACCURACY, metric_names.VALIDATION_LOSS, *FINAL_METRICS)


def fetch_grid(records: dict[GridKey, dict], uri: str) -> list[GridRun]:
    """The grid's runs read back from MLflow (metrics and the ``diverged`` tag; no artifacts)."""
    import mlflow

    require_store(uri)
    client = mlflow.MlflowClient(uri)
    found = _find_runs(client, records) if records else {}
    out = {}
    for key, record in records.items():
        run = found.get(record["run_id"])
        _check_run(run, record["run_id"], key, uri, GRID_METRICS)
        m = run.data.metrics
        out[key] = GridRun(key[0], key[1], float(key[2]), run.info.run_id, m[metric_names.VALIDATION_ACCURACY],
                           m[metric_names.VALIDATION_LOSS], m[metric_names.TEST_ACCURACY], m[metric_names.TEST_LOSS],
                           run.data.tags.get(metric_names.TAG_DIVERGED) == "true")
    check_records_match(records, out)
    return list(out.values())
