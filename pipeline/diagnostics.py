"""Numbers behind the study's claims: covariate shift, co-adaptation, variance shift.

In: a Keras model (a ``build_lenet`` model or any Functional model) and a fixed batch
of inputs (e.g. 256 test images, values as the model is fed), or arrays already taken
from such a model. Everything runs the model in inference mode (``training=False``):
dropout off, batch norm on its moving statistics.
Out: plain floats and dicts of floats, ready to log as metrics; ``plot_percentiles``
is the only function that writes (one PNG, matplotlib Agg). Nothing here talks to MLflow.

- Internal covariate shift (Ioffe & Szegedy 2015, Fig. 1b,c): ``CovariateShiftMonitor``
  records, during ``fit``, the 15th/50th/85th percentiles, mean and log-std of the
  input to every tanh and every BN layer (the "probe points"); ``drift_summary`` turns
  the records into how much those distributions moved.
- Co-adaptation (Srivastava et al. 2014; Cogswell et al. 2016, DeCov):
  ``coadaptation`` is the mean absolute correlation between the 84 fc1 units.
- Variance shift (Li, Chen, Hu & Yang, CVPR 2019): ``variance_shift`` compares each BN
  layer's inference-time input variance with the moving variance it learned in training,
  which dropout placed before BN inflates.

Sub-models that read internal layers are built once per model and cached; one pass
yields both the probe points and the co-adaptation layer's output.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
from keras import layers

PROBE_STATS = ("p15", "p50", "p85", "mean", "log_std")

_submodels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def percentiles(x, qs: Sequence[float] = (15, 50, 85)) -> dict[str, float]:
    """Percentiles (linear interpolation) over all elements of ``x``: ``{"p15": ..., ...}``."""
    values = np.percentile(np.asarray(x, dtype=np.float64).ravel(), list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, values)}


# --- Probe points -------------------------------------------------------------


def probe_points(model: keras.Model) -> list[str]:
    """Names of the layers whose *input* is watched: every ``*_tanh`` and every BN layer,
    in network order. In a ``bn_dropout`` LeNet: input_bn, conv1_bn, conv1_tanh, … fc1_tanh."""
    return [
        layer.name
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization) or layer.name.endswith("_tanh")
    ]


def output_key(layer: str) -> str:
    """The key under which ``probe_activations(..., outputs=[layer])`` returns ``layer``'s output."""
    return f"{layer}:output"


def make_probe_model(model: keras.Model, outputs: Sequence[str] = (), inputs: bool = True) -> keras.Model:
    """A model from ``model.input`` to a dict ``{point: input of that layer}`` (with
    ``inputs``), plus ``{output_key(layer): output of that layer}`` for each layer named
    in ``outputs``.

    It shares weights with ``model``, so it always sees the current weights. Call it
    with ``training=False``; ``probe_activations`` does so and caches the probe model.
    """
    tensors = {name: model.get_layer(name).input for name in probe_points(model)} if inputs else {}
    tensors.update({output_key(name): model.get_layer(name).output for name in outputs})
    return keras.Model(model.input, tensors, name=f"{model.name}_probe")


def _cached(model: keras.Model, key: str, build: Callable[[], keras.Model]) -> keras.Model:
    per_model = _submodels.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def probe_activations(model: keras.Model, x, outputs: Sequence[str] = (), inputs: bool = True
                      ) -> dict[str, np.ndarray]:
    """The input of every probe point on ``x`` (unless ``inputs`` is False) and the output of
    each layer in ``outputs`` (under ``output_key(layer)``), in inference mode, as NumPy arrays.

    The call is eager: a compiled call (``predict_on_batch``) saves about 10 ms per record
    but its tracing cost more than that over a whole training run here.
    """
    outputs = tuple(outputs)
    key = f"probe:{inputs}:{','.join(outputs)}"
    probe = _cached(model, key, lambda: make_probe_model(model, outputs, inputs))
    return {k: keras.ops.convert_to_numpy(v) for k, v in probe(x, training=False).items()}


# --- Internal covariate shift ---------------------------------------------------


PERCENTILE_SAMPLE = 1 << 18  # values per probe point the percentiles are taken from
_sample_cache: dict[tuple[int, int], np.ndarray] = {}


