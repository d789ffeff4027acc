"""The training matrix on a Ray cluster: DVC decides what runs, MLflow records what happened.

In: ``params.yaml``, ``dvc.yaml``/``dvc.lock`` (which ``train@<variant>-<seed>`` stages, and
``lr_grid@<variant>-<seed>-<rate>`` stages of a learning-rate grid, are missing or stale, as
``dvc status`` says; then, with ``confirm.seeds``, the ``choose@<variant>`` stages and the stale
``confirm@<variant>-<seed>`` confirmations at the chosen rates), ``MLFLOW_TRACKING_URI`` (or the local SQLite
store) and a Ray cluster: ``--address`` or ``RAY_ADDRESS``, else a local one on this machine.
Out: each stale training run as one Ray task in a fresh worker process
(``pipeline.sweep.tasks``), logging its MLflow run directly; on this machine the DVC record
``results/<variant>-s<seed>/`` (``results/lr_grid/<variant>-s<seed>-lr<rate>/``,
``results/confirm/<variant>-s<seed>/``) of each
finished training, committed to DVC at once
(``dvc commit`` of its stage), so ``dvc status`` is clean for it and ``dvc repro`` retrains
nothing. One progress line per finished training. Exit 0 when all finished, 1 when some
failed (each named, with its reason), 2 for a problem found before training, 130 when
interrupted (workers stopped, their runs KILLED, nothing half-committed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from pipeline.core import labels
from pipeline.core import paths
from pipeline.core import store
from pipeline.core import tracking
from pipeline.core.cli import run_main
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.sweep.dvc import (all_trainings, choose_rates, commit, confirms, fingerprint, not_committed,
                                repro_prerequisites, signals_deferred, source_tags, stale_trainings)
from pipeline.sweep.tasks import TAG_STAGE, TAG_SWEEP, Job, run_training

CANCEL_GRACE_S = 15.0
# MLflow settings and credentials the workers need to reach the same tracking server.
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "TF_CPP_MIN_LOG_LEVEL")


def server_command(root: Path = paths.ROOT) -> str:
    return ("mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri postgresql://USER:PASS@DBHOST/mlflow "
            f"--artifacts-destination {root / 'mlartifacts'}")


# --- The cluster ---------------------------------------------------------------------------------


def connect(address: str | None, local_cpus: int | None, verbose: bool) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # Workers import *this* checkout's pipeline (nodes hold the project at the same path).
    env = {"PYTHONPATH": str(paths.ROOT), **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    kwargs = {"num_cpus": local_cpus, "include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose,
                 logging_level="WARNING", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


def machines() -> list[str]:
    import ray

    return sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]})


def check_store_reaches_cluster(uri: str) -> list[str]:
    """A local store cannot take runs from other machines: say how to start a server instead."""
    ips = machines()
    if len(ips) > 1 and not uri.startswith(("http://", "https://")):
        raise UserError(f"the Ray cluster spans {len(ips)} machines ({', '.join(ips)}) but MLflow logs to "
                        f"{store.redact(uri)}, which only this machine sees; start a tracking server "
                        f"(`{server_command()}`) and set MLFLOW_TRACKING_URI=http://<this host>:5000 on every node")
    return ips


def close_orphans(client, experiment_id: str, sweep_id: str, stage: str | None = None) -> list[str]:
    """End the RUNNING runs of this sweep (of one stage) as KILLED: their worker or node died."""
    query = f"tags.`{TAG_SWEEP}` = '{sweep_id}' and attributes.status = 'RUNNING'"
    if stage:
        query += f" and tags.`{TAG_STAGE}` = '{stage}'"
    runs = client.search_runs([experiment_id], query, max_results=1000)
    for run in runs:
        client.set_tag(run.info.run_id, "sweep.closed_by", "driver: its worker stopped before the run ended")
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in runs]


# --- The sweep -----------------------------------------------------------------------------------


def sweep(*, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0, retries: int = 3,
          local_cpus: int | None = None, dry_run: bool = False, verbose: bool = False) -> int:
    params = Params.load(paths.PARAMS)
    uri = store.tracking_uri()
    store.check_server(uri)  # a down server fails here, in seconds, before Ray starts
    repro_prerequisites()
    todo, later = stale_trainings(params), confirms(params)
    total = len(all_trainings(params))
    if (not todo and not later) or dry_run:
        names = ", ".join(labels.stage_name(*t) for t in todo) or "nothing"
        print(f"{len(todo)} of {total} trainings missing or stale: {names}"
              + ("; then the confirmations at the rates the grid chooses" if later else ""), flush=True)
        return 0
    connect(address, local_cpus, verbose)
    import ray

    try:
        run = _runner(params, uri, cpus, gpus, retries)
        code = run(todo, total) if todo else 0
        if later and code == 0:  # the confirmations, once the grid is whole and the rates are chosen
            chosen = choose_rates(params)
            print("chosen rates: " + ", ".join(f"{v} {c['learning_rate']:g}" if c["learning_rate"] is not None
                                                else f"{v} none" for v, c in chosen.items()), flush=True)
            confirm = stale_trainings(params, confirmations=True)
            code = run(confirm, len(all_trainings(params, True)), chosen) if confirm else 0
        return code
    finally:
        ray.shutdown()


def _runner(params: Params, uri: str, cpus: float, gpus: float, retries: int):
    """Checks the cluster and the store once; returns ``run(trainings, total, chosen)``, which runs those
    trainings as Ray tasks and lands each (the exit status: 1 when any failed)."""
    import mlflow
    import ray

    ips = check_store_reaches_cluster(uri)
    if not any(n["Resources"].get("CPU", 0) >= cpus for n in ray.nodes() if n["Alive"]):
        raise UserError(f"no node of the Ray cluster has {cpus:g} CPUs for one training; lower --cpus")
    experiment_id = tracking.prepare_experiment(params.mlflow.experiment, uri, list(params.variants))
    client = mlflow.MlflowClient(uri)
    summary = json.loads(paths.DATA_SUMMARY.read_text())
    digests = {split: summary[split]["digest"] for split in ("train", "test")}
    data_ref = None
    if len(ips) > 1:
        from pipeline.sweep.tasks import pack_prepared

        data_ref = ray.put(pack_prepared(paths.PREPARED))
    sweep_id, deps, tags = uuid.uuid4().hex, fingerprint(), source_tags()
    task = ray.remote(max_calls=1)(run_training).options(
        num_cpus=cpus, num_gpus=gpus, max_retries=retries, retry_exceptions=False)

    def run(trainings: list, total: int, chosen: dict | None = None) -> int:
        jobs = {task.remote(job): job for job in (
            Job(v, s, params, uri, sweep_id, str(paths.PREPARED), digests, data_ref, tags, r, (chosen or {}).get(v))
            for v, s, r in trainings)}
        print(f"sweep {sweep_id[:8]}: {len(trainings)} of {total} trainings to run on {len(ips)} machine(s), "
              f"{cpus:g} CPU(s) each; MLflow: {store.redact(uri)}", flush=True)
        return _collect(jobs, client, experiment_id, sweep_id, deps)

    return run


def _collect(jobs: dict, client, experiment_id: str, sweep_id: str, deps: str) -> int:
    """Land each training as it finishes; the exit status (1 when any failed)."""
    import ray

    pending, done, failed = list(jobs), 0, []
    start = time.perf_counter()
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                landed, problem = _land(ref, jobs[ref], client, experiment_id, sweep_id, deps)
                if problem:
                    failed.append(problem)
                else:
                    done += 1
                    print(f"{landed} [{done + len(failed)}/{len(jobs)}]", flush=True)
    except KeyboardInterrupt:
        _stop(pending, jobs, client, experiment_id, sweep_id, deps)
        raise
    close_orphans(client, experiment_id, sweep_id)
    minutes = (time.perf_counter() - start) / 60
    print(f"{done} of {len(jobs)} trainings done in {minutes:.1f} min"
          + (f"; {len(failed)} failed: " + "; ".join(failed) if failed else "")
          + ("; run `dvc repro` for the report" if done else ""), flush=True)
    return 1 if failed else 0


def _land(ref, job: Job, client, experiment_id: str, sweep_id: str, deps: str) -> tuple[str | None, str | None]:
    """One finished task: its orphan runs closed, its record written and committed.
    Returns (the progress line, None) or (None, what went wrong)."""
    import ray

    from pipeline.train.artifacts import write_record

    stage, name = job.stage, job.name
    out, problem = None, None
    try:
        out = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        problem = f"{stage} {_reason(exc)}"
        print(f"failed {name} {_reason(exc)}", file=sys.stderr, flush=True)
    except ray.exceptions.RayError as exc:  # worker or node died more often than --retries
        problem = f"{stage}: {type(exc).__name__}"
        print(f"failed {name}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr, flush=True)
    close_orphans(client, experiment_id, sweep_id, stage)
    if out is None:
        return None, problem
    if fingerprint() != deps:
        return None, not_committed(client, out["run_id"], stage)
    with signals_deferred():
        write_record(paths.result_dir(job.variant, job.seed, job.rate), out["record"], out["history"],
                     out["convergence"])
        commit(stage)
    diverged = " (DIVERGED)" if "diverged_at_step" in out["record"] else ""
    return (f"done {name}{diverged} on {out['node']}: test accuracy {out['record']['test_accuracy']:.4f}, "
            f"{out['seconds']:.1f} s"), None


def _reason(exc) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return str(cause).splitlines()[0]
    return str(exc).strip().splitlines()[-1]


def _stop(pending: list, jobs: dict, client, experiment_id: str, sweep_id: str, deps: str) -> None:
    """Interrupted: cancel the tasks (a KeyboardInterrupt in each, so its run ends KILLED),
    kill those still running after a grace period, land the trainings that finished before
    their cancel arrived (whole trainings, committed whole), and close whatever runs are left."""
    import ray

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    print(f"interrupted: stopping {len(pending)} training(s)", file=sys.stderr, flush=True)
    for ref in pending:
        ray.cancel(ref)
    running = list(pending)
    deadline = time.monotonic() + CANCEL_GRACE_S
    while running and time.monotonic() < deadline:
        _, running = ray.wait(running, num_returns=len(running), timeout=0.5)
    for ref in running:
        ray.cancel(ref, force=True)
    if running:
        ray.wait(running, num_returns=len(running), timeout=5.0)
    for ref in pending:
        if ref not in running and _succeeded(ref):
            landed, _ = _land(ref, jobs[ref], client, experiment_id, sweep_id, deps)
            if landed:
                print(f"{landed} (finished as the sweep stopped)", flush=True)
    close_orphans(client, experiment_id, sweep_id)


def _succeeded(ref) -> bool:
    """Whether a task that is no longer running returned a result (not cancelled, not failed)."""
    import ray

    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayError:
        return False
    return True


# --- Command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.sweep.driver",
                                description="Run the missing or stale trainings of the study on a Ray cluster.")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs per training (its TensorFlow threads)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per training (needs a TensorFlow with GPU support)")
    p.add_argument("--retries", type=int, default=3, help="retries of a training whose worker or node died")
    p.add_argument("--local-cpus", type=int, help="CPUs of the local cluster started when no address is given")
    p.add_argument("--dry-run", action="store_true", help="list the trainings DVC says are missing or stale")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def body():
        if args.cpus <= 0 or args.gpus < 0 or args.retries < 0:
            raise UserError("--cpus must be > 0, --gpus and --retries >= 0")
        code = sweep(address=args.address, cpus=args.cpus, gpus=args.gpus, retries=args.retries,
                     local_cpus=args.local_cpus, dry_run=args.dry_run, verbose=args.verbose)
        if code:
            sys.exit(code)

    run_main(body)


if __name__ == "__main__":
    main(sys.argv[1:])
