"""The report's diagnostics section, from what each training run measured.

In: the compare stage's runs (``RunData`` with ``diagnostics = {"summary": dict,
"history": DataFrame}`` read from each run's ``diagnostics/`` artifacts) and a figure folder.
Out: ``section(runs, fig_dir)`` returns the Markdown section, the figure file names it
drew, and a few numbers for ``reports/metrics.json``. Runs without diagnostics are skipped.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline import figures

TANH_POINTS = ["conv1_tanh", "conv2_tanh", "conv3_tanh", "fc1_tanh"]


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _by_variant(runs) -> dict[str, list]:
    out: dict[str, list] = {}
    for (variant, _seed), run in sorted(runs.items()):
        if run.diagnostics:
            out.setdefault(variant, []).append(run)
    return out


def _coadaptation_claim(with_dropout: str, without: str, variants: dict, coad: dict) -> str:
    """One line: the difference in co-adaptation, and whether the probe images (paired
    bootstrap, per seed) tell the two apart; without saved activations, only the sign."""
    from pipeline.diagnostics import coadaptation_difference

    head = f"{with_dropout} ({_fmt(coad[with_dropout])}) vs {without} ({_fmt(coad[without])})"
    seeds_a = {r.seed: r for r in variants[with_dropout]}
    seeds_b = {r.seed: r for r in variants[without]}
    diffs = [coadaptation_difference(seeds_a[s].diagnostics["fc1_activations"],
                                     seeds_b[s].diagnostics["fc1_activations"])
             for s in sorted(seeds_a.keys() & seeds_b.keys())
             if "fc1_activations" in seeds_a[s].diagnostics and "fc1_activations" in seeds_b[s].diagnostics]
    if not diffs:
        lower = coad[with_dropout] < coad[without]
        return f"{head}: dropout {'lowers' if lower else 'does not lower'} the measured co-adaptation."
    lower = sum(d["high"] < 0 for d in diffs)
    higher = sum(d["low"] > 0 for d in diffs)
    mean = float(np.mean([d["difference"] for d in diffs]))
    if len(diffs) == 1:
        d = diffs[0]
        spread = f"{d['difference']:+.3f}, 95% bootstrap interval over probe images {d['low']:+.3f} to {d['high']:+.3f}"
    else:
        spread = (f"{mean:+.3f} on average over {len(diffs)} seeds; the 95% bootstrap interval over probe images "
                  f"excludes 0 in {lower + higher} of them")
    if lower == len(diffs):
        verdict = "lower with dropout"
    elif higher == len(diffs):
        verdict = "higher with dropout"
    else:
        verdict = "not distinguishable on this probe"
    return f"{head}: {spread}: {verdict}."


def _coadaptation_lines(variants: dict, first_seed: dict, coad: dict, fig_dir, names: list[str]) -> list[str]:
    lines = [
        "### Co-adaptation (after Srivastava et al. 2014; Cogswell et al. 2016)",
        "",
        "Mean absolute pairwise correlation between the 84 units of the Dense(84) layer (after tanh) on the probe "
        "batch at the end of training. Lower means the units are less co-adapted. A difference counts when a "
        "paired bootstrap over the probe images (the same images resampled for both networks) puts its 95% "
        "interval on one side of 0; that interval covers the choice of images, not training noise.",
        "",
        "| variant | mean abs. correlation, fc1 |",
        "| --- | ---: |",
    ] + [f"| {v} | {_fmt(c)} |" for v, c in coad.items()] + [""]
    claims = []
    for with_dropout, without in (("dropout", "plain"), ("bn_dropout", "bn_hidden"), ("bn_dropout", "bn_all")):
        if with_dropout in coad and without in coad and not math.isnan(coad[with_dropout] + coad[without]):
            claims.append(_coadaptation_claim(with_dropout, without, variants, coad))
    lines += [f"- {c}" for c in claims] + ([""] if claims else [])
    curves = {}
    for v, r in first_seed.items():
        hist = r.diagnostics["summary"].get("coadaptation_history") or []
        if hist:
            curves[v] = pd.DataFrame(hist, columns=["step", "value"])
    if curves:
        figures.series_over_steps(curves, fig_dir / "coadaptation.png", "mean abs. correlation (fc1)",
                                  "Co-adaptation of the Dense(84) units during training")
        names.append("coadaptation.png")
        lines += ["![co-adaptation](figures/coadaptation.png)", ""]
    return lines


def section(runs, fig_dir) -> tuple[str, list[str], dict]:
    variants = _by_variant(runs)
    if not variants:
        return "", [], {}
    names: list[str] = []
    lines = [
        "## Diagnostics: measurements, not causes",
        "",
        "What the training runs measured inside the networks, on a fixed probe batch of held-out test images. "
        "These describe the networks; they do not explain the accuracy differences above. Santurkar et al. (2018) "
        "showed that batch norm's benefit is not explained by a reduction of internal covariate shift.",
        "",
    ]
    metrics: dict = {"diagnostics": {}}
    first_seed = {v: rs[0] for v, rs in variants.items()}
    drift_runs = {v: [r for r in rs if "drift" in r.diagnostics["summary"]] for v, rs in variants.items()}
    drift_runs = {v: rs for v, rs in drift_runs.items() if rs}
    if drift_runs:
        every = drift_runs[next(iter(drift_runs))][0].diagnostics["summary"].get("every_n_batches", "?")
        lines += [
            "### Internal covariate shift (after Ioffe & Szegedy 2015, Fig. 1b–c)",
            "",
            f"The 15th, 50th and 85th percentiles of the input to each tanh, recorded every {every} optimizer steps. "
            "Drift is the mean absolute change between consecutive checkpoints: of the mean (in units of the "
            "earlier checkpoint's std) and of the log-std. Lower means the layer's input distribution moved less.",
            "",
        ]
        histories = {v: r.diagnostics["history"] for v, r in first_seed.items()
                     if r.diagnostics.get("history") is not None}
        if histories:
            figures.covariate_shift_grid(histories, TANH_POINTS, fig_dir / "covariate_shift.png")
            names.append("covariate_shift.png")
            lines += ["![covariate shift](figures/covariate_shift.png)", ""]
        lines += ["| variant | " + " | ".join(f"{p}: Δmean/std, Δlog-std" for p in TANH_POINTS) + " |",
                  "| --- |" + " ---: |" * len(TANH_POINTS)]
        for v, rs in drift_runs.items():
            cells = []
            for p in TANH_POINTS:
                d_mean = _mean([r.diagnostics["summary"]["drift"].get(p, {}).get("mean_abs_delta_mean_std")
                                for r in rs])
                d_std = _mean([r.diagnostics["summary"]["drift"].get(p, {}).get("mean_abs_delta_log_std")
                               for r in rs])
                cells.append(f"{_fmt(d_mean)}, {_fmt(d_std)}")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")

    coad = {v: _mean([r.diagnostics["summary"].get("coadaptation_fc1") for r in rs]) for v, rs in variants.items()}
    coad = {v: c for v, c in coad.items() if not math.isnan(c)}
    if coad:
        lines += _coadaptation_lines(variants, first_seed, coad, fig_dir, names)
        metrics["diagnostics"]["coadaptation_fc1"] = {v: round(c, 6) for v, c in coad.items()}

    measured = {v: [r for r in rs if "variance_shift" in r.diagnostics["summary"]] for v, rs in variants.items()}
    shift = {v: {layer: _mean([r.diagnostics["summary"]["variance_shift"].get(layer) for r in rs])
                 for layer in rs[0].diagnostics["summary"]["variance_shift"]}
             for v, rs in measured.items() if rs and rs[0].diagnostics["summary"]["variance_shift"]}
    if any(measured.values()):
        lines += [
            "### Variance shift (after Li, Chen, Hu & Yang, CVPR 2019)",
            "",
            "For every batch-norm layer: the variance of its input at inference (dropout off) against the moving "
            "variance it learned in training, as max(ratio, 1/ratio) averaged over channels. 1 means no shift.",
            "",
        ]
    if shift:
        layers = []
        for s in shift.values():
            layers += [layer for layer in s if layer not in layers]
        lines += ["| BN layer | " + " | ".join(shift) + " |", "| --- |" + " ---: |" * len(shift)]
        for layer in layers:
            lines.append(f"| {layer} | " + " | ".join(_fmt(shift[v].get(layer, float("nan"))) for v in shift) + " |")
        lines.append("")
        figures.grouped_bars({layer: {v: shift[v].get(layer, float("nan")) for v in shift} for layer in layers},
                             fig_dir / "variance_shift.png", "max(r, 1/r), mean over channels",
                             "Variance shift per batch-norm layer", hline=1.0)
        names.append("variance_shift.png")
        lines += ["![variance shift](figures/variance_shift.png)", ""]
        metrics["diagnostics"]["variance_shift_mean"] = {v: round(_mean(list(s.values())), 6) for v, s in shift.items()}
        if "bn_dropout" in shift and "bn_hidden" in shift:
            common = [layer for layer in shift["bn_dropout"] if layer in shift["bn_hidden"]]
            larger = [layer for layer in common if shift["bn_dropout"][layer] > shift["bn_hidden"][layer]]
            if common and len(larger) == len(common):
                call = "support it: the shift is larger with dropout before batch norm in every layer both have"
            elif len(larger) * 2 > len(common):
                call = f"partly support it: the shift is larger with dropout in {len(larger)} of {len(common)} layers"
            else:
                call = f"do not support it: the shift is larger with dropout in only {len(larger)} of {len(common)} layers"
            pairs = ", ".join(f"{layer}: {shift['bn_dropout'][layer]:.3f} vs {shift['bn_hidden'][layer]:.3f}"
                              for layer in common)
            lines += [f"Li et al. explain `bn_dropout`'s deficit by this shift. Our numbers {call} ({pairs}). "
                      "That the shift is present does not by itself show it causes the lower accuracy.", ""]
    return "\n".join(lines), names, metrics