def percentile_sample(n: int, k: int = PERCENTILE_SAMPLE) -> np.ndarray | None:
    """Fixed indices of ``k`` of ``n`` values (sorted, seeded, the same on every call), or
    None when ``n <= k`` and every value is used.

    A random subset rather than a stride: a stride over NHWC activations would keep some
    channels and drop others. With 262,144 values a percentile is off by about 0.003
    standard deviations (sampling error), the same subset at every checkpoint.
    """
    if n <= k:
        return None
    key = (n, k)
    if key not in _sample_cache:
        _sample_cache[key] = np.sort(np.random.default_rng(n).choice(n, size=k, replace=False))
    return _sample_cache[key]


def _point_stats(a) -> dict[str, float]:
    a = np.asarray(a).ravel()
    idx = percentile_sample(a.size)
    stats = percentiles(a if idx is None else a[idx])
    mean = a.mean(dtype=np.float64)
    stats["mean"] = float(mean)
    std = np.sqrt(np.mean(np.square(a - mean, dtype=np.float64)))  # all values, float64 accumulation
    stats["log_std"] = float(np.log(max(float(std), 1e-12)))
    return stats


_stats_pool: ThreadPoolExecutor | None = None


def probe_stats(acts: dict[str, np.ndarray]) -> dict[str, float]:
    """``{f"{point}.{stat}": value}`` for stat in PROBE_STATS; log_std is the natural log.

    Mean and std use every value; the percentiles use all of them up to
    ``PERCENTILE_SAMPLE`` values, else that many at fixed random positions
    (``percentile_sample``): a conv layer's input on 256 images has up to 2.2 million
    values, and exact percentiles of all eight probe points would cost about 150 ms a record.
    Points are summarised in parallel threads (NumPy's partition releases the GIL);
    training waits for the record, so the cores are otherwise idle.
    """
    global _stats_pool
    if _stats_pool is None:
        _stats_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="probe-stats")
    record = {}
    for point, stats in zip(acts, _stats_pool.map(_point_stats, acts.values())):
        record.update({f"{point}.{k}": v for k, v in stats.items()})
    return record


