"""The numbers and figures of the report's diagnostics section, from what each training run measured.

In: the compare stage's runs (``RunData`` with ``diagnostics = {"summary": dict, "history":
DataFrame, "fc1_activations": array}`` read from each run's ``diagnostics/`` artifacts), the
variant specs from ``params.yaml`` and a figure folder.
Out: ``section(runs, specs, fig_dir)`` draws the section's figures and returns a
``DiagnosticsSection`` (tables, claims, figure names, numbers for ``reports/metrics.json``),
or None when no run measured anything; ``pipeline.compare.report`` renders it. Which variants are
compared comes from the specs (see ``dropout_counterparts``), not from variant names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.compare import figures, recalibration
from pipeline.compare.tables import markdown_table, or_dash
from pipeline.core.figures import palette
from pipeline.core.params import VariantSpec
from pipeline.measures.coadaptation import coadaptation_difference
from pipeline.measures.covariate_shift import TYPICAL_UNIT, drift_summary, history_records, settled_step

TANH_POINTS = ["conv1_tanh", "conv2_tanh", "conv3_tanh", "fc1_tanh"]
DRIFT_KEYS = ("Δmean/std", "Δlog-std")
UNIT_TITLE = ("Input to fc1's tanh on the probe batch (first seed, inference mode): top, all 84 units pooled; bottom, "
              "unit 0 alone, as Ioffe & Szegedy's Fig. 1(b, c) follows one unit. Median, band = 15th–85th percentile")


@dataclass
class CoadaptationClaim:
    """Co-adaptation of a variant with dropout against its counterpart without."""
    with_dropout: str
    without: str
    value_with: float
    value_without: float
    differences: list[dict] = field(default_factory=list)  # per seed: difference, low, high (paired bootstrap)

    @property
    def lower_everywhere(self) -> bool:
        return bool(self.differences) and all(d["high"] < 0 for d in self.differences)

    @property
    def higher_everywhere(self) -> bool:
        return bool(self.differences) and all(d["low"] > 0 for d in self.differences)

    @property
    def seeds_excluding_zero(self) -> int:
        return sum(d["high"] < 0 or d["low"] > 0 for d in self.differences)

    @property
    def mean_difference(self) -> float:
        return float(np.mean([d["difference"] for d in self.differences]))


@dataclass
class VarianceShiftClaim:
    """Li et al.'s explanation, checked layer by layer: is the shift larger with dropout before BN?"""
    with_dropout: str
    without: str
    layers: dict[str, tuple[float, float]]  # BN layer both have -> (shift with dropout, without)

    @property
    def larger(self) -> int:
        return sum(with_dropout > without for with_dropout, without in self.layers.values())


@dataclass
class DiagnosticsSection:
    every_n_batches: object = None
    drift: pd.DataFrame | None = None            # variant x "<point>" -> (Δmean/std, Δlog-std)
    coadaptation: dict[str, float] = field(default_factory=dict)
    coadaptation_claims: list[CoadaptationClaim] = field(default_factory=list)
    variance_shift_measured: bool = False
    variance_shift: pd.DataFrame | None = None   # BN layer x variant -> max(r, 1/r)
    variance_shift_claims: list[VarianceShiftClaim] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=lambda: {"diagnostics": {}})
    colours: dict[str, str] = field(default_factory=dict)  # pipeline.core.figures.palette of the study's variants
    settled_step: int = 0                        # drift is measured from this optimizer step on
    figure_seeds: dict[str, int] = field(default_factory=dict)  # the seed each variant's covariate-shift panel shows
    recalibration: list = field(default_factory=list)        # pipeline.compare.recalibration.Recalibration
    recalibration_gaps: list = field(default_factory=list)   # pipeline.compare.recalibration.Gap


