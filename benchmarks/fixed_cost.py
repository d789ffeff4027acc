"""Fixed cost per training: what one training process costs besides ``model.fit``.

``python -m benchmarks.fixed_cost [--before REF] [--variant V] [--reps N] [--quick]``

In: the working tree (and, with ``--before``, the project at a git commit), the prepared arrays
(``data/prepared``, else ``--prepared``), params.yaml's study settings with ``--epochs`` (default 1).
Out: ``fixed_cost.json`` and ``fixed_cost.md`` in ``--out-dir`` (default ``reports/``).

Each training is the stage's own command, ``python -m pipeline.train --variant V --seed 0 --record
DIR``, started as DVC starts it (a fresh process, cwd a copy of the project, its own SQLite store made
by an untimed first training so that no timed run pays for creating the store or compiling bytecode).
The parent timestamps the child's output lines and splits its wall time into:

- ``start``: process launch to the ``training …`` line, printed just before ``model.fit`` (imports,
  params, data, model, MLflow run and its logged setup);
- ``fit``: the training's own ``train_seconds`` (``model.fit``, first-epoch tracing included);
- ``finish``: the end of ``fit`` to the ``done …`` line, printed once the MLflow run has ended (final
  diagnostics, artifacts, the model logged and registered, the run closed);
- ``exit``: the ``done …`` line to the process's exit (the DVC record, interpreter and TensorFlow shutdown).

The fixed cost is start + finish + exit. A bare Keras process gives the floor, timed the same way:
import, load the same arrays, build and compile the same model (``start``), ``model.fit`` (``fit``), one
test evaluation (``finish``), exit. Subjects run interleaved, their order rotated each repetition.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PHASES = ("start", "fit", "finish", "exit")
STARTED = re.compile(r"^training \S+: ")
DONE = re.compile(r"^done \S+: ")
BARE_FIT_START, BARE_FIT_END, BARE_DONE = "bare: fit starts", "bare: fit ended", "bare: done"


def phases(lines: list[tuple[float, str]], launched: float, exited: float, fit_seconds: float,
           started: re.Pattern = STARTED, done: re.Pattern = DONE) -> dict[str, float]:
    """Split one process's wall time (parent's clock) into ``PHASES`` from its timestamped lines."""
    t_start = next((t for t, line in lines if started.search(line)), None)
    t_done = next((t for t, line in lines if done.search(line)), None)
    if t_start is None or t_done is None:
        missing = "start" if t_start is None else "done"
        raise RuntimeError(f"the training printed no {missing} line; its output ends:\n"
                           + "\n".join(line for _, line in lines[-20:]))
    return {"start": t_start - launched, "fit": fit_seconds, "finish": t_done - t_start - fit_seconds,
            "exit": exited - t_done, "wall": exited - launched,
            "fixed": (t_start - launched) + (t_done - t_start - fit_seconds) + (exited - t_done)}


def timed_process(command: list[str], cwd: Path, env: dict, log: Path) -> tuple[list[tuple[float, str]], float, float, int]:
    """Run ``command``; its output lines with the parent's timestamps, launch and exit times, exit code."""
    launched = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter(), line.rstrip("\n")))
    code = proc.wait()
    exited = time.perf_counter()
    log.write_text("\n".join(f"{t - launched:8.3f} {line}" for t, line in lines) + "\n")
    return lines, launched, exited, code


class Subject:
    """One way to train: the pipeline in a project folder, or bare Keras."""

    def __init__(self, name: str, project: Path, bare: bool = False):
        self.name, self.project, self.bare = name, project, bare

    def command(self, args: argparse.Namespace, record: Path) -> list[str]:
        limits = []
        if args.train_limit:
            limits += ["--train-limit", str(args.train_limit), "--test-limit", str(args.test_limit)]
        if self.bare:
            return [sys.executable, "-m", "benchmarks.fixed_cost", "_bare", args.variant, str(args.epochs),
                    str(self.project / "data" / "prepared"), *[str(x) for x in limits[1::2]]]
        return [sys.executable, "-m", "pipeline.train", "--variant", args.variant, "--seed", "0",
                "--epochs", str(args.epochs), *limits, "--record", str(record)]

    def run(self, args: argparse.Namespace, work: Path, tag: str) -> dict[str, float]:
        from benchmarks.launch import clean_env

        record = work / f"{self.name}-{tag}"
        env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{self.project / 'mlflow.db'}")
        lines, launched, exited, code = timed_process(self.command(args, record), self.project, env,
                                                      work / f"{self.name}-{tag}.log")
        if code != 0:
            from pipeline.core.errors import UserError

            tail = "\n".join(line for _, line in lines[-15:])
            raise UserError(f"{self.name} ({tag}) failed with exit {code}; its output ends:\n{tail}")
        if self.bare:
            fit = next(float(line.split()[-2]) for _, line in lines if line.startswith(BARE_FIT_END))
            return phases(lines, launched, exited, fit, re.compile(re.escape(BARE_FIT_START)),
                          re.compile(re.escape(BARE_DONE)))
        fit = json.loads((record / "record.json").read_text())["train_seconds"]
        return phases(lines, launched, exited, fit)


