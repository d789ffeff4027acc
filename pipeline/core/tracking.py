"""Where runs are recorded: the MLflow tracking store, checked and prepared once.

In: ``MLFLOW_TRACKING_URI`` when set (a server, a database URI); otherwise a SQLite
store ``mlflow.db`` with artifacts in ``mlruns/`` at the store root
(``paths.store_root()``: the real repository, even under ``dvc exp run --temp``).
Credentials come only from MLflow's own variables (``MLFLOW_TRACKING_USERNAME``,
``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``) and are never logged.
Out: ``prepare_experiment(name)`` returns the experiment id after checking that the
store answers and is sound (a local SQLite store: ``pipeline.core.store_faults``), creating store and
experiment as a ``shared_write`` (under a file lock for SQLite, so parallel stages never migrate a
fresh store at the same time; retried through a server when another training created it first),
and marking the experiment for the UI
(``experiment_tags``: model development, a description, the study's runs-table view);
``ui_view.ui_url(base, experiment_id)`` is the page ``make ui`` opens on; ``mlflow_run(...)`` is the
context of one run that ends FINISHED, KILLED or FAILED, never RUNNING (under ``mlflow run``,
the launcher's run, wherever the user put it; tagged with its process, after closing the runs of
the same name whose process is gone: ``pipeline.core.run_guard``), and ``launcher_run_ended()`` ends the
launcher's run when the entry point stops before taking it over; ``log_datasets`` and
``register_model`` write the datasets and a version of the study's registered model as shared writes.
``python -m pipeline.core.tracking stale [--close]`` lists (and closes) RUNNING runs whose process is gone.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Sequence
from typing import Callable, TypeVar

from pipeline.core import paths, store, ui_view
from pipeline.core.errors import UserError

STORE_LOCK_TIMEOUT_S = 300.0  # the SQLite store's file lock, held only while a shared entity is written
RACE_ATTEMPTS = 5  # a shared write through a server that lost a race to another training is tried again

T = TypeVar("T")

def _lock_for(uri: str):
    from contextlib import nullcontext

    from filelock import FileLock

    db = store.sqlite_path(uri)
    if db is None:
        return nullcontext()
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", timeout=STORE_LOCK_TIMEOUT_S)


def _lost_race(exc: Exception) -> bool:
    """Whether a write failed because another process created the same entity at that moment."""
    text = str(exc)
    return (getattr(exc, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "INTERNAL_ERROR")
            or any(s in text for s in ("UNIQUE constraint", "IntegrityError", "duplicate key", "already exists")))


def shared_write(write: Callable[[], T], uri: str | None = None) -> T:
    """``write()``, which creates something other trainings may create at the same moment (the
    experiment, a dataset, the registered model, its versions and aliases): under the store's file
    lock for SQLite; elsewhere (a server, a database) tried again when it lost such a race, so the
    next try finds the other's entity."""
    from filelock import Timeout
    from mlflow.exceptions import MlflowException

    uri = uri or store.tracking_uri()
    if store.sqlite_path(uri) is not None:
        try:
            with _lock_for(uri):
                return write()
        except Timeout as exc:
            raise UserError(f"MLflow store {store.redact(uri)}: its lock {exc.lock_file} was held by another process for "
                            f"over {STORE_LOCK_TIMEOUT_S:g} s; find it with `fuser {exc.lock_file}`") from None
    for attempt in range(RACE_ATTEMPTS):
        try:
            return write()
        except MlflowException as exc:
            if attempt == RACE_ATTEMPTS - 1 or not _lost_race(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _experiment(client, name: str, uri: str, variants: Sequence[str]):
    """The experiment ``name``, created (with the study's tags) when missing; tags brought up to date."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        client.create_experiment(name, artifact_location=store.default_artifact_location(uri),
                                 tags={**ui_view.experiment_tags(variants), ui_view.DESCRIPTION_TAG: ui_view.DESCRIPTION})
        return client.get_experiment_by_name(name)
    if exp.lifecycle_stage != "deleted":
        for key, value in ui_view.tags_to_update(exp.tags, variants).items():
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp


def check_store(uri: str) -> None:
    """A server answers (``check_server``); a local SQLite store is sound and writable (``store_faults``)."""
    from pipeline.core import store_faults

    store.check_server(uri)
    if (db := store.sqlite_path(uri)) is not None:
        store_faults.check_sqlite(db)


def prepare_experiment(name: str, uri: str | None = None, variants: Sequence[str] = ()) -> str:
    """Check the store, create it and the experiment once, and return the experiment id. ``variants``
    (the study's, from params.yaml) are the groups the study's saved view shows closed."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.core import store_faults

    uri = uri or store.tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        exp = shared_write(lambda: _experiment(mlflow.MlflowClient(uri), name, uri, variants), uri)
    except MlflowException as exc:
        raise UserError(f"MLflow store {store.redact(uri)} failed: {str(exc).splitlines()[0]}") from None
    if exp.lifecycle_stage == "deleted":
        raise UserError(
            f"experiment '{name}' is deleted in {store.redact(uri)}; restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or rename mlflow.experiment in params.yaml"
        )
    store_faults.check_artifacts(exp.artifact_location)
    return exp.experiment_id


def log_datasets(datasets: dict[str, tuple]) -> None:
    """The ``(dataset, context)`` pairs as inputs of the active run; a dataset new to the experiment is
    created once, however many trainings log it at the same moment."""
    import mlflow

    def write() -> None:
        for dataset, context in datasets.values():
            mlflow.log_input(dataset, context=context)

    shared_write(write)


def register_model(model_id: str, name: str, alias: str, tags: dict[str, str]) -> None:
    """The logged model as a new version of registered model ``name``, with ``alias`` (which moves
    to it from an older version) and ``tags``. A shared write: parallel trainings create the
    registered model once and number their versions in turn."""
    import mlflow

    uri = store.tracking_uri()
    version = shared_write(lambda: mlflow.register_model(f"models:/{model_id}", name, tags=tags).version, uri)
    shared_write(lambda: mlflow.MlflowClient(uri).set_registered_model_alias(name, alias, version), uri)


@contextmanager
def mlflow_run(experiment_id: str, run_name: str, tags: dict, system_metrics_seconds: float = 0):
    """Start the run in ``experiment_id``; under ``mlflow run``, continue the launcher's run instead.

    ``mlflow run`` opens a run in the experiment the user chose (``--experiment-name``, else
    ``Default``) before our code starts; training into it, renamed ``run_name`` and tagged,
    gives one run per command, where the user asked for it. The run ends FINISHED only when
    the body completes; an interrupt ends it KILLED, any other error FAILED, so a report can
    never pick up a half-run. It carries its process's tags (``run_guard.process_tags``), and
    the RUNNING runs of the same name whose process is gone (killed by SIGKILL, the OOM killer,
    a power cut) are closed KILLED first. With ``system_metrics_seconds`` > 0, MLflow's own
    system-metrics logging samples CPU, memory, disk and network (``system/*``) that often.
    """
    import mlflow

    from pipeline.core import run_guard

    launcher_id = os.environ.get("MLFLOW_RUN_ID") or None
    client = mlflow.MlflowClient()
    if launcher_id:
        experiment_id = client.get_run(launcher_id).info.experiment_id
    run_guard.close_dead_runs(client, experiment_id, run_name, keep=launcher_id)
    tags = {**tags, **run_guard.process_tags()}
    if system_metrics_seconds > 0:
        mlflow.set_system_metrics_sampling_interval(system_metrics_seconds)
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not its start/stop lines
    run = mlflow.start_run(run_id=launcher_id, experiment_id=experiment_id, run_name=run_name, tags=tags,
                           log_system_metrics=system_metrics_seconds > 0)
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


@contextmanager
def launcher_run_ended():
    """Under ``mlflow run``: the launcher's run (``MLFLOW_RUN_ID``) ends KILLED when the entry point is
    interrupted before it took the run over (``mlflow_run``), FAILED on an error; the launcher,
    stopped by the same SIGTERM, would leave it RUNNING. Elsewhere it does nothing."""
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        yield
        return
    try:
        yield
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        if isinstance(exc, KeyboardInterrupt):
            _release_store(exc)
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status=status)
        raise


@contextmanager
def server_loss_in_one_line():
    """A tracking server lost for longer than MLflow's client retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``:
    about 4 minutes with the defaults) stops the stage with one line instead of MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        uri = store.tracking_uri()
        if not uri.startswith(("http://", "https://")) or "Max retries exceeded" not in str(exc):
            raise
        raise UserError(f"lost the MLflow tracking server {store.redact(uri)} for longer than MLflow's retries "
                        "(MLFLOW_HTTP_REQUEST_MAX_RETRIES, about 4 min by default); its run stays RUNNING there "
                        "until the next training of that name, or `python -m pipeline.core.tracking stale --close` "
                        "on this machine, closes it KILLED") from None


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


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.core.tracking ui-url [BASE]``: prepare the study's experiment in the store
    (``MLFLOW_TRACKING_URI`` or the local one) and print the address of its runs table under
    ``mlflow ui`` at BASE (default http://127.0.0.1:5000).
    ``python -m pipeline.core.tracking stale [--close]``: every RUNNING run of the study's experiment, with
    whether its process is gone (``--close`` ends those KILLED), alive, or cannot be judged here, and why."""
    import argparse

    from pipeline.core.cli import run_main
    from pipeline.core.params import Params

    p = argparse.ArgumentParser(prog="python -m pipeline.core.tracking")
    p.add_argument("command", choices=["ui-url", "stale"])
    p.add_argument("base", nargs="?", default="http://127.0.0.1:5000")
    p.add_argument("--close", action="store_true", help="stale: end as KILLED the runs whose process is gone")
    p.add_argument("--params", type=Path, default=paths.PARAMS)
    args = p.parse_args(argv)

    def ui() -> None:
        params = Params.load(args.params)
        name = params.mlflow.experiment
        url = ui_view.ui_url(args.base, prepare_experiment(name, variants=list(params.variants)))
        print(f"The study '{name}' in {store.redact(store.tracking_uri())}: open\n  {url}",
              flush=True)

    def stale() -> None:
        import mlflow

        from pipeline.core import run_guard

        params = Params.load(args.params)
        experiment_id = prepare_experiment(params.mlflow.experiment, variants=list(params.variants))
        for line in run_guard.stale(mlflow.MlflowClient(store.tracking_uri()), [experiment_id], args.close):
            print(line, flush=True)

    run_main(ui if args.command == "ui-url" else stale)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
