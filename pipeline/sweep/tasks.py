"""The worker side of ``pipeline.sweep.driver``: one training as one Ray task in a fresh process.

In: a ``Job`` (variant, seed, the driver's validated ``Params``, tracking URI, sweep id,
the driver's data digests and, on a cluster that spans machines, a reference to the
driver's prepared arrays) and the CPUs Ray assigned to the task.
Out: a plain dict (record, history, run id, node, seconds) for the driver, which writes the
DVC record and commits the stage. The MLflow run is the one ``dvc repro`` would log (same
``pipeline.train.stage.train``), plus tags naming the Ray node and the sweep attempt, set when
the run is created (``MLFLOW_RUN_CONTEXT``) so that a run whose node died can be found and
closed by the driver.

Ray is imported only inside the task: this module imports nothing heavy at load time, and
TensorFlow only after its thread counts are in the environment.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import labels, quiet
from pipeline.core.errors import UserError
from pipeline.data import prepared as prepared_data

# Tags every sweep training carries besides those of a `dvc repro` training.
TAG_SWEEP = "sweep.id"
TAG_STAGE = "sweep.stage"
TAG_ATTEMPT = "sweep.attempt"
TAG_NODE = "ray.node"          # "<hostname> (<ip>, node <id[:8]>)": the one-glance answer
TAG_NODE_ID = "ray.node_id"
TAG_NODE_IP = "ray.node_ip"
TAG_CPUS = "sweep.cpus"

# Where a worker node keeps its copy of data/prepared when it is not at the driver's path.
PREPARED_ENV = "LENET_PREPARED"
THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    variant: str
    seed: int
    params: Any                 # pipeline.core.params.Params (pickled by Ray)
    tracking_uri: str
    sweep_id: str
    prepared: str               # the driver's data/prepared
    digests: dict               # {"train": ..., "test": ...} from the driver's data/summary.json
    data_ref: Any = None        # ray.ObjectRef of {file name: bytes}, or None (one machine)
    source_tags: dict = None    # mlflow.source.* as `python -m pipeline.train` on the driver sets them
    rate: float | int | str | None = None  # a grid training at this rate (stage lr_grid), or labels.TUNED
    chosen: dict | None = None  # a confirmation's choice (results/chosen/<variant>.json), read by the driver

    @property
    def stage(self) -> str:
        return labels.stage_name(self.variant, self.seed, self.rate)

    @property
    def name(self) -> str:
        return labels.run_label(self.variant, self.seed, self.rate)


def pack_prepared(folder: Path) -> dict[str, bytes]:
    """The driver's prepared arrays and summary as bytes, for nodes that lack them."""
    files = {f"{name}.npy": (folder / f"{name}.npy").read_bytes() for name in prepared_data.FILES}
    files["summary.json"] = (folder.parent / "summary.json").read_bytes()
    return files


def node_prepared(job: Job, node: str) -> Path:
    """This node's prepared data, checked against the driver's digests.

    ``LENET_PREPARED`` (set on the node) or the driver's path when it exists here; otherwise
    the driver's copy is fetched once per node into a cache keyed by its digest. Data that
    exists but differs from the driver's is an error, never silently replaced.
    """
    import ray

    local = Path(os.environ.get(PREPARED_ENV) or job.prepared)
    if all((local / f"{n}.npy").exists() for n in prepared_data.FILES):
        for split, expected in job.digests.items():
            found = prepared_data.split_digest(local, split)
            if found != expected:
                raise UserError(f"data on node {node} ({local}) differs from the driver's: {split} digest "
                                f"{found} != {expected}; run `dvc repro normalize` (or `dvc pull`) there")
        return local
    if job.data_ref is None:
        raise UserError(f"{local} is missing on node {node}; run `dvc repro normalize` there")
    from filelock import FileLock

    key = "-".join(job.digests[s] for s in sorted(job.digests))
    cache = Path(tempfile.gettempdir()) / "lenet-sweep-data" / key
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock", timeout=600):
        if not cache.exists():
            tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache.parent))
            (tmp / "prepared").mkdir()
            for name, blob in ray.get(job.data_ref).items():
                (tmp / ("summary.json" if name == "summary.json" else f"prepared/{name}")).write_bytes(blob)
            os.replace(tmp, cache)
    return cache / "prepared"


def pin_threads(cpus: float) -> int:
    """Thread counts from the CPUs Ray assigned, in the environment before TensorFlow starts."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("TensorFlow was imported before the sweep task set its thread counts")
    threads = max(1, int(cpus))
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    return threads


def run_training(job: Job) -> dict:
    """One training in this (fresh) worker process; seeding, building and logging in this thread."""
    import ray

    start = time.perf_counter()
    ctx = ray.get_runtime_context()
    node_id, ip, host = ctx.get_node_id(), ray.util.get_node_ip_address(), socket.gethostname()
    node = f"{host} ({ip}, node {node_id[:8]})"
    cpus = ctx.get_assigned_resources().get("CPU", 1.0)
    try:
        threads = pin_threads(cpus)
        quiet.install()  # as a stage's entry point does: TensorFlow's start-up lines stay out of the worker's log
        os.environ["MLFLOW_TRACKING_URI"] = job.tracking_uri
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            os.environ.pop(var, None)
        # Tags set when the run is created: the driver finds a run whose worker died by them.
        os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({
            **(job.source_tags or {}), TAG_SWEEP: job.sweep_id, TAG_STAGE: job.stage, TAG_ATTEMPT: uuid.uuid4().hex,
            TAG_NODE: node, TAG_NODE_ID: node_id, TAG_NODE_IP: ip, TAG_CPUS: f"{cpus:g}"})
        prepared = node_prepared(job, node)
        from pipeline.train.stage import train

        with tempfile.TemporaryDirectory() as tmp:  # a confirmation's choice, where this node can read it
            rate_from = None
            if job.rate == labels.TUNED:
                rate_from = Path(tmp) / f"{job.variant}.json"
                rate_from.write_text(json.dumps(job.chosen))
            grid_rate = None if job.rate is None or rate_from is not None else float(job.rate)
            result = train(job.variant, job.seed, params=job.params, dvc_stage=job.stage, prepared=prepared,
                           grid_rate=grid_rate, rate_from=rate_from)
    except Exception as exc:  # one line for the driver, with the node
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RuntimeError(f"on {node}: {type(exc).__name__}: {first}") from exc
    return {"record": result.record, "history": result.history, "convergence": result.convergence,
            "run_id": result.run_id, "node": node,
            "node_ip": ip, "threads": threads, "seconds": time.perf_counter() - start}
