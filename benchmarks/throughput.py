"""Throughput runs: the pipeline (diagnostics on and off) against bare Keras, and the candidates.

In: the ``Plan``, params.yaml as a mapping, the prepared arrays and a work folder.
Out: the raw worker results, ``runs[variant][mode]`` (modes ``bare``, ``pipeline``,
``pipeline_nodiag``) and ``candidate_runs[candidate][variant]``, one entry per repetition in
run order; ``choose_prepared`` picks (or, for ``--quick --no-dvc``, makes) the arrays.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from benchmarks.candidates import Candidate, onednn_env
from benchmarks.launch import measure
from benchmarks.plan import Plan
from benchmarks.quiet import say
from pipeline.core import paths
from pipeline.core.errors import UserError
from testbed import FIXTURE_MNIST, fixture_pins

MODES = ("bare", "pipeline", "pipeline_nodiag")
DIAGNOSTICS_ON = {"bare": True, "pipeline": True, "pipeline_nodiag": False}


def bench_params(base: dict, plan: Plan, *, diagnostics: bool, steps_per_execution: int | None = None) -> dict:
    """params.yaml for a throughput run: the plan's epochs and data limits, diagnostics on or off."""
    params = copy.deepcopy(base)
    params["train"].update({"epochs": plan.epochs, "train_limit": plan.train_limit, "test_limit": plan.test_limit})
    if steps_per_execution is not None:
        params["train"]["steps_per_execution"] = steps_per_execution
    params.setdefault("diagnostics", {})["enabled"] = diagnostics
    params["mlflow"]["experiment"] = "benchmark"
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def train_spec(plan: Plan, params_path: Path, prepared: Path, mode: str, variant: str,
               candidate: Candidate | None = None) -> dict:
    """The worker spec of one training run (``pipeline_nodiag`` runs the pipeline worker)."""
    return {"kind": "train", "mode": "bare" if mode == "bare" else "pipeline", "variant": variant,
            "seed": plan.seed, "params": str(params_path), "prepared": str(prepared),
            "candidate": dict(vars(candidate)) if candidate else {}}


def _report(result: dict) -> None:
    say(f"  {result['images_per_second']:.0f} images/s whole fit, "
        f"{result['steady_images_per_second'] or float('nan'):.0f} steady")


def measure_modes(plan: Plan, base: dict, prepared: Path, work: Path) -> dict[str, dict[str, list[dict]]]:
    """Every variant in every mode, ``plan.reps`` rounds, the modes' order rotated per round."""
    params_paths = {mode: write_params(work / f"params-{mode}.yaml", bench_params(base, plan, diagnostics=on))
                    for mode, on in DIAGNOSTICS_ON.items()}
    runs: dict[str, dict[str, list[dict]]] = {v: {m: [] for m in MODES} for v in plan.variants}
    for rep in range(plan.reps):
        order = list(MODES[rep % len(MODES):] + MODES[:rep % len(MODES)])  # rotate: no mode always goes first
        for variant in plan.variants:
            for mode in order:
                name = f"rep{rep + 1}-{variant}-{mode}"
                say(f"throughput {name}")
                result = measure(plan, train_spec(plan, params_paths[mode], prepared, mode, variant), work, name)
                runs[variant][mode].append(result)
                _report(result)
    return runs


def measure_candidates(plan: Plan, base: dict, prepared: Path, work: Path) -> dict[str, dict[str, list[dict]]]:
    """Every candidate on every candidate variant, ``plan.reps`` interleaved rounds."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for rep in range(plan.reps):
        for candidate in plan.candidates:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", candidate.name)
            params_path = write_params(work / f"params-cand-{slug}.yaml", bench_params(
                base, plan, diagnostics=True, steps_per_execution=candidate.steps_per_execution))
            for variant in plan.candidate_variants:
                name = f"cand-rep{rep + 1}-{variant}-{slug}"
                say(f"candidate {candidate.name}: {name}")
                spec = train_spec(plan, params_path, prepared, "pipeline", variant, candidate)
                result = measure(plan, spec, work, name, onednn_env(candidate))
                runs.setdefault(candidate.name, {}).setdefault(variant, []).append(result)
                _report(result)
    return runs


def prepare_fixture(work: Path) -> Path:
    """The fixture subset through the real download and normalize stages, under ``work``."""
    from pipeline.data.download import download
    from pipeline.data.normalize import normalize
    from pipeline.core.params import DownloadSettings, NormalizeSettings

    base = work / "fixture-data"
    saved = os.environ.pop("MNIST_MIRROR", None)
    try:
        download(DownloadSettings(mirrors=[str(FIXTURE_MNIST)], files=fixture_pins()), raw_dir=base / "raw")
    finally:
        if saved is not None:
            os.environ["MNIST_MIRROR"] = saved
    normalize(NormalizeSettings(scale=255.0), raw_dir=base / "raw", out_dir=base / "prepared",
              summary_path=base / "summary.json")
    return base / "prepared"


def choose_prepared(plan: Plan, stages: dict | None, work: Path) -> Path:
    """``--prepared``, else what the benchmark's own repro made, else the fixture (quick) or data/prepared."""
    prepared = plan.prepared
    if prepared is None:
        if stages:
            prepared = Path(stages["prepared"])
        elif plan.quick:
            prepared = prepare_fixture(work)
        else:
            prepared = paths.PREPARED
    if not (prepared / "x_train.npy").exists():
        raise UserError(f"{prepared}/x_train.npy is missing: run `dvc repro normalize` or pass --prepared")
    return prepared
