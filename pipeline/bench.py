"""Benchmark: the training pipeline against a bare Keras script, the DVC stages, the machine.

In: ``params.yaml`` (variants, the ``train`` and ``diagnostics`` sections), the MNIST files
(``MNIST_MIRROR``, else ``data/raw``, else the mirrors in params; the fixture subset in
``--quick``), and the machine itself. Nothing under the project's ``data/``, ``results/``,
``mlflow.db`` or ``mlruns/`` is written: every run goes to a temporary project copy or a
temporary MLflow store.

Out: ``reports/benchmark.json`` and ``reports/benchmark.md`` (``--out-dir`` elsewhere):

- ``throughput``: images/s of ``pipeline.train.train`` (its own ``images_per_second``
  metric, diagnostics on as shipped and off) and of a bare Keras script (the notebook's
  way: same ``build_lenet`` model, same optimizer/loss/metric, ``model.fit`` on NumPy
  arrays, same batch size, no callbacks), per variant, median and min–max over
  repetitions. Both are timed over the same epochs including the same first-epoch warm-up
  (``whole``), and per epoch with an identical epoch timer (``steady``: epochs 2..E).
- ``stages``: wall time of every stage of a 1-epoch ``dvc repro`` in a fresh project copy
  (from the timestamps of DVC's ``Running stage`` lines), and of a no-op ``dvc repro``.
- ``memory``: peak RSS of the training stage (psutil sampling inside the repro, and
  ``getrusage`` of each training worker).
- ``hardware``: float32 matmul peak FLOP/s (NumPy and TF), LeNet FLOPs per image counted
  from the layers, achieved FLOP/s (training = 3 x forward) and its fraction of the peak.
- ``candidates`` (``--candidates``): speed-ups tried on the pipeline without changing the
  model, each with a determinism check (all repetitions share the seed, so their final
  weights must hash the same).

Usage: ``make bench`` (= ``python -m pipeline.bench``: dvc timing, 3 repetitions, ~30 min);
``--quick`` (fixture subset, a few batches, 1 repetition: checks the code, not the speed);
``--candidates baseline spe=5 threads=2x1`` adds speed-ups to try; on a shared machine add
``--quiet-wait 900 --retries 2`` so each run starts, and is re-run, until nobody else uses the CPU.

Every measurement runs in a fresh subprocess (``python -m pipeline.bench _worker SPEC OUT``)
so TF state (op determinism, thread pools, traced functions) never leaks between them.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline import paths
from pipeline.cli import run_main
from pipeline.errors import UserError


def load_params(path: Path = paths.PARAMS) -> dict:
    """params.yaml as a plain mapping: the benchmark writes modified copies of it."""
    return yaml.safe_load(Path(path).read_text())

FIXTURE_MNIST = paths.ROOT / "tests" / "fixtures" / "mnist"
MODES = ("bare", "pipeline", "pipeline_nodiag")
MODE_LABELS = {"bare": "bare Keras (notebook way)", "pipeline": "pipeline, diagnostics on (as shipped)",
               "pipeline_nodiag": "pipeline, diagnostics off"}
DEFAULT_VARIANTS = ("bn_hidden", "dropout")
GIB = 1024 ** 3
QUIET_CORES = 0.1  # others' CPU, in cores, below which the machine counts as quiet
TARGETS = {"ratio": 1.0, "noop_seconds": 2.0, "train_peak_rss_bytes": 2 * GIB, "diagnostics_added": 0.05}

# Rough cost, in FLOPs, of one element of an elementwise layer's output (forward pass).
# Convolutions and dense layers are counted exactly (2 per multiply-add, +1 per bias);
# these are the cheap rest, counted so their share is visible, not to the last FLOP.
ELEMENTWISE_FLOPS = {
    "BatchNormalization": 2,  # (x - mean) * scale + shift, folded into one multiply-add
    "tanh": 1,
    "Dropout": 1,             # one multiply by the (scaled) mask
    "softmax": 3,             # exp, sum, divide
}
TRAIN_FLOPS_FACTOR = 3  # backward ~ 2 x forward (gradients w.r.t. inputs and weights)


# --- Small helpers ---------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max, IQR and the raw values of a list of measurements."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "iqr": None, "values": []}
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {"n": len(vals), "median": statistics.median(vals), "min": vals[0], "max": vals[-1],
            "iqr": q3 - q1, "values": [float(v) for v in values]}


def _fmt_spread(s: dict, digits: int = 0, scale: float = 1.0) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    f = f"{{:,.{digits}f}}"
    med = f.format(s["median"] * scale)
    if s["n"] < 2:
        return med
    return f"{med} ({f.format(s['min'] * scale)}–{f.format(s['max'] * scale)})"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# --- FLOPs ---------------------------------------------------------------------


def layer_flops(model) -> list[dict[str, Any]]:
    """Forward FLOPs per image of every layer of a Keras model (batch dimension dropped).

    Conv2D: 2*k*k*cin*cout*Hout*Wout (+Hout*Wout*cout for the bias); Dense: 2*in*out
    (+out); AveragePooling2D: pool_h*pool_w per output element; BatchNormalization, tanh,
    Dropout and softmax: ``ELEMENTWISE_FLOPS`` per output element. Input, Flatten: 0.
    """
    import math

    from keras import layers

    rows = []
    for layer in model.layers:
        kind = type(layer).__name__
        out_shape = tuple(layer.output.shape[1:])
        n_out = math.prod(out_shape)
        matmul = elementwise = 0
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            hout, wout, cout = out_shape
            matmul = 2 * kh * kw * cin * cout * hout * wout // layer.groups
            elementwise = n_out if layer.use_bias else 0
        elif isinstance(layer, layers.Dense):
            n_in = layer.input.shape[-1]
            matmul = 2 * n_in * layer.units
            elementwise = layer.units if layer.use_bias else 0
        elif isinstance(layer, (layers.AveragePooling2D, layers.MaxPooling2D)):
            ph, pw = layer.pool_size
            elementwise = ph * pw * n_out
        elif isinstance(layer, layers.BatchNormalization):
            elementwise = ELEMENTWISE_FLOPS["BatchNormalization"] * n_out
        elif isinstance(layer, layers.Dropout):
            elementwise = ELEMENTWISE_FLOPS["Dropout"] * n_out
        elif isinstance(layer, (layers.InputLayer, layers.Flatten)):
            pass
        elif not isinstance(layer, layers.Activation):
            raise ValueError(f"layer_flops: no rule for {kind} layer '{layer.name}'")
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        if activation in ("tanh", "softmax"):
            elementwise += ELEMENTWISE_FLOPS[activation] * n_out
        elif activation != "linear":
            raise ValueError(f"layer_flops: no rule for activation '{activation}' of '{layer.name}'")
        rows.append({"layer": layer.name, "type": kind, "output_shape": list(out_shape),
                     "matmul_flops": int(matmul), "elementwise_flops": int(elementwise),
                     "flops": int(matmul + elementwise)})
    return rows


def flops_summary(model) -> dict[str, Any]:
    rows = layer_flops(model)
    forward = sum(r["flops"] for r in rows)
    matmul = sum(r["matmul_flops"] for r in rows)
    return {"forward_flops_per_image": forward, "matmul_flops_per_image": matmul,
            "elementwise_flops_per_image": forward - matmul,
            "train_flops_per_image": TRAIN_FLOPS_FACTOR * forward, "layers": rows}


# --- Workers (run in a fresh subprocess each) ----------------------------------


@dataclass
class Candidate:
    """A change to how the pipeline trains that leaves the model and its math alone."""

    name: str = "baseline"
    steps_per_execution: int | None = None
    intra_threads: int | None = None
    inter_threads: int | None = None
    xla: bool = False
    determinism: bool = True
    arrays: bool = False
    onednn: bool | None = None

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``baseline``, or ``+``-joined parts: ``spe=N``, ``threads=INTRAxINTER``, ``xla``
        (implies ``nodet``), ``nodet`` (op determinism off), ``arrays`` (NumPy arrays into ``fit``,
        Keras' autotuned input pipeline, instead of ``train.batches``), ``onednn=0|1``."""
        c = cls(name=text)
        if text == "baseline":
            return c
        for part in text.split("+"):
            key, _, value = part.partition("=")
            try:
                if key == "spe":
                    c.steps_per_execution = int(value)
                elif key == "threads":
                    intra, _, inter = value.partition("x")
                    c.intra_threads = int(intra) if intra else None
                    c.inter_threads = int(inter) if inter else None
                elif key == "xla" and not value:
                    c.xla, c.determinism = True, False
                elif key == "nodet" and not value:
                    c.determinism = False
                elif key == "arrays" and not value:
                    c.arrays = True
                elif key == "onednn" and value in ("0", "1"):
                    c.onednn = value == "1"
                else:
                    raise ValueError
            except ValueError:
                raise UserError(f"--candidates: cannot read '{part}' in '{text}'; use baseline or parts like "
                                "spe=16, threads=2x1, xla, nodet, arrays, onednn=0 joined with '+'") from None
        return c