class CovariateShiftMonitor(keras.callbacks.Callback):
    """Watches the distribution of every probe point on a fixed batch during ``fit``.

    ``step`` is the number of optimizer updates done when the record is taken, counted
    across epochs (and across repeated ``fit`` calls with the same monitor). A record is
    taken before the first update (step 0) and then every ``every_n_batches`` updates;
    with ``steps_per_execution`` > 1 it is taken at the first step on or past each multiple.
    Each record is ``on_record(step, {f"{point}.{stat}": float}, coadaptation)`` with stat
    in ``PROBE_STATS``; it is also appended to ``self.history`` as ``(step, dict)``.

    With ``coadaptation_layer`` (e.g. ``"fc1_tanh"``) the same probe pass also yields
    that layer's output, and ``coadaptation`` is its ``mean_abs_correlation`` (kept in
    ``self.coadaptation_history`` as ``(step, value)``); otherwise it is None. With
    ``covariate_shift=False`` only that layer is computed and the records are empty dicts.

    The monitor only hooks the *start* of a batch and the end of an epoch: a hook at the
    end of every batch would make Keras convert each step's logs to Python numbers, a
    device sync per step that slows training by several percent.
    """

    def __init__(self, probe_x, every_n_batches: int,
                 on_record: Callable[[int, dict, float | None], None] | None = None,
                 coadaptation_layer: str | None = None, covariate_shift: bool = True):
        super().__init__()
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        if not covariate_shift and not coadaptation_layer:
            raise ValueError("nothing to record: covariate_shift is off and no coadaptation_layer is given")
        self.covariate_shift = covariate_shift
        self.probe_x = probe_x
        self.every = int(every_n_batches)
        self.on_record = on_record
        self.coadaptation_layer = coadaptation_layer
        self.history: list[tuple[int, dict[str, float]]] = []
        self.coadaptation_history: list[tuple[int, float]] = []
        self.last_output: np.ndarray | None = None  # the co-adaptation layer's output at the last record
        self._epoch_base = 0  # updates done before the current epoch
        self._epoch_last = -1  # index of the last batch begun in this epoch
        self.steps_done = 0  # optimizer updates done by the end of the last finished epoch
        self._next = 0  # next step at which to record

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_base = self.steps_done
        self._epoch_last = -1

    def on_train_batch_begin(self, batch, logs=None):
        self._epoch_last = batch
        step = self._epoch_base + batch
        if step >= self._next:
            self.record(step)
            self._next = (step // self.every + 1) * self.every

    def on_epoch_end(self, epoch, logs=None):
        steps = (self.params or {}).get("steps")
        if not steps:  # an input of unknown length: the last batch begun, and one execution
            spe = int(getattr(self.model, "steps_per_execution", 1) or 1)
            steps = self._epoch_last + spe if self._epoch_last >= 0 else 0
        self.steps_done = self._epoch_base + int(steps)

    def record(self, step: int) -> dict[str, float]:
        layer = self.coadaptation_layer
        acts = probe_activations(self.model, self.probe_x, outputs=(layer,) if layer else (),
                                 inputs=self.covariate_shift)
        out = acts.pop(output_key(layer)) if layer else None
        stats = probe_stats(acts)
        coad = mean_abs_correlation(out.reshape(len(out), -1)) if layer else None
        self.history.append((step, stats))
        if layer:
            self.coadaptation_history.append((step, coad))
            self.last_output = out
        if self.on_record is not None:
            self.on_record(step, stats, coad)
        return stats


def _series(history, point: str, stat: str) -> np.ndarray:
    return np.array([rec[f"{point}.{stat}"] for _, rec in history], dtype=np.float64)


def _points(history) -> list[str]:
    if not history:
        return []
    return list(dict.fromkeys(key.rsplit(".", 1)[0] for key in history[0][1]))


def drift_summary(history) -> dict[str, dict[str, float]]:
    """How far each probe point's distribution moved over the records of a monitor.

    Per point: ``mean_abs_delta_mean`` and ``mean_abs_delta_log_std`` (mean absolute change
    between consecutive records), ``mean_abs_delta_mean_std`` (the same for the mean, in
    units of the earlier record's std, so points of different scale compare), and
    ``total_delta_mean`` / ``total_delta_log_std`` (last record minus first). NaN with
    fewer than two records.
    """
    summary = {}
    for point in _points(history):
        mean, log_std = _series(history, point, "mean"), _series(history, point, "log_std")
        if len(mean) < 2:
            keys = ("mean_abs_delta_mean", "mean_abs_delta_mean_std", "mean_abs_delta_log_std",
                    "total_delta_mean", "total_delta_log_std")
            summary[point] = dict.fromkeys(keys, float("nan"))
            continue
        d_mean = np.diff(mean)
        summary[point] = {
            "mean_abs_delta_mean": float(np.mean(np.abs(d_mean))),
            "mean_abs_delta_mean_std": float(np.mean(np.abs(d_mean) / np.exp(log_std[:-1]))),
            "mean_abs_delta_log_std": float(np.mean(np.abs(np.diff(log_std)))),
            "total_delta_mean": float(mean[-1] - mean[0]),
            "total_delta_log_std": float(log_std[-1] - log_std[0]),
        }
    return summary


def plot_percentiles(history, path: Path | str, title: str) -> Path:
    """Small multiples, one panel per probe point: p15, p50, p85 vs step (cf. Ioffe &
    Szegedy Fig. 1b,c). Writes one PNG to ``path`` and returns it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = _points(history)
    cols = min(3, max(1, len(points)))
    rows = max(1, -(-len(points) // cols))
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    steps = [step for step, _ in history]
    for ax, point in zip(axes, points):
        for stat, style in (("p85", "--"), ("p50", "-"), ("p15", "--")):
            ax.plot(steps, _series(history, point, stat), style, color="C0", label=stat)
        ax.set_title(f"input to {point}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(points):]:
        ax.set_axis_off()
    if points:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --- Co-adaptation ----------------------------------------------------------------


def mean_abs_correlation(acts) -> float:
    """Mean absolute off-diagonal Pearson correlation between the columns (units) of a
    2-D ``(n_examples, units)`` matrix.

    Units with zero variance (std <= 1e-8, e.g. a saturated or dead unit) have no defined
    correlation and are left out, as if absent. NaN if fewer than two units remain.
    """
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (examples, units) matrix, got shape {a.shape}")
    a = a - a.mean(axis=0)
    std = a.std(axis=0)
    live = std > 1e-8
    k = int(live.sum())
    if k < 2:
        return float("nan")
    z = a[:, live] / std[live]
    corr = (z.T @ z) / len(z)
    off_diagonal = np.abs(corr[~np.eye(k, dtype=bool)])
    return float(np.clip(off_diagonal, 0.0, 1.0).mean())


def coadaptation(model: keras.Model, x, layer: str = "fc1_tanh") -> float:
    """``mean_abs_correlation`` of the output of ``layer`` (default: the 84 fc1 units after
    tanh) on ``x``, in inference mode."""
    acts = probe_activations(model, x, outputs=[layer], inputs=False)[output_key(layer)]
    return mean_abs_correlation(acts.reshape(len(acts), -1))


def coadaptation_difference(a, b, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``mean_abs_correlation(a) - mean_abs_correlation(b)`` for two networks' activations
    on the *same* examples (row i of ``a`` and of ``b`` is the same image), with a paired
    bootstrap interval over examples: each resample draws the same rows from both.

    Returns ``{"difference", "low", "high"}``. The interval reflects which probe images were
    drawn, not training noise (for that, compare seeds).
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if len(a) != len(b):
        raise ValueError(f"paired activations need the same examples: {len(a)} rows vs {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, len(a), size=len(a))
        boots[i] = mean_abs_correlation(a[rows]) - mean_abs_correlation(b[rows])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(boots, [tail, 100 - tail])
    return {"difference": mean_abs_correlation(a) - mean_abs_correlation(b), "low": float(low), "high": float(high)}


# --- Variance shift ----------------------------------------------------------------


def variance_ratios(model: keras.Model, x, batch_size: int = 250) -> dict[str, np.ndarray]:
    """Per BN layer, per channel: ``(Var_inference + eps) / (moving_variance + eps)``.

    ``Var_inference`` is the variance of the layer's input on ``x`` in inference mode
    (dropout off), over every axis but the last (batch and, for conv layers, spatial
    positions); ``eps`` is the layer's epsilon, as BN itself divides by
    ``sqrt(moving_variance + eps)``. So a ratio is the variance of the normalized
    output at inference: 1 when training and inference statistics agree, < 1 when
    dropout before BN inflated the training variance.
    """
    bn = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    # Batch by batch, merging per-channel (n, mean, M2) with Chan et al.'s formula: the
    # activations of 2,000 images at once would cost about 1 GiB of memory.
    merged: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
    for start in range(0, len(x), batch_size):
        acts = probe_activations(model, x[start:start + batch_size])
        for layer in bn:
            a = acts[layer.name].astype(np.float64)
            a = a.reshape(-1, a.shape[-1])
            n_b, mean_b = len(a), a.mean(axis=0)
            m2_b = ((a - mean_b) ** 2).sum(axis=0)
            if layer.name not in merged:
                merged[layer.name] = (n_b, mean_b, m2_b)
                continue
            n_a, mean_a, m2_a = merged[layer.name]
            n = n_a + n_b
            delta = mean_b - mean_a
            merged[layer.name] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n)
    ratios = {}
    for layer in bn:
        n, _, m2 = merged[layer.name]
        moving = keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64)
        ratios[layer.name] = (m2 / n + layer.epsilon) / (moving + layer.epsilon)
    return ratios


def shift_from_ratios(ratios: dict[str, np.ndarray]) -> dict[str, float]:
    """Per BN layer: the mean over channels of ``max(r, 1/r)``."""
    return {name: float(np.maximum(r, 1.0 / r).mean()) for name, r in ratios.items()}


def variance_shift(model: keras.Model, x) -> dict[str, float]:
    """Per BN layer: the mean over channels of ``max(r, 1/r)``, ``r`` from ``variance_ratios``;
    1.0 means no shift, 2.0 means a factor of two either way. For the worst channel or
    the direction of the shift, use ``variance_ratios``."""
    return shift_from_ratios(variance_ratios(model, x))
