"""The DVC side of the sweep: which trainings are missing or stale, and committing each one.

In: the project root (``dvc.yaml``, ``dvc.lock``, ``params.yaml``, ``pipeline/``, the data).
Out: ``stale_trainings`` (the ``train@`` and ``lr_grid@`` stages ``dvc status`` lists, or the
``confirm@`` ones), ``repro_prerequisites`` (download and normalize, as ``dvc repro`` would),
``choose_rates`` (the ``choose@`` stages, between the grid and the confirmations), ``fingerprint``
(what a commit must not see changed: the training stages' code, params.yaml, dvc.yaml and the data
summary), ``not_committed`` (a training that finished while they changed: no record, its run tagged
``part=uncommitted``), ``source_tags`` (the ``mlflow.source.*`` tags of a training driven from here),
``commit`` (``dvc commit -f`` of one stage) and ``signals_deferred`` (so a record and its
commit land together or not at all).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from pipeline.core import labels
from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Params

STAGES = ("train", "lr_grid")  # the study's trainings, then the learning-rate grid's
CONFIRM = "confirm"          # then, once the choose stages have picked the rates, the confirmations
PREREQUISITE = "normalize"   # everything the training stages depend on (download, normalize)
Training = tuple[str, int, "float | int | str | None"]  # (variant, seed, rate: None, a grid rate or labels.TUNED)


def all_trainings(params: Params, confirmations: bool = False) -> list[Training]:
    """Every training of the matrix as (variant, seed, rate): the study's (rate None), then the grid's;
    with ``confirmations``, the confirmations' (rate ``labels.TUNED``) instead."""
    if confirmations:
        return [(v, s, labels.TUNED) for v in params.variants for s in params.confirm.seeds]
    study = [(v, s, None) for v in params.variants for s in params.seeds]
    return study + [(v, s, r) for r in params.lr_grid.learning_rates for v in params.variants
                    for s in params.lr_grid.seeds]


def confirms(params: Params) -> bool:
    """Whether the study has confirmations: a grid to choose from and seeds to confirm on."""
    return bool(params.lr_grid.learning_rates and params.confirm.seeds)


def stale_trainings(params: Params, root: Path = paths.ROOT, confirmations: bool = False) -> list[Training]:
    """The trainings whose stage ``dvc status`` lists (missing or stale): the study's and the grid's, or
    with ``confirmations`` the confirmations'."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    targets = [CONFIRM] if confirmations else list(STAGES) if params.lr_grid.learning_rates else [STAGES[0]]
    try:
        with Repo(str(root)) as repo:
            status = repo.status(targets=targets)
    except DvcException as exc:
        raise UserError(f"dvc status failed: {str(exc).splitlines()[0]}") from None
    return [t for t in all_trainings(params, confirmations) if labels.stage_name(*t) in status]


def stage_env() -> dict[str, str]:
    """The environment for a ``dvc repro`` the sweep runs itself: dvc.yaml's commands call ``python``, which
    must be this interpreter (with the project's packages), whichever way the sweep was started."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def repro_failure(command: str, proc: subprocess.CompletedProcess) -> UserError:
    """One error for a failed ``dvc repro``: DVC's own error line and the stage's last words before it."""
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    error = next((ln for ln in lines if ln.lower().startswith("error")), f"exit {proc.returncode}")
    said = [ln for ln in lines if not ln.lower().startswith("error")][-1:]
    return UserError(f"`dvc repro {command}` failed: {error}" + (f" (last output: {said[0]})" if said else ""))


def choose_rates(params: Params, root: Path = paths.ROOT) -> dict[str, dict]:
    """Every variant's ``choose@`` stage in one ``dvc repro`` (those stages only, nothing upstream), and
    each variant's choice."""
    stages = [f"choose@{variant}" for variant in params.variants]
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", *stages],
                          cwd=root, capture_output=True, text=True, check=False, env=stage_env())
    if proc.returncode != 0:
        raise repro_failure(" ".join(stages), proc)
    return {variant: json.loads(paths.chosen_file(variant, root / "results").read_text())
            for variant in params.variants}


def repro_prerequisites(root: Path = paths.ROOT) -> None:
    """Download and normalize (as ``dvc repro`` would) on this machine, before any training."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", PREREQUISITE], cwd=root,
                          capture_output=True, text=True, check=False, env=stage_env())
    if proc.returncode != 0:
        raise repro_failure(PREREQUISITE, proc)


def training_code(root: Path = paths.ROOT) -> list[str]:
    """The files of ``pipeline/`` the training stages depend on (their ``deps`` in dvc.yaml), sorted."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    deps = {d for name in (*STAGES, CONFIRM) for d in stages.get(name, {}).get("deps", [])
            if isinstance(d, str) and d.startswith("pipeline")}
    files = set()
    for dep in deps:
        path = root / dep
        found = path.rglob("*") if path.is_dir() else [path]
        files |= {str(p.relative_to(root)) for p in found
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return sorted(files)


def fingerprint(root: Path = paths.ROOT) -> str:
    """What the training stages depend on besides the data's own files; it must not change between
    the start of the sweep and a commit, or DVC would record results under new deps. Code the
    trainings do not depend on (the report's, the sweep's own) may change meanwhile."""
    h = hashlib.sha256()
    for rel in ("params.yaml", "dvc.yaml", "data/summary.json", *training_code(root)):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()


# The ``part`` tag of a finished training whose record was not committed: out of the study's view in
# mlflow ui (part = study), which would otherwise count it beside the run the rerun records.
PART_UNCOMMITTED = "uncommitted"


def not_committed(client, run_id: str, stage: str) -> str:
    """A training that finished while what it depends on changed: no record, its run marked as such."""
    reason = "code, params or data changed during the sweep"
    print(f"not committed {stage}: {reason}; its run {run_id} is tagged part={PART_UNCOMMITTED}",
          file=sys.stderr, flush=True)
    try:
        client.set_tag(run_id, "part", PART_UNCOMMITTED)
        client.set_tag(run_id, "sweep.not_committed", reason)
    except Exception as exc:  # noqa: BLE001 - the record is withheld either way; the tag is a courtesy
        print(f"could not tag run {run_id}: {str(exc).splitlines()[0]}", file=sys.stderr, flush=True)
    return f"{stage}: {reason}; not committed (rerun the sweep to train it again)"


def source_tags(root: Path = paths.ROOT) -> dict[str, str]:
    """The mlflow.source.* tags of a training started here: a worker's own entry point is Ray's."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    tags = {"mlflow.source.name": str(root / "pipeline" / "train" / "__main__.py")}
    if commit_id := git("rev-parse", "HEAD"):
        tags["mlflow.source.git.commit"] = commit_id
        tags["mlflow.source.git.branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
    return tags


def commit(stage: str, root: Path = paths.ROOT) -> None:
    import logging

    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # not "Updating lock file" per training

    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)


@contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM while a record is written and committed; deliver them after."""
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            os.kill(os.getpid(), held[0])