class _EpochTimer:
    """Wall time of each epoch, begin to end, after every other callback has run."""

    def __init__(self):
        import keras

        outer = self

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.begins.append(time.perf_counter())

            def on_epoch_end(self, epoch, logs=None):
                outer.ends.append(time.perf_counter())

        self.begins: list[float] = []
        self.ends: list[float] = []
        self.callback = Timer()

    def seconds(self) -> list[float]:
        return [e - b for b, e in zip(self.begins, self.ends)]


def _weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(w.tobytes())
    return h.hexdigest()


def _configure_tf(c: Candidate) -> None:
    import tensorflow as tf

    if c.intra_threads:
        tf.config.threading.set_intra_op_parallelism_threads(c.intra_threads)
    if c.inter_threads:
        tf.config.threading.set_inter_op_parallelism_threads(c.inter_threads)


def _worker_train(spec: dict) -> dict:
    """One training measurement: ``spec['mode']`` is ``bare`` or ``pipeline``."""
    c = Candidate(**spec.get("candidate", {}))
    _configure_tf(c)
    import keras

    from pipeline.inputs import load_data
    from pipeline.params import Params
    from pipeline.train import TrainOptions, train

    params = Params.load(Path(spec["params"]))
    prepared = Path(spec["prepared"])
    vspec = params.variant(spec["variant"])
    settings = params.train
    seed = int(spec["seed"])
    timer = _EpochTimer()
    out: dict[str, Any] = {"mode": spec["mode"], "variant": vspec.name, "candidate": c.name,
                           "batch_size": settings.batch_size, "epochs": settings.epochs}

    if spec["mode"] == "pipeline":
        options = TrainOptions(callbacks=(timer.callback,), compile={"jit_compile": True} if c.xla else {},
                               op_determinism=c.determinism, inputs="arrays" if c.arrays else "batches")
        started = time.perf_counter()
        result = train(vspec.name, seed, params=params, prepared=prepared, options=options)
        out["train_call_seconds"] = time.perf_counter() - started
        out["diagnostics_final_seconds"] = result.diagnostics_seconds
        model = result.model
        n_train = round(result.metrics["images_per_second"] * result.metrics["train_seconds"] / settings.epochs)
        out.update(fit_seconds=result.metrics["train_seconds"], images_per_second=result.metrics["images_per_second"],
                   test_loss=result.metrics["test_loss"], test_accuracy=result.metrics["test_accuracy"],
                   jit_compile=bool(model.jit_compile), steps_per_execution=int(model.steps_per_execution))
    else:
        data = load_data(settings, prepared)
        y_train = keras.utils.to_categorical(data["y_train"], 10)
        y_test = keras.utils.to_categorical(data["y_test"], 10)
        keras.utils.set_random_seed(seed)
        from pipeline.model import build_lenet

        model = build_lenet(vspec)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=settings.learning_rate, momentum=settings.momentum),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        n_train = len(y_train)
        start = time.perf_counter()
        model.fit(data["x_train"], y_train, batch_size=settings.batch_size, epochs=settings.epochs,
                  shuffle=settings.shuffle, verbose=0, callbacks=[timer.callback])
        seconds = time.perf_counter() - start
        test_loss, test_acc = model.evaluate(data["x_test"], y_test, batch_size=1000, verbose=0)
        out.update(fit_seconds=seconds, images_per_second=settings.epochs * n_train / seconds,
                   test_loss=float(test_loss), test_accuracy=float(test_acc), jit_compile=bool(model.jit_compile),
                   steps_per_execution=int(model.steps_per_execution))

    epoch_seconds = timer.seconds()
    steady = epoch_seconds[1:]
    out.update(n_train=n_train, epoch_seconds=epoch_seconds,
               steady_images_per_second=(n_train * len(steady) / sum(steady)) if steady else None,
               weights_sha256=_weights_digest(model),
               peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return out


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _worker_hardware(spec: dict) -> dict:
    """float32 matmul peak (NumPy and TF) and LeNet FLOPs per image of every variant."""
    import numpy as np
    import tensorflow as tf

    from pipeline.model import build_lenet
    from pipeline.params import Params

    n, repeats = int(spec["matmul_n"]), int(spec["matmul_repeats"])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n ** 3
    np.matmul(a, b)
    numpy_s = _best_of(lambda: np.matmul(a, b), repeats)
    ta, tb = tf.constant(a), tf.constant(b)
    tf.linalg.matmul(ta, tb).numpy()
    tf_s = _best_of(lambda: tf.linalg.matmul(ta, tb).numpy(), repeats)
    params = Params.load(Path(spec["params"]))
    flops = {name: flops_summary(build_lenet(params.variant(name))) for name in spec["variants"]}
    return {"matmul_n": n, "matmul_repeats": repeats,
            "numpy_matmul_flops_per_second": flop / numpy_s, "tf_matmul_flops_per_second": flop / tf_s,
            "peak_flops_per_second": flop / min(numpy_s, tf_s), "flops": flops}


def worker_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = _worker_hardware(spec) if spec["kind"] == "hardware" else _worker_train(spec)
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")


# --- The orchestrator ----------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    bin_dir = str(Path(sys.executable).parent)
    env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1",
                "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra)
    return env


class CpuAccount:
    """How much CPU other processes used while we ran: system busy time minus our own."""

    def __init__(self, snapshot_processes: bool = True):
        import psutil

        self._psutil = psutil
        self.load_start = os.getloadavg()
        self.busy_at_start = self._busy_processes() if snapshot_processes else []
        self.wall0 = time.perf_counter()
        self.busy0 = self._busy()
        self.ours0 = self._ours()

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    @staticmethod
    def _ours() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def _busy_processes(self, threshold: float = 10.0) -> list[str]:
        procs = []
        me = os.getpid()
        for p in self._psutil.process_iter(["pid", "name"]):
            try:
                p.cpu_percent(None)
                procs.append(p)
            except self._psutil.Error:
                pass
        time.sleep(1.0)
        busy = []
        for p in procs:
            try:
                pct = p.cpu_percent(None)
                if p.pid != me and pct >= threshold:
                    busy.append(f"{p.info['name']} (pid {p.pid}, {pct:.0f}% CPU)")
            except self._psutil.Error:
                pass
        return busy

    def other_cores(self) -> float:
        """Cores' worth of CPU that processes other than ours used since the start, on average."""
        wall = time.perf_counter() - self.wall0
        other = max(0.0, (self._busy() - self.busy0) - (self._ours() - self.ours0))
        return other / wall if wall > 0 else 0.0

    def report(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall0
        other = max(0.0, (self._busy() - self.busy0) - (self._ours() - self.ours0))
        other_cores = other / wall if wall > 0 else 0.0
        quiet = other_cores < QUIET_CORES and not self.busy_at_start
        return {"wall_seconds": wall, "other_cpu_seconds": other, "other_cores_mean": other_cores,
                "load_average_start": list(self.load_start), "load_average_end": list(os.getloadavg()),
                "busy_processes_at_start": self.busy_at_start, "quiet": quiet}


@dataclass
class Plan:
    quick: bool
    out_dir: Path
    reps: int
    epochs: int
    variants: list[str]
    candidates: list[Candidate]
    candidate_variants: list[str] = field(default_factory=list)
    seed: int = 0
    dvc: bool = True
    prepared: Path | None = None
    mirror: str | None = None
    keep_tmp: bool = False
    quiet_wait: float = 0.0       # seconds to wait, before each run, for the others' CPU to drop
    retries: int = 0              # re-runs of a run that others' CPU disturbed
    quiet_threshold: float = QUIET_CORES
    train_limit: int | None = None
    test_limit: int | None = None


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_worker(spec: dict, work: Path, name: str, env_extra: dict | None = None, timeout: float = 3600) -> dict:
    wdir = work / name
    wdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = wdir / "spec.json", wdir / "result.json", wdir / "worker.log"
    spec_path.write_text(json.dumps(spec, indent=2))
    env = _clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{wdir / 'store' / 'mlflow.db'}", **(env_extra or {}))
    cpu = CpuAccount(snapshot_processes=False)
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "pipeline.bench", "_worker", str(spec_path), str(out_path)],
                              cwd=paths.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise UserError(f"benchmark worker {name} failed (exit {proc.returncode}); its log {log_path} ends:\n{tail}")
    result = json.loads(out_path.read_text())
    result["other_cores_mean"] = cpu.other_cores()  # CPU others took while this worker ran
    return result


def wait_for_quiet(max_wait: float, threshold: float = QUIET_CORES, window: float = 3.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores over ``window`` s."""
    start = time.perf_counter()
    announced = False
    while time.perf_counter() - start < max_wait:
        cpu = CpuAccount(snapshot_processes=False)
        time.sleep(window)
        other = cpu.other_cores()
        if other < threshold:
            break
        if not announced:
            _say(f"  waiting for the machine to be quiet (others use {other:.2f} cores)")
            announced = True
    return time.perf_counter() - start


def measure(plan: Plan, spec: dict, work: Path, name: str, env_extra: dict | None = None) -> dict:
    """One run, started on a quiet machine if ``plan.quiet_wait``; re-run (``plan.retries``
    times) when others' CPU disturbed it. The disturbed attempts are kept in ``discarded``."""
    discarded = []
    for attempt in range(plan.retries + 1):
        waited = wait_for_quiet(plan.quiet_wait, plan.quiet_threshold) if plan.quiet_wait > 0 else 0.0
        r = run_worker(spec, work, name if attempt == 0 else f"{name}-retry{attempt}", env_extra)
        r["waited_seconds"] = waited
        if r["other_cores_mean"] < plan.quiet_threshold or attempt == plan.retries:
            r["discarded"] = discarded
            return r
        _say(f"  others used {r['other_cores_mean']:.2f} cores during the run: running it again")
        discarded.append({k: r[k] for k in ("images_per_second", "steady_images_per_second", "other_cores_mean")})
    raise AssertionError("unreachable")


def _bench_params(base: dict, plan: Plan, *, diagnostics: bool, spe: int | None = None) -> dict:
    params = copy.deepcopy(base)
    params["train"].update({"epochs": plan.epochs, "train_limit": plan.train_limit, "test_limit": plan.test_limit})
    if spe is not None:
        params["train"]["steps_per_execution"] = spe
    params.setdefault("diagnostics", {})["enabled"] = diagnostics
    params["mlflow"]["experiment"] = "benchmark"
    return params


def fixture_pins() -> dict[str, str]:
    pins = {}
    for line in (FIXTURE_MNIST / "SHA256SUMS").read_text().splitlines():
        sha, name = line.split()
        pins[name] = sha
    return pins


def project_copy(dest: Path, params: dict) -> Path:
    """The project's tracked files (no data, results, reports, tests, lock) as a fresh git + DVC repo.

    The same copy ``tests/conftest.py::make_project_copy`` makes for the DVC tests.
    """
    files = _git("ls-files").split("\n")
    if not files or files == [""]:
        raise UserError(f"{paths.ROOT} is not a git working copy: `git ls-files` listed nothing to copy")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in files:
        if rel.startswith(("tests/", "data/", "results/", "reports/", ".ci/")) or rel == "dvc.lock":
            continue
        if not (paths.ROOT / rel).exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths.ROOT / rel, target)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "benchmark copy"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True)
    return dest


