"""Internal covariate shift (Ioffe & Szegedy 2015, Fig. 1b,c) as numbers: the distribution of
a layer's input summarised, and how far it moved during training. Pure NumPy (matplotlib for
the one figure); the Keras side that takes the records is ``pipeline.measures.monitor``.

In: activation arrays (``probe_stats``), or a monitor's history, a list of
``(step, {"<point>.<stat>": float})`` records (``drift_summary``, ``plot_percentiles``).
Out: plain floats and dicts of floats, ready to log as metrics; ``plot_percentiles`` is the only
function that writes (one PNG). Nothing here talks to MLflow or imports Keras.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

PROBE_STATS = ("p15", "p50", "p85", "mean", "log_std")


def percentiles(x, qs: Sequence[float] = (15, 50, 85)) -> dict[str, float]:
    """Percentiles (linear interpolation) over all elements of ``x``: ``{"p15": ..., ...}``."""
    values = np.percentile(np.asarray(x, dtype=np.float64).ravel(), list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, values)}


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


# Ioffe & Szegedy's Fig. 1(b, c) follows one typical sigmoid's input in the last hidden layer: here
# unit 0 of the 84 inputs to fc1's tanh, recorded beside the pooled points as the point "fc1_tanh_unit0".
TYPICAL_UNIT = ("fc1_tanh", 0)


def unit_stats(acts: dict[str, np.ndarray], point: str = TYPICAL_UNIT[0], unit: int = TYPICAL_UNIT[1]
               ) -> dict[str, float]:
    """``{f"{point}_unit{unit}.{stat}": value}``: PROBE_STATS of one unit (last axis) of ``acts[point]``
    over the probe images; empty when ``point`` is not among ``acts``."""
    if point not in acts:
        return {}
    return {f"{point}_unit{unit}.{k}": v for k, v in _point_stats(acts[point][..., unit]).items()}


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


# Keras' BatchNormalization default: each step keeps 0.99 of the moving statistics. They start at mean 0 and
# variance 1, so a probe in inference mode first sees the warm-up of those averages, not the layer's inputs.
BN_MOMENTUM = 0.99


def settled_step(momentum: float = BN_MOMENTUM, remaining: float = 0.01) -> int:
    """The first optimizer step at which the moving averages keep less than ``remaining`` of their initial
    values (459 steps at momentum 0.99): measurements in inference mode from there on see the layers' inputs."""
    return int(np.ceil(np.log(remaining) / np.log(momentum)))


def history_records(frame, from_step: int = 0) -> list[tuple[int, dict[str, float]]]:
    """A monitor's ``history.csv`` (``step`` and ``<point>.<stat>`` columns) as records, from ``from_step`` on."""
    rows = frame[frame["step"] >= from_step]
    return [(int(row["step"]), {k: float(v) for k, v in row.items() if k != "step"}) for _, row in rows.iterrows()]


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
