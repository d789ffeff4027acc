"""Where runs are recorded: the MLflow tracking store, checked and prepared once.

In: ``MLFLOW_TRACKING_URI`` when set (a server, a database URI); otherwise a SQLite
store ``mlflow.db`` with artifacts in ``mlruns/`` at the store root
(``paths.store_root()``: the real repository, even under ``dvc exp run --temp``).
Credentials come only from MLflow's own variables (``MLFLOW_TRACKING_USERNAME``,
``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``) and are never logged.
Out: ``prepare_experiment(name)`` returns the experiment id after checking that the
store answers, creating store and experiment under a file lock, so parallel stages
never migrate a fresh SQLite store at the same time; ``mlflow_run(...)`` is the context
of one run that ends FINISHED, KILLED or FAILED, never RUNNING.
"""

from __future__ import annotations

import gc
import os
import re
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from pipeline import paths
from pipeline.errors import UserError

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
CONNECT_TIMEOUT_S = 5.0


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{paths.store_root() / DB_NAME}"


def redact(uri: str) -> str:
    """The URI with any user:password@ removed, for messages and tags."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def default_artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store; a server or database decides for itself."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_DIR).resolve().as_uri()


def check_server(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, before any training, when a tracking server is down or refuses us."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests

    base = uri.rstrip("/")
    auth = None
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        auth = (user, password)
    headers = {}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    probe = f"{base}/api/2.0/mlflow/experiments/get-by-name"
    try:
        resp = requests.get(probe, params={"experiment_name": "Default"}, auth=auth, headers=headers,
                            timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise UserError(
            f"MLflow tracking server {redact(uri)} is unreachable ({reason} within {timeout:g} s); "
            "start it, or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None
    if resp.status_code in (401, 403):
        raise UserError(
            f"MLflow tracking server {redact(uri)} refused the credentials (HTTP {resp.status_code}); "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if resp.status_code >= 500:
        raise UserError(f"MLflow tracking server {redact(uri)} answered HTTP {resp.status_code}; check its log")


def _lock_for(uri: str):
    from contextlib import nullcontext

    from filelock import FileLock

    db = _sqlite_path(uri)
    if db is None:
        return nullcontext()
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", timeout=300)


def prepare_experiment(name: str, uri: str | None = None) -> str:
    """Check the store, create it and the experiment once, and return the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    with _lock_for(uri):
        client = mlflow.MlflowClient(uri)
        try:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                return client.create_experiment(name, artifact_location=default_artifact_location(uri))
        except MlflowException as exc:
            raise UserError(f"MLflow store {redact(uri)} failed: {str(exc).splitlines()[0]}") from None
    if exp.lifecycle_stage == "deleted":
        raise UserError(
            f"experiment '{name}' is deleted in {redact(uri)}; restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or rename mlflow.experiment in params.yaml"
        )
    return exp.experiment_id


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