def mean_of_measured(values) -> float:
    """The mean of the values that were measured (None and NaN left out); NaN if none were."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


def runs_with_diagnostics(runs) -> dict[str, list]:
    by_variant: dict[str, list] = {}
    for (variant, _seed), run in sorted(runs.items()):
        if run.diagnostics:
            by_variant.setdefault(variant, []).append(run)
    return by_variant


def _bn_sites(spec: VariantSpec) -> set[str]:
    return {site for site, on in (("input", spec.bn_input), ("hidden", spec.bn_hidden)) if on}


def dropout_counterparts(specs: dict[str, VariantSpec]) -> list[tuple[str, str]]:
    """(with dropout, without) pairs: each variant with dropout against every variant without
    dropout that has batch norm exactly when it does, and only where it does (conv biases aside).

    With the committed specs: (dropout, plain), (bn_dropout, bn_hidden), (bn_dropout, bn_all).
    """
    return [(with_dropout.name, without.name)
            for with_dropout in specs.values() if with_dropout.has_dropout
            for without in specs.values()
            if not without.has_dropout and without.has_bn == with_dropout.has_bn
            and _bn_sites(without) <= _bn_sites(with_dropout)]


# --- internal covariate shift ------------------------------------------------------------


def _drift_table(drift_runs: dict[str, list], from_step: int) -> pd.DataFrame:
    """Per variant and tanh input: the drift of the records from ``from_step`` on (mean over seeds)."""
    rows = {}
    for variant, runs in drift_runs.items():
        drifts = [drift_summary(history_records(run.diagnostics["history"], from_step)) for run in runs]
        rows[variant] = {point: tuple(mean_of_measured([d.get(point, {}).get(key) for d in drifts])
                                      for key in ("mean_abs_delta_mean_std", "mean_abs_delta_log_std"))
                         for point in TANH_POINTS}
    return pd.DataFrame.from_dict(rows, orient="index")


def _covariate_shift(section: DiagnosticsSection, by_variant: dict[str, list], fig_dir) -> None:
    drift_runs = {v: [r for r in runs if r.diagnostics.get("history") is not None] for v, runs in by_variant.items()}
    drift_runs = {v: runs for v, runs in drift_runs.items() if runs}
    if not drift_runs:
        return
    section.every_n_batches = next(iter(drift_runs.values()))[0].diagnostics["summary"].get("every_n_batches", "?")
    section.settled_step = settled_step()
    histories = {v: runs[0].diagnostics["history"] for v, runs in drift_runs.items()}
    section.figure_seeds = {v: runs[0].seed for v, runs in drift_runs.items()}
    figures.covariate_shift_grid(histories, TANH_POINTS, fig_dir / "covariate_shift.png", section.colours,
                                 section.settled_step)
    section.figures.append("covariate_shift.png")
    unit = f"{TYPICAL_UNIT[0]}_unit{TYPICAL_UNIT[1]}"
    if all(f"{unit}.p50" in h for h in histories.values()):
        figures.covariate_shift_grid(histories, [TYPICAL_UNIT[0], unit], fig_dir / "covariate_shift_unit.png",
                                     section.colours, section.settled_step, title=UNIT_TITLE)
        section.figures.append("covariate_shift_unit.png")
    section.drift = _drift_table(drift_runs, section.settled_step)


# --- co-adaptation ---------------------------------------------------------------------------


def _coadaptation_claim(with_dropout: str, without: str, by_variant: dict[str, list],
                        coadaptation: dict[str, float]) -> CoadaptationClaim:
    """The paired bootstrap over the probe images, per seed both variants have activations for."""
    runs_with = {r.seed: r.diagnostics for r in by_variant[with_dropout]}
    runs_without = {r.seed: r.diagnostics for r in by_variant[without]}
    differences = [coadaptation_difference(runs_with[s]["fc1_activations"], runs_without[s]["fc1_activations"])
                   for s in sorted(runs_with.keys() & runs_without.keys())
                   if "fc1_activations" in runs_with[s] and "fc1_activations" in runs_without[s]]
    return CoadaptationClaim(with_dropout, without, coadaptation[with_dropout], coadaptation[without], differences)


def _coadaptation(section: DiagnosticsSection, by_variant: dict[str, list], specs, fig_dir) -> None:
    measured = {v: mean_of_measured([r.diagnostics["summary"].get("coadaptation_fc1") for r in runs])
                for v, runs in by_variant.items()}
    section.coadaptation = {v: c for v, c in measured.items() if not math.isnan(c)}
    if not section.coadaptation:
        return
    section.metrics["diagnostics"]["coadaptation_fc1"] = {v: round(c, 6) for v, c in section.coadaptation.items()}
    section.coadaptation_claims = [_coadaptation_claim(a, b, by_variant, section.coadaptation)
                                   for a, b in dropout_counterparts(specs)
                                   if a in section.coadaptation and b in section.coadaptation]
    curves = {v: pd.DataFrame(history, columns=["step", "value"]) for v, runs in by_variant.items()
              if (history := runs[0].diagnostics["summary"].get("coadaptation_history"))}
    if curves:
        figures.series_over_steps(curves, fig_dir / "coadaptation.png", "mean abs. correlation (fc1)",
                                  "Co-adaptation of the Dense(84) units during training (first seed)", section.colours)
        section.figures.append("coadaptation.png")


# --- variance shift --------------------------------------------------------------------------


def _variance_shift_table(by_variant: dict[str, list]) -> pd.DataFrame | None:
    """BN layer x variant: the mean over seeds of max(r, 1/r); layers in the order first measured."""
    measured = {v: [r.diagnostics["summary"]["variance_shift"] for r in runs
                    if "variance_shift" in r.diagnostics["summary"]] for v, runs in by_variant.items()}
    shift = {v: {layer: mean_of_measured([m.get(layer) for m in per_seed]) for layer in per_seed[0]}
             for v, per_seed in measured.items() if per_seed and per_seed[0]}
    if not shift:
        return None
    layers = list(dict.fromkeys(layer for per_layer in shift.values() for layer in per_layer))
    return pd.DataFrame(shift).reindex(layers)


def _variance_shift_claims(shift: pd.DataFrame, specs) -> list[VarianceShiftClaim]:
    claims = []
    for with_dropout, without in dropout_counterparts(specs):
        if with_dropout in shift and without in shift:
            both = shift[[with_dropout, without]].dropna()
            claims.append(VarianceShiftClaim(with_dropout, without, {
                layer: (row[with_dropout], row[without]) for layer, row in both.iterrows()}))
    return claims


def _variance_shift(section: DiagnosticsSection, by_variant: dict[str, list], specs, fig_dir) -> None:
    section.variance_shift_measured = any("variance_shift" in r.diagnostics["summary"]
                                          for runs in by_variant.values() for r in runs)
    shift = _variance_shift_table(by_variant)
    if shift is None:
        return
    section.variance_shift = shift
    figures.grouped_bars(shift.T.to_dict(), fig_dir / "variance_shift.png",
                         "max(r, 1/r), mean over channels", "Variance shift per batch-norm layer", hline=1.0,
                         xlabel="batch-norm layer", colours=section.colours)
    section.figures.append("variance_shift.png")
    section.metrics["diagnostics"]["variance_shift_mean"] = {
        v: round(mean_of_measured(shift[v].dropna().tolist()), 6) for v in shift}
    section.variance_shift_claims = _variance_shift_claims(shift, specs)


def section(runs, specs: dict[str, VariantSpec], fig_dir, *, alpha: float = 0.05, margin: float = 0.001
            ) -> DiagnosticsSection | None:
    """Draw the diagnostics figures into ``fig_dir`` and collect what the section shows (``alpha`` and
    ``margin``: compare's level and equivalence margin, for the re-estimation's changes)."""
    by_variant = runs_with_diagnostics(runs)
    if not by_variant:
        return None
    section = DiagnosticsSection(colours=palette(specs))
    _covariate_shift(section, by_variant, fig_dir)
    _coadaptation(section, by_variant, specs, fig_dir)
    _variance_shift(section, by_variant, specs, fig_dir)
    section.recalibration, section.recalibration_gaps = recalibration.section(
        by_variant, dropout_counterparts(specs), alpha=alpha, margin=margin)
    if section.recalibration:
        section.metrics["diagnostics"].update(recalibration.metrics(section.recalibration, section.recalibration_gaps))
    return section


# --- the section's text --------------------------------------------------------------------


def tables(section) -> dict:
    tables = {"drift_table": None, "coadaptation_table": None, "variance_shift_table": None,
              "recalibration_table": recalibration.table(section.recalibration) if section.recalibration else None}
    if section.drift is not None:
        drift = section.drift.apply(lambda column: column.map(lambda pair: ", ".join(map(or_dash, pair))))
        drift.columns = [f"{point}: {', '.join(DRIFT_KEYS)}" for point in drift.columns]
        tables["drift_table"] = markdown_table(drift.rename_axis("variant").reset_index(), right=set(drift.columns))
    if section.coadaptation:
        rows = pd.DataFrame({"variant": list(section.coadaptation),
                             "mean abs. correlation, fc1": [or_dash(c) for c in section.coadaptation.values()]})
        tables["coadaptation_table"] = markdown_table(rows, right={"mean abs. correlation, fc1"})
    if section.variance_shift is not None:
        shift = section.variance_shift.apply(lambda column: column.map(or_dash))
        tables["variance_shift_table"] = markdown_table(shift.rename_axis("BN layer").reset_index(),
                                                        right=set(shift.columns))
    return tables


def coadaptation_claim(claim) -> str:
    """One line: the difference in co-adaptation, and whether the probe images tell the two apart;
    without saved activations, only the sign."""
    head = f"{claim.with_dropout} ({or_dash(claim.value_with)}) vs {claim.without} ({or_dash(claim.value_without)})"
    if not claim.differences:
        lowers = "lowers" if claim.value_with < claim.value_without else "does not lower"
        return f"{head}: dropout {lowers} the measured co-adaptation."
    if len(claim.differences) == 1:
        d = claim.differences[0]
        spread = f"{d['difference']:+.3f}, 95% bootstrap interval over probe images {d['low']:+.3f} to {d['high']:+.3f}"
    else:
        spread = (f"{claim.mean_difference:+.3f} on average over {len(claim.differences)} seeds; the 95% bootstrap "
                  f"interval over probe images excludes 0 in {claim.seeds_excluding_zero} of them")
    verdict = ("lower with dropout" if claim.lower_everywhere else "higher with dropout" if claim.higher_everywhere
               else "not distinguishable on this probe")
    return f"{head}: {spread}: {verdict}."


def variance_shift_call(claim) -> str:
    common, larger = len(claim.layers), claim.larger
    if common and larger == common:
        return "support it: the shift is larger with dropout before batch norm in every layer both have"
    if larger * 2 > common:
        return f"partly support it: the shift is larger with dropout in {larger} of {common} layers"
    return f"do not support it: the shift is larger with dropout in only {larger} of {common} layers"