RUNNING = re.compile(r"Running stage '([^']+)'")


def stage_times(lines: list[tuple[float, str]], start: float, end: float) -> dict[str, Any]:
    """Per-stage wall time from timestamped DVC output lines: a stage runs from its
    ``Running stage`` line to the next one (or the end), so caching its outputs and
    updating the lock file count as the stage's time."""
    starts = [(t, m.group(1)) for t, line in lines if (m := RUNNING.search(line))]
    stages = {}
    for i, (t, name) in enumerate(starts):
        t_next = starts[i + 1][0] if i + 1 < len(starts) else end
        stages[name] = t_next - t
    return {"stages": stages, "startup_seconds": (starts[0][0] - start) if starts else end - start,
            "total_seconds": end - start}


class _RssSampler(threading.Thread):
    """Peak RSS of the processes under ``pid``, per stage (``current`` is set by the reader):
    of the whole tree (sum), and of each process by command line."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.current = "(dvc startup)"
        self.peak_tree: dict[str, int] = {}
        self.peak_process: dict[str, dict[str, int]] = {}
        self._halt = threading.Event()

    def run(self):
        import psutil

        while not self._halt.is_set():
            try:
                kids = self.root.children(recursive=True)
            except psutil.Error:
                break
            tree = 0
            per = self.peak_process.setdefault(self.current, {})
            for p in kids:
                try:
                    rss = p.memory_info().rss
                    cmd = " ".join(p.cmdline())[:120]
                except psutil.Error:
                    continue
                tree += rss
                per[cmd] = max(per.get(cmd, 0), rss)
            self.peak_tree[self.current] = max(self.peak_tree.get(self.current, 0), tree)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)

    def peak_of(self, stage: str, needle: str) -> int:
        return max([rss for cmd, rss in self.peak_process.get(stage, {}).items() if needle in cmd], default=0)


def dvc_repro_timed(project: Path, env: dict, timeout: float = 7200) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    sampler = _RssSampler(proc.pid)
    sampler.start()
    lines: list[tuple[float, str]] = []
    deadline = start + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        lines.append((now, line.rstrip("\n")))
        if m := RUNNING.search(line):
            sampler.current = m.group(1)
        if now > deadline:
            proc.kill()
            break
    rc = proc.wait()
    end = time.perf_counter()
    sampler.stop()
    out = stage_times(lines, start, end)
    out.update(returncode=rc, output=[line for _, line in lines], peak_rss_bytes_by_stage=sampler.peak_tree,
               peak_stage_process_rss_bytes={stage: sampler.peak_of(stage, "pipeline.") for stage in out["stages"]},
               processes_by_stage={stage: dict(sorted(per.items(), key=lambda kv: -kv[1])[:4])
                                   for stage, per in sampler.peak_process.items()})
    return out


def _mirror(plan: Plan) -> str | None:
    if plan.quick:
        return str(FIXTURE_MNIST)
    if plan.mirror:
        return plan.mirror
    if os.environ.get("MNIST_MIRROR"):
        return os.environ["MNIST_MIRROR"]
    params = load_params()
    if all((paths.RAW / name).is_file() for name in params["download"]["files"]):
        return str(paths.RAW)  # read only: download copies from a mirror folder into the copy
    return None  # the mirrors listed in params.yaml


def measure_stages(plan: Plan, base: dict, work: Path) -> dict[str, Any]:
    params = copy.deepcopy(base)
    params["train"]["epochs"] = 1
    if plan.quick:
        params["download"]["mirrors"] = []
        params["download"]["files"] = fixture_pins()
        params["variants"] = {plan.variants[0]: params["variants"][plan.variants[0]]}  # one stage is enough to check
    project = project_copy(work / "project", params)
    mirror = _mirror(plan)
    extra = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    env = _clean_env(**extra)
    env.pop("MNIST_MIRROR", None)
    if mirror:
        env["MNIST_MIRROR"] = mirror
    _say(f"dvc repro (1 epoch) in {project}")
    first = dvc_repro_timed(project, env)
    if first["returncode"] != 0:
        tail = "\n".join(first["output"][-30:])
        raise UserError(f"`dvc repro` in the benchmark copy {project} failed (exit {first['returncode']}):\n{tail}")
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    noops = []
    for i in range(3):
        t = time.perf_counter()
        r = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
        noops.append(time.perf_counter() - t)
        if r.returncode != 0 or RUNNING.search(r.stdout):
            raise UserError(f"the no-op `dvc repro` #{i + 1} in {project} ran a stage or failed:\n{r.stdout}{r.stderr}")
    _say(f"dvc repro took {first['total_seconds']:.1f} s; no-op {statistics.median(noops):.2f} s")
    train_peaks = {k: v for k, v in first["peak_stage_process_rss_bytes"].items() if k.startswith("train@")}
    return {"project": str(project), "mirror": mirror, "epochs": 1,
            "variants": list(params["variants"]), "seeds": params.get("seeds"),
            "stage_seconds": first["stages"], "dvc_startup_seconds": first["startup_seconds"],
            "repro_seconds": first["total_seconds"], "noop_seconds": spread(noops),
            "peak_rss_bytes_by_stage": first["peak_stage_process_rss_bytes"],
            "peak_tree_rss_bytes_by_stage": first["peak_rss_bytes_by_stage"],
            "largest_processes_by_stage": first["processes_by_stage"],
            "train_stage_peak_rss_bytes_sampled": max(train_peaks.values(), default=0),
            "max_child_rss_bytes_getrusage": children_maxrss,
            "prepared": str(project / "data" / "prepared")}


def _prepare_fixture(work: Path) -> Path:
    from pipeline.download import download
    from pipeline.normalize import normalize

    base = work / "fixture-data"
    saved = os.environ.pop("MNIST_MIRROR", None)
    try:
        download({"mirrors": [str(FIXTURE_MNIST)], "files": fixture_pins()}, raw_dir=base / "raw")
    finally:
        if saved is not None:
            os.environ["MNIST_MIRROR"] = saved
    normalize({"scale": 255.0}, raw_dir=base / "raw", out_dir=base / "prepared", summary_path=base / "summary.json")
    return base / "prepared"


def _throughput_spec(plan: Plan, params_path: Path, prepared: Path, mode: str, variant: str,
                     cand: Candidate | None = None) -> dict:
    cand_fields = {k: v for k, v in vars(cand).items()} if cand else {}
    return {"kind": "train", "mode": "bare" if mode == "bare" else "pipeline", "variant": variant,
            "seed": plan.seed, "params": str(params_path), "prepared": str(prepared), "candidate": cand_fields}


def _onednn_env(c: Candidate | None) -> dict[str, str]:
    if c is None or c.onednn is None:
        return {}
    return {"TF_ENABLE_ONEDNN_OPTS": "1" if c.onednn else "0"}


def measure_throughput(plan: Plan, base: dict, prepared: Path, work: Path) -> tuple[dict, dict]:
    params_paths = {}
    for mode, diag in (("bare", True), ("pipeline", True), ("pipeline_nodiag", False)):
        p = work / f"params-{mode}.yaml"
        p.write_text(yaml.safe_dump(_bench_params(base, plan, diagnostics=diag), sort_keys=False))
        params_paths[mode] = p
    runs: dict[str, dict[str, list[dict]]] = {v: {m: [] for m in MODES} for v in plan.variants}
    for rep in range(plan.reps):
        order = list(MODES[rep % len(MODES):] + MODES[:rep % len(MODES)])  # rotate: no mode always goes first
        for variant in plan.variants:
            for mode in order:
                name = f"rep{rep + 1}-{variant}-{mode}"
                _say(f"throughput {name}")
                r = measure(plan, _throughput_spec(plan, params_paths[mode], prepared, mode, variant), work, name)
                runs[variant][mode].append(r)
                _say(f"  {r['images_per_second']:.0f} images/s whole fit, "
                     f"{r['steady_images_per_second'] or float('nan'):.0f} steady")

    cand_runs: dict[str, dict[str, list[dict]]] = {}
    if plan.candidates:
        for rep in range(plan.reps):
            for cand in plan.candidates:
                spe_params = work / f"params-cand-{re.sub(r'[^A-Za-z0-9]+', '_', cand.name)}.yaml"
                spe_params.write_text(yaml.safe_dump(
                    _bench_params(base, plan, diagnostics=True, spe=cand.steps_per_execution), sort_keys=False))
                for variant in plan.candidate_variants:
                    name = f"cand-rep{rep + 1}-{variant}-{re.sub(r'[^A-Za-z0-9]+', '_', cand.name)}"
                    _say(f"candidate {cand.name}: {name}")
                    r = measure(plan, _throughput_spec(plan, spe_params, prepared, "pipeline", variant, cand), work,
                                name, _onednn_env(cand))
                    cand_runs.setdefault(cand.name, {}).setdefault(variant, []).append(r)
                    _say(f"  {r['images_per_second']:.0f} images/s whole fit, "
                         f"{r['steady_images_per_second'] or float('nan'):.0f} steady")
    return runs, cand_runs


def _summarize_mode(rs: list[dict]) -> dict[str, Any]:
    digests = sorted({r["weights_sha256"] for r in rs})
    return {"images_per_second": spread([r["images_per_second"] for r in rs]),
            "steady_images_per_second": spread([r["steady_images_per_second"] for r in rs
                                                if r["steady_images_per_second"] is not None]),
            "fit_seconds": spread([r["fit_seconds"] for r in rs]),
            "diagnostics_final_seconds": spread([r.get("diagnostics_final_seconds", 0.0) for r in rs]),
            "epoch_seconds": [r["epoch_seconds"] for r in rs],
            "peak_rss_bytes": spread([r["peak_rss_bytes"] for r in rs]),
            "test_accuracy": [r["test_accuracy"] for r in rs], "test_loss": [r["test_loss"] for r in rs],
            "weights_sha256": digests, "deterministic": len(digests) == 1 if len(rs) >= 2 else None,
            "n_train": rs[0]["n_train"], "epochs": rs[0]["epochs"], "batch_size": rs[0]["batch_size"],
            "jit_compile": rs[0]["jit_compile"], "steps_per_execution": rs[0]["steps_per_execution"],
            "other_cores_mean": [r.get("other_cores_mean") for r in rs],
            "other_cores_max": max((r.get("other_cores_mean") or 0.0) for r in rs),
            "discarded_runs": sum(len(r.get("discarded", [])) for r in rs)}


def _ratio(num: dict, den: dict) -> float | None:
    if not num.get("median") or not den.get("median"):
        return None
    return num["median"] / den["median"]


def diagnostics_cost(modes: dict[str, dict]) -> dict[str, Any]:
    """Time diagnostics add to training, as fractions of the time without them.

    From summarized modes (``_summarize_mode``; their ``values`` keep the run order).
    Paired by round: the i-th run with diagnostics on against the i-th without, which ran
    in the same interleaved round, so slow drift of the machine cancels. ``fit`` is the
    extra ``fit`` time, ``steady`` the same for epochs after the first, ``with_final`` also
    counts the measurements taken once after ``fit`` (final record, variance shift, figure).
    """
    on, off = modes["pipeline"], modes["pipeline_nodiag"]
    fit_on, fit_off = on["fit_seconds"]["values"], off["fit_seconds"]["values"]
    final = (on.get("diagnostics_final_seconds") or {}).get("values") or [0.0] * len(fit_on)
    steady_on, steady_off = on["steady_images_per_second"]["values"], off["steady_images_per_second"]["values"]
    return {
        "fit": spread([a / b - 1 for a, b in zip(fit_on, fit_off)]),
        "steady": spread([b / a - 1 for a, b in zip(steady_on, steady_off)]),
        "with_final": spread([(a + f) / b - 1 for a, f, b in zip(fit_on, final, fit_off)]),
    }


def summarize(plan: Plan, runs: dict, cand_runs: dict, hardware: dict, stages: dict | None,
              account: dict, started: str) -> dict[str, Any]:
    throughput = {}
    peak = hardware["peak_flops_per_second"]
    for variant, by_mode in runs.items():
        modes = {m: _summarize_mode(rs) for m, rs in by_mode.items()}
        train_flops = hardware["flops"][variant]["train_flops_per_image"]
        for m in modes.values():
            ips = m["steady_images_per_second"]["median"] or m["images_per_second"]["median"]
            m["achieved_flops_per_second"] = ips * train_flops
            m["fraction_of_peak"] = ips * train_flops / peak
        bare, pipe, nodiag = modes["bare"], modes["pipeline"], modes["pipeline_nodiag"]
        throughput[variant] = {
            "modes": modes,
            "ratio": _ratio(pipe["images_per_second"], bare["images_per_second"]),
            "ratio_steady": _ratio(pipe["steady_images_per_second"], bare["steady_images_per_second"]),
            "ratio_nodiag": _ratio(nodiag["images_per_second"], bare["images_per_second"]),
            "ratio_nodiag_steady": _ratio(nodiag["steady_images_per_second"], bare["steady_images_per_second"]),
            "diagnostics_added": diagnostics_cost(modes),
        }
    candidates = {}
    if cand_runs:
        base_name = "baseline" if "baseline" in cand_runs else None
        for name, by_variant in cand_runs.items():
            candidates[name] = {}
            for variant, rs in by_variant.items():
                s = _summarize_mode(rs)
                ref = (_summarize_mode(cand_runs[base_name][variant]) if base_name
                       else throughput[variant]["modes"]["pipeline"])
                s["speedup"] = _ratio(s["images_per_second"], ref["images_per_second"])
                s["speedup_steady"] = _ratio(s["steady_images_per_second"], ref["steady_images_per_second"])
                if base_name:  # the same round's baseline run: drift between rounds cancels
                    pairs = list(zip(rs, cand_runs[base_name][variant]))
                    s["paired_speedup_steady"] = spread([c["steady_images_per_second"] / b["steady_images_per_second"]
                                                         for c, b in pairs])
                    s["paired_speedup"] = spread([c["images_per_second"] / b["images_per_second"] for c, b in pairs])
                s["same_weights_as_baseline"] = s["weights_sha256"] == ref["weights_sha256"]
                s["vs_bare_steady"] = _ratio(s["steady_images_per_second"],
                                             throughput[variant]["modes"]["bare"]["steady_images_per_second"])
                s["vs_bare"] = _ratio(s["images_per_second"], throughput[variant]["modes"]["bare"]["images_per_second"])
                candidates[name][variant] = s
    memory = {"train_worker_peak_rss_bytes": max(throughput[v]["modes"]["pipeline"]["peak_rss_bytes"]["max"]
                                                 for v in throughput)}
    if stages:
        memory["train_stage_peak_rss_bytes"] = stages["train_stage_peak_rss_bytes_sampled"]
        memory["repro_max_process_rss_bytes"] = stages["max_child_rss_bytes_getrusage"]
    memory["peak_rss_bytes"] = max(v for k, v in memory.items() if k != "repro_max_process_rss_bytes")
    memory["target_bytes"] = TARGETS["train_peak_rss_bytes"]
    memory["meets_target"] = memory["peak_rss_bytes"] < TARGETS["train_peak_rss_bytes"]

    import psutil

    return {
        "generated": started, "mode": "quick" if plan.quick else "full",
        "command": " ".join(["python -m pipeline.bench", *sys.argv[1:]]),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
                    "python": platform.python_version(), "tensorflow": _version("tensorflow-cpu"),
                    "keras": _version("keras"), "numpy": _version("numpy"),
                    "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")},
        "quiet": account,
        "setup": {"variants": plan.variants, "repetitions": plan.reps, "epochs": plan.epochs, "seed": plan.seed,
                  "train_limit": plan.train_limit, "test_limit": plan.test_limit, "quiet_wait": plan.quiet_wait,
                  "retries": plan.retries, "quiet_threshold_cores": plan.quiet_threshold,
                  "steady_state": "epochs 2..E, each timed by the same epoch-end callback (after the pipeline's "
                                  "own callbacks) in both pipeline and bare",
                  "whole": "the pipeline's own train_seconds (model.fit over all E epochs, incl. the epoch-1 "
                           "warm-up/tracing); bare timed the same way around its model.fit"},
        "throughput": throughput,
        "headline": {v: {"ratio": t["ratio"], "ratio_steady": t["ratio_steady"]} for v, t in throughput.items()},
        "stages": stages,
        "memory": memory,
        "hardware": hardware,
        "candidates": candidates,
        "targets": {"ratio": TARGETS["ratio"], "noop_seconds": TARGETS["noop_seconds"],
                    "train_peak_rss_bytes": TARGETS["train_peak_rss_bytes"],
                    "diagnostics_added": TARGETS["diagnostics_added"]},
    }


# --- Report ----------------------------------------------------------------------


SLOW_EPOCH = 0.7  # an epoch slower than this fraction of the variant's fastest counts as slow


def epoch_lines(r: dict) -> list[str]:
    """Every epoch's images/s, per variant and mode/candidate: shows whether a median hides
    two speeds (a run's epochs are timed by the same callback in every mode)."""
    rows = []
    for variant, t in r["throughput"].items():
        groups = [(MODE_LABELS[m], ms) for m, ms in t["modes"].items()]
        groups += [(f"candidate {name}", by_v[variant]) for name, by_v in r["candidates"].items() if variant in by_v]
        n_train = t["modes"]["bare"]["n_train"]
        rates = {label: [[n_train / sec for sec in run] for run in g["epoch_seconds"]] for label, g in groups}
        fastest = max((x for runs in rates.values() for run in runs for x in run), default=0.0)
        for label, runs in rates.items():
            steady = [x for run in runs for x in run[1:]]
            slow = sum(x < SLOW_EPOCH * fastest for x in steady)
            shown = "; ".join(" ".join(f"{x:,.0f}" for x in run) for run in runs)
            rows.append(f"| {variant} | {label} | {shown} | {slow} of {len(steady)} |")
    if not rows:
        return []
    return ["", "## Epoch by epoch", "",
            "images/s of every epoch of every run (runs separated by `;`, the first epoch of each includes "
            f"tracing). An epoch after the first counts as slow below {SLOW_EPOCH:g} × the fastest epoch of "
            "that variant in any mode: a median over runs hides such epochs, this table does not.", "",
            "| variant | mode | images/s per epoch | slow epochs |", "| --- | --- | --- | --- |", *rows]


def _g(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(s: dict) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    if s["n"] < 2:
        return f"{100 * s['median']:.1f}%"
    return f"{100 * s['median']:.1f}% ({100 * s['min']:.1f} to {100 * s['max']:.1f})"


def diagnostics_lines(r: dict) -> str:
    """The diagnostics-cost paragraph: time added, paired by round, against the target."""
    target = r["targets"].get("diagnostics_added", TARGETS["diagnostics_added"])
    parts = []
    for variant, t in r["throughput"].items():
        added = t.get("diagnostics_added") or diagnostics_cost(t["modes"])  # older reports lack it
        fit = added["fit"]
        ok = fit["median"] is not None and fit["median"] < target
        final = t["modes"]["pipeline"].get("diagnostics_final_seconds")
        after = (f"; with the measurements after fit ({_fmt_spread(final, 1)} s) {_pct(added['with_final'])}"
                 if final else "")
        parts.append(f"{variant}: **{_pct(fit)}** of fit time ({'meets' if ok else 'misses'} the target), "
                     f"{_pct(added['steady'])} steady{after}")
    return (f"Diagnostics add to training time (on / off − 1, paired by round: median (min–max); target < "
            f"{100 * target:.0f}%): " + "; ".join(parts) + ".")


def render_markdown(r: dict) -> str:
    q, m, s = r["quiet"], r["machine"], r["setup"]
    quiet = ("yes" if q["quiet"] else "**no**") + (
        f" — other processes used {q['other_cores_mean']:.2f} cores on average over {q['wall_seconds']:.0f} s"
        f" (load average {q['load_average_start'][0]:.2f} at start)")
    if q["busy_processes_at_start"]:
        quiet += "; busy at start: " + ", ".join(q["busy_processes_at_start"])
    lines = [
        "# Benchmark: LeNet-5 training pipeline vs bare Keras",
        "",
        f"Generated by `{r['command']}` ({r['mode']} mode) on {r['generated']}, commit "
        f"`{r['git_commit'][:10] or 'n/a'}`{' + local changes' if r['git_dirty'] else ''}.",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['memory_bytes'] / GIB:.0f} GiB; "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, oneDNN {m['onednn']}.",
        f"Machine quiet: {quiet}. Each run below also lists the CPU other processes took while it ran "
        f"(system busy time minus ours, steal included): anything above ~{QUIET_CORES:g} core slows that run.",
    ]
    if s["quiet_wait"] or s["retries"]:
        n_discarded = sum(ms["discarded_runs"] for t in r["throughput"].values() for ms in t["modes"].values())
        n_discarded += sum(c["discarded_runs"] for by_v in r["candidates"].values() for c in by_v.values())
        lines.append(f"Each run waited up to {s['quiet_wait']:g} s for a quiet machine and was re-run up to "
                     f"{s['retries']} time(s) when disturbed; {n_discarded} disturbed run(s) discarded.")
    if r["mode"] == "quick":
        lines += ["", "**Quick mode**: a few batches of the fixture subset, one repetition. The numbers check that "
                  "the benchmark works; they say nothing about speed."]
    lines += [
        "",
        "## Throughput",
        "",
        f"Seed {s['seed']}, {s['epochs']} epochs of "
        f"{r['throughput'][s['variants'][0]]['modes']['bare']['n_train']:,} training images, batch "
        f"{r['throughput'][s['variants'][0]]['modes']['bare']['batch_size']}; median (min–max) over "
        f"{s['repetitions']} repetition(s), each in a fresh process, the modes' order rotated between repetitions.",
        "",
        f"- **whole**: {s['whole']}.",
        f"- **steady**: {s['steady_state']}. The pipeline's epoch includes its end-of-epoch test evaluation "
        "and MLflow logging; the bare script does neither.",
        "- **bare**: `build_lenet(spec)`, SGD/categorical cross-entropy/accuracy compiled as the pipeline does "
        "(but `steps_per_execution` 1, Keras' default), `model.fit` on NumPy arrays, `verbose=0`, no callbacks "
        "but the epoch timer, no op determinism.",
        "",
        "| variant | mode | images/s whole | images/s steady | ratio to bare (whole / steady) | peak RSS MiB "
        "| others' CPU, cores (worst run) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, t in r["throughput"].items():
        bare = t["modes"]["bare"]
        for mode, ms in t["modes"].items():
            ratio = "1" if mode == "bare" else (
                f"{_g(_ratio(ms['images_per_second'], bare['images_per_second']), 3)} / "
                f"{_g(_ratio(ms['steady_images_per_second'], bare['steady_images_per_second']), 3)}")
            lines.append(f"| {variant} | {MODE_LABELS[mode]} | {_fmt_spread(ms['images_per_second'])} | "
                         f"{_fmt_spread(ms['steady_images_per_second'])} | {ratio} | "
                         f"{_fmt_spread(ms['peak_rss_bytes'], 0, 1 / 2 ** 20)} | {ms['other_cores_max']:.2f} |")
    lines += ["", f"Headline (pipeline as shipped / bare, target >= {r['targets']['ratio']:.1f}):", ""]
    for variant, t in r["throughput"].items():
        ok = t["ratio"] is not None and t["ratio"] >= r["targets"]["ratio"]
        lines.append(f"- {variant}: ratio **{_g(t['ratio'], 3)}** whole, {_g(t['ratio_steady'], 3)} steady "
                     f"({'meets' if ok else 'misses'} the target); without diagnostics {_g(t['ratio_nodiag'], 3)} / "
                     f"{_g(t['ratio_nodiag_steady'], 3)}.")
    lines += ["", diagnostics_lines(r)]
    det = [f"{v} {mode}: {'identical' if ms['deterministic'] else 'DIFFERENT'}"
           for v, t in r["throughput"].items() for mode, ms in t["modes"].items() if ms["deterministic"] is not None]
    if det:
        lines += ["", "Final weights across repetitions (same seed): " + "; ".join(det) + "."]

    st = r["stages"]
    lines += ["", "## Stage times (`dvc repro`, 1 epoch)", ""]
    if st:
        lines += [f"A fresh copy of the project (tracked files, new git + DVC repo, its own SQLite store), "
                  f"params.yaml with `train.epochs: 1`, variants {', '.join(st['variants'])}, seeds {st['seeds']}; "
                  f"MNIST from `{st['mirror'] or 'the mirrors in params.yaml'}`. A stage's time runs from its "
                  "`Running stage` line to the next one, so it includes caching its outputs and the lock-file update.",
                  "", "| stage | wall s | peak RSS of the stage's Python process MiB |", "| --- | --- | --- |",
                  f"| (dvc start-up) | {st['dvc_startup_seconds']:.1f} | |"]
        for name, sec in st["stage_seconds"].items():
            rss = st["peak_rss_bytes_by_stage"].get(name)
            lines.append(f"| {name} | {sec:.1f} | {'' if rss is None else f'{rss / 2 ** 20:,.0f}'} |")
        lines += [f"| **total** | **{st['repro_seconds']:.1f}** | |", "",
                  f"No-op `dvc repro` (nothing changed): **{_fmt_spread(st['noop_seconds'], 2)} s** "
                  f"(median (min–max) of {st['noop_seconds']['n']}; target < {r['targets']['noop_seconds']:g} s: "
                  f"{'met' if st['noop_seconds']['median'] < r['targets']['noop_seconds'] else 'missed'})."]
    else:
        lines.append("Not measured (`--no-dvc`).")

    mem = r["memory"]
    lines += ["", "## Memory", "",
              f"Peak RSS of the training stage: **{mem['peak_rss_bytes'] / 2 ** 20:,.0f} MiB** "
              f"(target < {mem['target_bytes'] / GIB:g} GiB: {'met' if mem['meets_target'] else 'missed'}).",
              f"- training workers (`train()` with {s['epochs']} epochs, `getrusage` of the process): "
              f"{mem['train_worker_peak_rss_bytes'] / 2 ** 20:,.0f} MiB"]
    if "train_stage_peak_rss_bytes" in mem:
        lines += [f"- `dvc repro` training stages (psutil, sampled every 0.1 s): "
                  f"{mem['train_stage_peak_rss_bytes'] / 2 ** 20:,.0f} MiB",
                  f"- largest process of the whole repro (`getrusage` of the children, exact): "
                  f"{mem['repro_max_process_rss_bytes'] / 2 ** 20:,.0f} MiB"]

    hw = r["hardware"]
    lines += ["", "## Hardware limit", "",
              f"float32 matmul {hw['matmul_n']}x{hw['matmul_n']}, best of {hw['matmul_repeats']}: NumPy "
              f"{hw['numpy_matmul_flops_per_second'] / 1e9:.1f} GFLOP/s, "
              f"TF {hw['tf_matmul_flops_per_second'] / 1e9:.1f} GFLOP/s; "
              f"peak taken as **{hw['peak_flops_per_second'] / 1e9:.1f} GFLOP/s**.",
              "",
              "LeNet FLOPs per image, forward: convolutions 2·k·k·cin·cout·Hout·Wout and dense 2·in·out "
              "exactly (+1 per bias); average pooling k·k per output, batch norm 2, tanh 1, dropout 1, softmax 3 "
              f"per output element (rough). Training ≈ {TRAIN_FLOPS_FACTOR} × forward. "
              "Achieved = steady images/s × training FLOPs per image.", "",
              "| variant | forward FLOPs/image | of which conv+dense | training FLOPs/image | mode "
              "| achieved GFLOP/s | of peak |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for variant, t in r["throughput"].items():
        f = hw["flops"][variant]
        for mode, ms in t["modes"].items():
            lines.append(f"| {variant} | {f['forward_flops_per_image']:,} | {f['matmul_flops_per_image']:,} | "
                         f"{f['train_flops_per_image']:,} | {MODE_LABELS[mode]} | "
                         f"{ms['achieved_flops_per_second'] / 1e9:.2f} | {100 * ms['fraction_of_peak']:.1f}% |")

    lines += epoch_lines(r)

    if r["candidates"]:
        lines += ["", "## Candidates (pipeline, diagnostics on)", "",
                  "Same model and math; speed-up relative to `baseline` (the pipeline as shipped, measured in the "
                  "same interleaved rounds): ratio of medians, and paired (median (min–max) over rounds of candidate "
                  "/ baseline in the same round, so drift between rounds cancels). Kept only when >= 5% faster and "
                  "deterministic (every repetition, same seed, ends with the same weights).", "",
                  "| candidate | variant | images/s whole | images/s steady | speed-up whole / steady "
                  "| paired speed-up steady | vs bare steady | deterministic | same weights as baseline "
                  "| others' CPU, cores (worst run) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, by_variant in r["candidates"].items():
            for variant, c in by_variant.items():
                det = {True: "yes", False: "**no**", None: "n/a (1 run)"}[c["deterministic"]]
                lines.append(f"| {name} | {variant} | {_fmt_spread(c['images_per_second'])} | "
                             f"{_fmt_spread(c['steady_images_per_second'])} | {_g(c['speedup'], 3)} / "
                             f"{_g(c['speedup_steady'], 3)} | {_fmt_spread(c.get('paired_speedup_steady'), 3)} | "
                             f"{_g(c['vs_bare_steady'], 3)} | {det} | "
                             f"{'yes' if c['same_weights_as_baseline'] else 'no'} | {c['other_cores_max']:.2f} |")
    lines.append("")
    return "\n".join(lines)


# --- Main ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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


def make_plan(args: argparse.Namespace) -> Plan:
    params = load_params()
    known = list(params.get("variants") or {})
    cand_variants = list(args.candidate_variants or args.variants)
    for v in [*args.variants, *cand_variants]:
        if v not in known:
            raise UserError(f"--variants: unknown variant '{v}'; known: {', '.join(known)}")
    if args.epochs < 2:
        raise UserError("--epochs must be >= 2: epoch 1 is the warm-up, the steady state is measured after it")
    cands = [Candidate.parse(c) for c in args.candidates]
    if cands and not any(c.name == "baseline" for c in cands):
        cands.insert(0, Candidate())
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        raise UserError("--reps must be >= 1")
    if not set(cand_variants) <= set(args.variants):
        raise UserError("--candidate-variants must be among --variants (their bare runs are the reference)")
    plan = Plan(quick=args.quick, out_dir=args.out_dir, reps=reps, epochs=args.epochs, variants=list(args.variants),
                candidates=cands, candidate_variants=cand_variants, dvc=not args.no_dvc, prepared=args.prepared,
                mirror=args.mirror, keep_tmp=args.keep_tmp, quiet_wait=max(0.0, args.quiet_wait),
                retries=max(0, args.retries))
    if args.quick:
        plan.train_limit, plan.test_limit = 512, 256
    return plan


def bench(plan: Plan) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    account = CpuAccount()
    if account.busy_at_start:
        _say("WARNING: the machine is busy (" + ", ".join(account.busy_at_start) + "); timings will be unreliable")
    base = load_params()
    work = Path(tempfile.mkdtemp(prefix="lenet-bench-"))
    try:
        stages = measure_stages(plan, base, work) if plan.dvc else None
        prepared = plan.prepared
        if prepared is None:
            if stages:
                prepared = Path(stages["prepared"])
            elif plan.quick:
                prepared = _prepare_fixture(work)
            else:
                prepared = paths.PREPARED
        if not (prepared / "x_train.npy").exists():
            raise UserError(f"{prepared}/x_train.npy is missing: run `dvc repro normalize` or pass --prepared")
        _say("hardware: matmul peak and FLOPs per image")
        hw_spec = {"kind": "hardware", "params": str(paths.PARAMS), "variants": plan.variants,
                   "matmul_n": 1024 if plan.quick else 2048, "matmul_repeats": 5 if plan.quick else 10}
        wait_for_quiet(plan.quiet_wait, plan.quiet_threshold)
        hardware = run_worker(hw_spec, work, "hardware")
        runs, cand_runs = measure_throughput(plan, base, prepared, work)
        result = summarize(plan, runs, cand_runs, hardware, stages, account.report(), started)
    finally:
        if plan.keep_tmp:
            _say(f"kept the work directory {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if result["stages"]:
        result["stages"].pop("prepared", None)
        result["stages"].pop("project", None)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    (plan.out_dir / "benchmark.md").write_text(render_markdown(result))
    _say(f"wrote {plan.out_dir / 'benchmark.md'} and benchmark.json")
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        worker_main(argv[1], argv[2])
        return
    args = parse_args(argv)
    if args.render:
        run_main(lambda: render_file(args.render))
        return
    run_main(lambda: bench(make_plan(args)))


def render_file(json_path: Path) -> None:
    try:
        result = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--render: cannot read {json_path}: {e}") from None
    out = json_path.with_suffix(".md")
    out.write_text(render_markdown(result))
    _say(f"wrote {out}")


if __name__ == "__main__":
    main()
