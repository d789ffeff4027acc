"""How repeated measurements are summed up.

In: lists of numbers (one per run). Out: ``spread`` (median, min, max, IQR and the raw
values, in run order) and ``ratio`` (of two spreads' medians).
"""

from __future__ import annotations

import statistics
from typing import Any


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max, IQR and the raw values of a list of measurements."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return {"n": 0, "median": None, "min": None, "max": None, "iqr": None, "values": []}
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"n": len(ordered), "median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "iqr": q3 - q1, "values": [float(v) for v in values]}


def ratio(numerator: dict, denominator: dict) -> float | None:
    """Median over median of two spreads; None when either is missing or zero."""
    if not numerator.get("median") or not denominator.get("median"):
        return None
    return numerator["median"] / denominator["median"]
