"""Markdown helpers every report section formats its tables with.

In: numbers and DataFrames of strings. Out: text (pipe tables via ``DataFrame.to_markdown``).
"""

from __future__ import annotations

import pandas as pd


def or_dash(value, spec: str = ".3f") -> str:
    return "–" if value is None or pd.isna(value) else format(value, spec)


def plus_minus(mean: float, std: float, n_seeds: int, spec: str = ".4f") -> str:
    return format(mean, spec) if n_seeds == 1 else f"{mean:{spec}} ± {std:{spec}}"


def markdown_table(rows: pd.DataFrame, right: set[str] = frozenset()) -> str:
    """``rows`` (strings, already formatted) as a pipe table; columns in ``right`` right-aligned."""
    align = ["right" if column in right else "left" for column in rows.columns]
    return rows.to_markdown(index=False, colalign=align, disable_numparse=True)