def project_at(ref: str | None, folder: Path, prepared: Path) -> Path:
    """A copy of the project (the working tree's tracked files, as ``testbed.project_copy`` makes it, or
    ``ref``'s) sharing ``prepared``."""
    from benchmarks.plan import load_params
    from pipeline.core import paths
    from testbed import project_copy

    if ref is None:
        project_copy(folder, load_params())
    else:
        folder.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", ref], cwd=paths.ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "prepared").symlink_to(prepared.resolve())
    summary = prepared.parent / "summary.json"
    if summary.is_file():
        shutil.copy2(summary, folder / "data" / "summary.json")
    return folder


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    keys = (*PHASES, "fixed", "wall")
    return {name: {key: {"median": statistics.median(r[key] for r in reps), "min": min(r[key] for r in reps),
                         "max": max(r[key] for r in reps)} for key in keys}
            for name, reps in runs.items()}


def markdown(result: dict[str, Any]) -> str:
    out = ["# Fixed cost per training", "",
           f"Generated by `{result['command']}` on {result['date']}, commit `{result['commit']}`. "
           "Machine: {cpu}, {logical_cores} logical cores; TensorFlow {tensorflow}, Keras {keras}.".format(**result["machine"]), "",
           f"Variant `{result['variant']}`, seed 0, {result['epochs']} epoch(s) of "
           f"{result['train_images']} training images, the study's other settings (diagnostics and convergence "
           f"checks as in params.yaml); each training is `python -m pipeline.train … --record DIR` in a fresh "
           f"process in a project copy with a warmed-up store; bare Keras is the floor (import, load, build, "
           f"compile, fit, one evaluation). Seconds, median (min–max) over {result['reps']} repetition(s), "
           "subjects interleaved. start: launch → the line printed just before `model.fit`; fit: `model.fit`; "
           "finish: end of fit → the MLflow run ended; exit: → process exit. Fixed = start + finish + exit.", "",
           "| subject | start | fit | finish | exit | **fixed** | wall |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in result["summary"].items():
        cells = [f"{s[k]['median']:.2f} ({s[k]['min']:.2f}–{s[k]['max']:.2f})" for k in (*PHASES, "fixed", "wall")]
        cells[4] = f"**{cells[4]}**"
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    summary = result["summary"]
    fixed = {name: s["fixed"]["median"] for name, s in summary.items()}
    bare = fixed.get("bare Keras")
    for name, seconds in fixed.items():
        if name == "bare Keras" or bare is None:
            continue
        extra = {phase: summary[name][phase]["median"] - summary["bare Keras"][phase]["median"]
                 for phase in ("start", "finish", "exit")}
        ratio = summary["bare Keras"]["fit"]["median"] / summary[name]["fit"]["median"]
        out.append(f"- {name}: fixed cost {seconds:.2f} s, {seconds - bare:+.2f} s beyond bare Keras's "
                   + ", ".join(f"{phase} {value:+.2f} s" for phase, value in extra.items())
                   + f"; throughput {ratio:.2f}× bare Keras's (its median fit time over this one's).")
    now = "pipeline (this tree)"
    for name in fixed:
        if name.startswith("pipeline at "):
            change = fixed[now] - fixed[name]
            out.append(f"- Before → after: {fixed[name]:.2f} s ({name}) → {fixed[now]:.2f} s (this tree), "
                       f"{change:+.2f} s ({100 * change / fixed[name]:+.0f}%) per training.")
    out.append("")
    return "\n".join(out)


def bare_main(variant: str, epochs: str, prepared: str, train_limit: str = "", test_limit: str = "") -> None:
    """The bare Keras process: the benchmark's bare script (``benchmarks.workers.train_bare``: the notebook's
    way on the same model and arrays), with its phases printed."""
    print("bare: importing", flush=True)
    from types import SimpleNamespace

    import keras

    from benchmarks.workers import train_bare
    from pipeline.core.params import Params

    class Phases(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()
            print(BARE_FIT_START, flush=True)

        def on_train_end(self, logs=None):
            print(f"{BARE_FIT_END} {time.perf_counter() - self.begin:.4f} s", flush=True)

    params = Params.load().with_train({"epochs": int(epochs), "train_limit": int(train_limit) if train_limit else None,
                                       "test_limit": int(test_limit) if test_limit else None})
    train_bare({"variant": variant, "seed": 0, "prepared": prepared}, params, SimpleNamespace(callback=Phases()))
    print(BARE_DONE, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from pipeline.core import paths

    p = argparse.ArgumentParser(prog="python -m benchmarks.fixed_cost", description=__doc__.splitlines()[0])
    p.add_argument("--before", metavar="REF", help="also time the project at this git commit, side by side")
    p.add_argument("--variant", default="bn_dropout", help="default bn_dropout: every diagnostic applies to it")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="512 training and 256 test images, 1 repetition "
                   "(checks the code, not the cost)")
    p.add_argument("--prepared", type=Path, default=paths.PREPARED)
    p.add_argument("--out-dir", type=Path, default=paths.REPORTS)
    p.add_argument("--render", type=Path, metavar="JSON", help="only rewrite the Markdown next to an existing "
                   "fixed_cost.json")
    args = p.parse_args(argv)
    args.train_limit, args.test_limit = (512, 256) if args.quick else (None, None)
    return args


def measure(argv: list[str]) -> dict[str, Any]:
    """Every subject warmed up, then timed ``--reps`` times; the JSON and Markdown written."""
    from benchmarks.machine import git_state, machine_info
    from pipeline.core import paths
    from pipeline.core.errors import UserError

    args = parse_args(argv)
    if args.render:
        if not args.render.is_file():
            raise UserError(f"--render {args.render}: no such file; give the fixed_cost.json a run wrote")
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        return result
    reps = 1 if args.quick else args.reps
    if reps < 1:
        raise UserError("--reps must be >= 1")
    if args.before and subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.before}^{{commit}}"],
                                      cwd=paths.ROOT, capture_output=True).returncode != 0:
        raise UserError(f"--before {args.before}: not a commit of this repository; give a commit id, tag or branch")
    if not (args.prepared / "x_train.npy").is_file():
        raise UserError(f"no prepared arrays in {args.prepared}; run `dvc repro normalize` first or pass --prepared")
    work = Path(tempfile.mkdtemp(prefix="lenet-fixed-cost-"))
    try:
        subjects = [Subject("pipeline (this tree)", project_at(None, work / "now", args.prepared))]
        if args.before:
            subjects.append(Subject(f"pipeline at {args.before}", project_at(args.before, work / "before",
                                                                             args.prepared)))
        subjects.append(Subject("bare Keras", subjects[0].project, bare=True))
        for subject in subjects:
            print(f"warming up {subject.name}", flush=True)
            subject.run(args, work, "warmup")
        runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in subjects}
        for rep in range(reps):
            order = subjects[rep % len(subjects):] + subjects[:rep % len(subjects)]
            for subject in order:
                timing = subject.run(args, work, f"rep{rep}")
                runs[subject.name].append(timing)
                print(f"rep {rep + 1}/{reps} {subject.name}: fixed {timing['fixed']:.2f} s (start "
                      f"{timing['start']:.2f}, finish {timing['finish']:.2f}, exit {timing['exit']:.2f}), "
                      f"fit {timing['fit']:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    train_images = args.train_limit or 60000
    result = {"command": "python -m benchmarks.fixed_cost " + " ".join(argv),
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": git_state()["git_commit"][:10] + (" + local changes" if git_state()["git_dirty"] else ""),
              "machine": machine_info(), "variant": args.variant,
              "epochs": args.epochs, "train_images": f"{train_images:,}", "reps": reps,
              "runs": runs, "summary": summarize(runs)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "fixed_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "fixed_cost.md").write_text(markdown(result))
    print(markdown(result))
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_bare"]:
        bare_main(*argv[1:])
        return
    from pipeline.core.cli import run_main

    run_main(lambda: measure(argv))


if __name__ == "__main__":
    main()
