"""Trainings per hour: `dvc repro` (one training at a time, all cores) against the Ray sweep
(`python -m pipeline.sweep`, concurrent trainings of --cpus CPUs each), same trainings, side
by side in one run, each in its own fresh copy of the project with its own MLflow store.

    python -m benchmarks.sweep_throughput --variants plain dropout --seeds 0 1 \\
        --train-limit 6000 --epochs 2 [--json out.json]

Data and its preparation (download, normalize) are done before either clock starts. Also
measured: the driver's own cost per training (writing the record and `dvc commit` of its
stage) and whether both ways give the same test metrics per (variant, seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.core import paths
from testbed import project_copy


def _env(store: Path, mirror: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "RAY_ADDRESS")}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "2",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    if mirror:
        env["MNIST_MIRROR"] = mirror
    store.mkdir(parents=True, exist_ok=True)
    return env


def _run(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(("done ", "sweep ")) or "trainings done" in line:
            print(f"    {line}", flush=True)
    return seconds


def _metrics(project: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "record.json").read_text()) for p in sorted((project / "results").iterdir())}


def _driver_cost(project: Path, stage: str, rounds: int = 3) -> float:
    """Seconds the sweep's driver spends per finished training: the record and `dvc commit`."""
    code = ("import json,sys,time; from pathlib import Path; from pipeline.sweep.dvc import commit;"
            "from pipeline.train.artifacts import write_record; import pandas as pd;"
            f"d=Path('results')/'{stage.split('@')[1].rsplit('-', 1)[0]}-s{stage.rsplit('-', 1)[1]}';"
            "r=json.loads((d/'record.json').read_text()); h=pd.read_csv(d/'history.csv').to_dict('records');"
            f"t=time.perf_counter()\nfor _ in range({rounds}): write_record(d, r, h); commit('{stage}')\n"
            f"print((time.perf_counter()-t)/{rounds})")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["plain", "dropout"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--train-limit", type=int, default=6000, help="first N training images (0: all 60,000)")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--diagnostics", choices=("on", "off"), default="on", help="as shipped: on")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs per sweep training")
    p.add_argument("--local-cpus", type=int, default=os.cpu_count(), help="CPUs of the sweep's local Ray cluster")
    p.add_argument("--mirror", default=os.environ.get("MNIST_MIRROR") or (str(paths.RAW) if paths.RAW.exists() else None),
                   help="MNIST folder or URL (default: MNIST_MIRROR, else this checkout's data/raw)")
    p.add_argument("--workdir", type=Path, help="keep the copies here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="write the numbers here")
    return p.parse_args(argv)


def study_params(args: argparse.Namespace) -> dict:
    params = yaml.safe_load(paths.PARAMS.read_text())
    params["variants"] = {v: params["variants"][v] for v in args.variants}
    params["seeds"] = args.seeds
    params["train"].update({"train_limit": args.train_limit or None, "test_limit": args.test_limit, "epochs": args.epochs})
    params["diagnostics"]["enabled"] = args.diagnostics == "on"
    params["mlflow"]["experiment"] = "sweep-benchmark"
    return params


def measure(way: str, args: argparse.Namespace, params: dict, work: Path) -> dict:
    """One way (``dvc_repro`` or ``sweep``) through the same trainings, in a fresh project copy."""
    project = project_copy(work / way, params)
    env = _env(work / f"{way}-store", args.mirror)
    _run([sys.executable, "-m", "dvc", "repro", "normalize"], project, env)  # not timed
    print(f"  {way}:", flush=True)
    if way == "dvc_repro":
        cmd = [sys.executable, "-m", "dvc", "repro", *[f"train@{v}-{s}" for v in args.variants for s in args.seeds]]
    else:
        cmd = [sys.executable, "-m", "pipeline.sweep", "--cpus", str(args.cpus), "--local-cpus", str(args.local_cpus)]
    seconds = _run(cmd, project, env)
    records = _metrics(project)
    result = {"seconds": round(seconds, 1), "trainings": len(records),
              "trainings_per_hour": round(3600 * len(records) / seconds, 1),
              "mean_train_seconds": round(sum(r["train_seconds"] for r in records.values()) / len(records), 1),
              "test_accuracy": {k: r["test_accuracy"] for k, r in records.items()}, "project": str(project)}
    print(f"    {seconds:.1f} s for {len(records)} trainings: {result['trainings_per_hour']} per hour", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = study_params(args)
    n = len(args.variants) * len(args.seeds)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    print(f"{n} trainings ({', '.join(args.variants)} x seeds {args.seeds}; train_limit {args.train_limit}, "
          f"{args.epochs} epoch(s), diagnostics {args.diagnostics}) on {os.cpu_count()} cores; copies in {work}")
    results = {way: measure(way, args, params, work) for way in ("dvc_repro", "sweep")}
    stage = f"train@{args.variants[0]}-{args.seeds[0]}"
    results["driver_seconds_per_training"] = round(_driver_cost(Path(results["sweep"]["project"]), stage), 2)
    a, b = results["dvc_repro"]["test_accuracy"], results["sweep"]["test_accuracy"]
    results["same_test_accuracy"] = {k: a[k] == b.get(k) for k in a}
    results["speedup"] = round(results["dvc_repro"]["seconds"] / results["sweep"]["seconds"], 2)
    print(f"speed-up of the sweep: {results['speedup']}x; driver cost per training "
          f"{results['driver_seconds_per_training']} s (record + dvc commit); "
          f"same test accuracy as dvc repro: {results['same_test_accuracy']}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
