"""The benchmark's Markdown report, rendered from its JSON.

In: a ``benchmark.json`` mapping (``benchmarks.summary.summarize``; reports written by the
earlier ``pipeline.bench`` render the same). Out: the Markdown text, laid out by the Jinja2
template ``report.md.j2`` next to this module; the rows and sentences that need
arithmetic are made here. ``render_file`` writes ``X.md`` next to ``X.json``.

Tables are plain pipe tables with unpadded cells, so a report renders the same bytes
whatever is installed (``DataFrame.to_markdown`` would pad cells and depend on tabulate).
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from benchmarks.flops import TRAIN_FLOPS_FACTOR
from benchmarks.quiet import QUIET_CORES, say
from benchmarks.spread import ratio
from benchmarks.summary import GIB, TARGETS, diagnostics_cost
from pipeline.core.errors import UserError

TEMPLATE = Path(__file__).with_name("report.md.j2")
MIB = 2 ** 20
MODE_LABELS = {"bare": "bare Keras (notebook way)", "pipeline": "pipeline, diagnostics on (as shipped)",
               "pipeline_nodiag": "pipeline, diagnostics off"}
SLOW_EPOCH = 0.7  # an epoch slower than this fraction of the variant's fastest counts as slow


# --- Formatting -----------------------------------------------------------------------


def fmt_spread(s: dict | None, digits: int = 0, scale: float = 1.0) -> str:
    """``median (min–max)`` of a spread, thousands separated; just the median for one run."""
    if not s or s.get("median") is None:
        return "n/a"
    pattern = f"{{:,.{digits}f}}"
    median = pattern.format(s["median"] * scale)
    if s["n"] < 2:
        return median
    return f"{median} ({pattern.format(s['min'] * scale)}–{pattern.format(s['max'] * scale)})"


def fmt_number(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_percent(s: dict | None) -> str:
    """A spread of fractions as ``median% (min to max)``."""
    if not s or s.get("median") is None:
        return "n/a"
    if s["n"] < 2:
        return f"{100 * s['median']:.1f}%"
    return f"{100 * s['median']:.1f}% ({100 * s['min']:.1f} to {100 * s['max']:.1f})"


def markdown_row(cells: list) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


# --- Rows and sentences ---------------------------------------------------------------


def throughput_rows(r: dict) -> list[list[str]]:
    rows = []
    for variant, t in r["throughput"].items():
        bare = t["modes"]["bare"]
        for mode, ms in t["modes"].items():
            to_bare = "1" if mode == "bare" else (
                f"{fmt_number(ratio(ms['images_per_second'], bare['images_per_second']), 3)} / "
                f"{fmt_number(ratio(ms['steady_images_per_second'], bare['steady_images_per_second']), 3)}")
            rows.append([variant, MODE_LABELS[mode], fmt_spread(ms["images_per_second"]),
                         fmt_spread(ms["steady_images_per_second"]), to_bare,
                         fmt_spread(ms["peak_rss_bytes"], 0, 1 / MIB), f"{ms['other_cores_max']:.2f}"])
    return rows


def diagnostics_paragraph(r: dict) -> str:
    """The diagnostics-cost paragraph: time added, paired by round, against the target."""
    target = r["targets"].get("diagnostics_added", TARGETS["diagnostics_added"])
    parts = []
    for variant, t in r["throughput"].items():
        added = t.get("diagnostics_added") or diagnostics_cost(t["modes"])  # older reports lack it
        fit = added["fit"]
        ok = fit["median"] is not None and fit["median"] < target
        final = t["modes"]["pipeline"].get("diagnostics_final_seconds")
        after = (f"; with the measurements after fit ({fmt_spread(final, 1)} s) {fmt_percent(added['with_final'])}"
                 if final else "")
        parts.append(f"{variant}: **{fmt_percent(fit)}** of fit time ({'meets' if ok else 'misses'} the target), "
                     f"{fmt_percent(added['steady'])} steady{after}")
    return (f"Diagnostics add to training time (on / off − 1, paired by round: median (min–max); target < "
            f"{100 * target:.0f}%): " + "; ".join(parts) + ".")


def determinism(r: dict) -> list[str]:
    """Whether repetitions (same seed) ended with the same weights, per variant and mode."""
    return [f"{v} {mode}: {'identical' if ms['deterministic'] else 'DIFFERENT'}"
            for v, t in r["throughput"].items() for mode, ms in t["modes"].items() if ms["deterministic"] is not None]


def stage_rows(stages: dict | None) -> list[list[str]]:
    if not stages:
        return []
    rows = []
    for name, seconds in stages["stage_seconds"].items():
        rss = stages["peak_rss_bytes_by_stage"].get(name)
        rows.append([name, f"{seconds:.1f}", "" if rss is None else f"{rss / MIB:,.0f}"])
    return rows


def hardware_rows(r: dict) -> list[list[str]]:
    rows = []
    for variant, t in r["throughput"].items():
        f = r["hardware"]["flops"][variant]
        for mode, ms in t["modes"].items():
            rows.append([variant, f"{f['forward_flops_per_image']:,}", f"{f['matmul_flops_per_image']:,}",
                         f"{f['train_flops_per_image']:,}", MODE_LABELS[mode],
                         f"{ms['achieved_flops_per_second'] / 1e9:.2f}", f"{100 * ms['fraction_of_peak']:.1f}%"])
    return rows


def epoch_lines(r: dict) -> list[str]:
    """Every epoch's images/s, per variant and mode/candidate, as table rows: shows whether a
    median hides two speeds (a run's epochs are timed by the same callback in every mode)."""
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
            rows.append(markdown_row([variant, label, shown, f"{slow} of {len(steady)}"]))
    return rows


def candidate_rows(r: dict) -> list[list[str]]:
    rows = []
    for name, by_variant in r["candidates"].items():
        for variant, c in by_variant.items():
            rows.append([name, variant, fmt_spread(c["images_per_second"]), fmt_spread(c["steady_images_per_second"]),
                         f"{fmt_number(c['speedup'], 3)} / {fmt_number(c['speedup_steady'], 3)}",
                         fmt_spread(c.get("paired_speedup_steady"), 3), fmt_number(c["vs_bare_steady"], 3),
                         {True: "yes", False: "**no**", None: "n/a (1 run)"}[c["deterministic"]],
                         "yes" if c["same_weights_as_baseline"] else "no", f"{c['other_cores_max']:.2f}"])
    return rows


def fastest_lines(r: dict) -> list[str]:
    """Per variant, the candidate (``baseline`` included) with the highest median steady images/s."""
    lines = []
    variants = {v for by_variant in r["candidates"].values() for v in by_variant}
    for variant in sorted(variants):
        speeds = {name: by_v[variant]["steady_images_per_second"]["median"]
                  for name, by_v in r["candidates"].items() if variant in by_v}
        best = max(speeds, key=lambda name: speeds[name])
        ranking = ", ".join(f"{name} {speeds[name]:,.0f}" for name in sorted(speeds, key=speeds.get, reverse=True))
        lines.append(f"- {variant}: fastest here is `{best}` (steady images/s: {ranking})")
    return lines


def discarded_runs(r: dict) -> int:
    """Disturbed runs that were re-run (``--retries``), over all modes and candidates."""
    return (sum(ms["discarded_runs"] for t in r["throughput"].values() for ms in t["modes"].values())
            + sum(c["discarded_runs"] for by_v in r["candidates"].values() for c in by_v.values()))


# --- Rendering ------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(fmt=format, spread=fmt_spread, number=fmt_number, row=markdown_row)
    return env


def render_markdown(r: dict) -> str:
    """The whole report of one ``benchmark.json`` mapping."""
    first_variant = r["setup"]["variants"][0]
    needs_discards = r["setup"]["quiet_wait"] or r["setup"]["retries"]
    return _environment().from_string(TEMPLATE.read_text()).render(
        r=r, first_bare=r["throughput"][first_variant]["modes"]["bare"],
        discarded_runs=discarded_runs(r) if needs_discards else 0,
        throughput_rows=throughput_rows(r), diagnostics_paragraph=diagnostics_paragraph(r),
        determinism=determinism(r), stage_rows=stage_rows(r["stages"]), hardware_rows=hardware_rows(r),
        epoch_lines=epoch_lines(r), candidate_rows=candidate_rows(r),
        fastest_lines=fastest_lines(r) if r["candidates"] else [],
        GIB=GIB, MIB=MIB, GIGA=1e9, QUIET_CORES=QUIET_CORES, SLOW_EPOCH=SLOW_EPOCH,
        TRAIN_FLOPS_FACTOR=TRAIN_FLOPS_FACTOR)


def render_file(json_path: Path) -> Path:
    """Rewrite ``X.md`` next to ``X.json`` from it."""
    try:
        result = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--render: cannot read {json_path}: {e}") from None
    out = json_path.with_suffix(".md")
    out.write_text(render_markdown(result))
    say(f"wrote {out}")
    return out
