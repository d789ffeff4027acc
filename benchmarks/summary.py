"""The benchmark's result: raw worker results summed up into the report's JSON.

In: the ``Plan``, the raw runs (``benchmarks.throughput``), the hardware worker's result,
the stage timing (``benchmarks.stages``, or None with ``--no-dvc``), the CPU account and
the start time.
Out: the ``benchmark.json`` mapping: per variant and mode the spread of images/s (whole
and steady), fit seconds, peak RSS, achieved FLOP/s and fraction of peak, final-weight
digests; ratios to bare; the cost of diagnostics paired by round; candidates' speed-ups;
memory against its target; the machine and the targets.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.machine import git_state, machine_info
from benchmarks.plan import Plan
from benchmarks.spread import ratio, spread

GIB = 1024 ** 3
TARGETS = {"ratio": 1.0, "noop_seconds": 2.0, "train_peak_rss_bytes": 2 * GIB, "diagnostics_added": 0.05}
SETUP_NOTES = {
    "steady_state": "epochs 2..E, each timed by the same epoch-end callback (after the pipeline's "
                    "own callbacks) in both pipeline and bare",
    "whole": "the pipeline's own train_seconds (model.fit over all E epochs, incl. the epoch-1 "
             "warm-up/tracing); bare timed the same way around its model.fit",
}


def summarize_mode(rs: list[dict]) -> dict[str, Any]:
    """The repetitions of one mode (or candidate) of one variant, summed up."""
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


def diagnostics_cost(modes: dict[str, dict]) -> dict[str, Any]:
    """Time diagnostics add to training, as fractions of the time without them.

    From summarized modes (``summarize_mode``; their ``values`` keep the run order).
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


def summarize_variant(by_mode: dict[str, list[dict]], train_flops: float, peak: float) -> dict[str, Any]:
    """One variant's modes, their FLOP/s against the peak and their ratios to bare."""
    modes = {mode: summarize_mode(rs) for mode, rs in by_mode.items()}
    for m in modes.values():
        images_per_second = m["steady_images_per_second"]["median"] or m["images_per_second"]["median"]
        m["achieved_flops_per_second"] = images_per_second * train_flops
        m["fraction_of_peak"] = images_per_second * train_flops / peak
    bare, pipe, nodiag = modes["bare"], modes["pipeline"], modes["pipeline_nodiag"]
    return {
        "modes": modes,
        "ratio": ratio(pipe["images_per_second"], bare["images_per_second"]),
        "ratio_steady": ratio(pipe["steady_images_per_second"], bare["steady_images_per_second"]),
        "ratio_nodiag": ratio(nodiag["images_per_second"], bare["images_per_second"]),
        "ratio_nodiag_steady": ratio(nodiag["steady_images_per_second"], bare["steady_images_per_second"]),
        "diagnostics_added": diagnostics_cost(modes),
    }


def summarize_candidate(rs: list[dict], baseline_rs: list[dict] | None, modes: dict) -> dict[str, Any]:
    """One candidate on one variant against ``baseline`` (else the pipeline mode) and bare."""
    s = summarize_mode(rs)
    ref = summarize_mode(baseline_rs) if baseline_rs else modes["pipeline"]
    s["speedup"] = ratio(s["images_per_second"], ref["images_per_second"])
    s["speedup_steady"] = ratio(s["steady_images_per_second"], ref["steady_images_per_second"])
    if baseline_rs:  # the same round's baseline run: drift between rounds cancels
        pairs = list(zip(rs, baseline_rs))
        s["paired_speedup_steady"] = spread([c["steady_images_per_second"] / b["steady_images_per_second"]
                                             for c, b in pairs])
        s["paired_speedup"] = spread([c["images_per_second"] / b["images_per_second"] for c, b in pairs])
    s["same_weights_as_baseline"] = s["weights_sha256"] == ref["weights_sha256"]
    s["vs_bare_steady"] = ratio(s["steady_images_per_second"], modes["bare"]["steady_images_per_second"])
    s["vs_bare"] = ratio(s["images_per_second"], modes["bare"]["images_per_second"])
    return s


def summarize_candidates(candidate_runs: dict, throughput: dict) -> dict[str, Any]:
    baseline = candidate_runs.get("baseline")
    return {name: {variant: summarize_candidate(rs, baseline[variant] if baseline else None,
                                                throughput[variant]["modes"])
                   for variant, rs in by_variant.items()}
            for name, by_variant in candidate_runs.items()}


def summarize_memory(throughput: dict, stages: dict | None) -> dict[str, Any]:
    """The largest training RSS seen (workers, and the repro's training stages) against the target."""
    memory = {"train_worker_peak_rss_bytes": max(t["modes"]["pipeline"]["peak_rss_bytes"]["max"]
                                                 for t in throughput.values())}
    if stages:
        memory["train_stage_peak_rss_bytes"] = stages["train_stage_peak_rss_bytes_sampled"]
        memory["repro_max_process_rss_bytes"] = stages["max_child_rss_bytes_getrusage"]
    memory["peak_rss_bytes"] = max(v for k, v in memory.items() if k != "repro_max_process_rss_bytes")
    memory["target_bytes"] = TARGETS["train_peak_rss_bytes"]
    memory["meets_target"] = memory["peak_rss_bytes"] < TARGETS["train_peak_rss_bytes"]
    return memory


def setup_of(plan: Plan) -> dict[str, Any]:
    return {"variants": plan.variants, "repetitions": plan.reps, "epochs": plan.epochs, "seed": plan.seed,
            "train_limit": plan.train_limit, "test_limit": plan.test_limit, "quiet_wait": plan.quiet_wait,
            "retries": plan.retries, "quiet_threshold_cores": plan.quiet_threshold, **SETUP_NOTES}


def summarize(plan: Plan, runs: dict, candidate_runs: dict, hardware: dict, stages: dict | None,
              account: dict, started: str) -> dict[str, Any]:
    """The whole ``benchmark.json`` mapping (keys in the order of earlier reports)."""
    throughput = {variant: summarize_variant(by_mode, hardware["flops"][variant]["train_flops_per_image"],
                                             hardware["peak_flops_per_second"])
                  for variant, by_mode in runs.items()}
    return {
        "generated": started, "mode": "quick" if plan.quick else "full",
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        **git_state(),
        "machine": machine_info(),
        "quiet": account,
        "setup": setup_of(plan),
        "throughput": throughput,
        "headline": {v: {"ratio": t["ratio"], "ratio_steady": t["ratio_steady"]} for v, t in throughput.items()},
        "stages": stages,
        "memory": summarize_memory(throughput, stages),
        "hardware": hardware,
        "candidates": summarize_candidates(candidate_runs, throughput) if candidate_runs else {},
        "targets": dict(TARGETS),
    }
