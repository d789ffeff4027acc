"""The benchmark's command line: ``python -m benchmarks [options]``.

In: the options below (``--help``), params.yaml and the machine. Out: ``benchmark.json``
and ``benchmark.md`` in ``--out-dir`` (default ``reports/``); with ``--render JSON`` only the
Markdown next to an existing JSON. ``python -m benchmarks _worker SPEC OUT`` is how the
benchmark starts its own measurement subprocesses (``benchmarks.workers``).
Exit status 0, 2 (a problem the user can fix, one line on stderr) or 130 (interrupted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.plan import DEFAULT_VARIANTS, Plan, load_params, make_plan
from benchmarks.quiet import QUIET_CORES, CpuAccount, say, wait_for_quiet
from pipeline.core import paths
from pipeline.core.cli import run_main

DESCRIPTION = "Benchmark: the training pipeline against a bare Keras script, the DVC stages, the machine."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="a couple of minutes: the fixture subset, a few batches, "
                   "1 repetition (checks the code, not the speed)")
    p.add_argument("--out-dir", type=Path, default=paths.REPORTS, help="where benchmark.json/.md go (default reports/)")
    p.add_argument("--reps", type=int, help="repetitions of each throughput measurement (default 3; quick 1)")
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs per throughput run; epoch 1 is the warm-up (default 2)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    p.add_argument("--candidates", nargs="*", default=[],
                   help="pipeline speed-ups to try, e.g. baseline spe=16 threads=2x1 xla arrays onednn=0 spe=16+xla")
    p.add_argument("--candidate-variants", nargs="+", help="variants the candidates run on (default: --variants)")
    p.add_argument("--no-dvc", action="store_true", help="skip the dvc repro stage timing")
    p.add_argument("--prepared", type=Path, help="prepared arrays for the throughput runs (default: those the "
                   "benchmark's own dvc repro made, else data/prepared)")
    p.add_argument("--mirror", help="MNIST folder/URL for the dvc repro (default MNIST_MIRROR, else data/raw)")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to this long for other processes to leave the CPU (default 0)")
    p.add_argument("--retries", type=int, default=0,
                   help=f"re-run a run during which other processes used >= {QUIET_CORES} cores (default 0)")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only rewrite the Markdown report of an existing benchmark.json (next to it)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary work directory (logs, stores)")
    return p.parse_args(argv)


def measure_all(plan: Plan, work: Path, account: CpuAccount, started: str) -> dict[str, Any]:
    """Stages (unless ``--no-dvc``), hardware, throughput and candidates, summed up."""
    from benchmarks.launch import run_worker
    from benchmarks.stages import measure_stages
    from benchmarks.summary import summarize
    from benchmarks.throughput import choose_prepared, measure_candidates, measure_modes

    base = load_params()
    stages = measure_stages(plan, base, work) if plan.dvc else None
    prepared = choose_prepared(plan, stages, work)
    say("hardware: matmul peak and FLOPs per image")
    hardware_spec = {"kind": "hardware", "params": str(paths.PARAMS), "variants": plan.variants,
                     "matmul_n": 1024 if plan.quick else 2048, "matmul_repeats": 5 if plan.quick else 10}
    wait_for_quiet(plan.quiet_wait, plan.quiet_threshold)
    hardware = run_worker(hardware_spec, work, "hardware")
    runs = measure_modes(plan, base, prepared, work)
    candidate_runs = measure_candidates(plan, base, prepared, work) if plan.candidates else {}
    result = summarize(plan, runs, candidate_runs, hardware, stages, account.report(), started)
    if result["stages"]:
        result["stages"].pop("prepared", None)
        result["stages"].pop("project", None)
    return result


def bench(plan: Plan) -> dict[str, Any]:
    """Measure everything in a temporary work folder and write the JSON and Markdown reports."""
    from benchmarks.report import render_markdown

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    account = CpuAccount()
    if account.busy_at_start:
        say("WARNING: the machine is busy (" + ", ".join(account.busy_at_start) + "); timings will be unreliable")
    work = Path(tempfile.mkdtemp(prefix="lenet-bench-"))
    try:
        result = measure_all(plan, work, account, started)
    finally:
        if plan.keep_tmp:
            say(f"kept the work directory {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    (plan.out_dir / "benchmark.md").write_text(render_markdown(result))
    say(f"wrote {plan.out_dir / 'benchmark.md'} and benchmark.json")
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        from benchmarks.workers import worker_main

        worker_main(argv[1], argv[2])
        return
    args = parse_args(argv)
    if args.render:
        from benchmarks.report import render_file

        run_main(lambda: render_file(args.render))
        return
    run_main(lambda: bench(make_plan(args)))
