"""The verdict logic behind "the notebook's conclusions, judged" and the steps-to-target
numbers behind "convergence speed", on constructed inputs: runs whose per-image predictions
are built to give a known accuracy per seed, and curves built to cross a target at a known step.
The verdicts go through the compare stage's own significance table (two-source intervals, TOST,
Holm within the confirmatory family), as the report's do."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.compare import conclusions as C
from pipeline.compare import convergence as R
from pipeline.compare import evidence
from pipeline.compare.runs import RunData
from pipeline.compare.significance import CONFIRMATORY, EXPLORATORY, compared_pairs, comparisons
from pipeline.core.params import CompareSettings, Conclusion, Interaction

N_TEST = 10_000
SEEDS = [0, 1, 2]
# test accuracy per seed: "better" is ~4 pp above "base"; "noise" is base's accuracy on independently
# drawn images (about 950 images differ each seed: no test can tell, nor show they are within 0.1 pp);
# "twin" is base with two of its right images wrong on every seed (0.02 pp: within the margin, and shown to be)
ACCURACY = {
    "better": [0.9900, 0.9890, 0.9895],
    "base": [0.9500, 0.9510, 0.9490],
    "noise": [0.9505, 0.9505, 0.9488],
}


def _run(variant: str, seed: int, accuracy: float) -> RunData:
    rng = np.random.default_rng([list(ACCURACY).index(variant), seed])
    correct = np.zeros(N_TEST, dtype=bool)
    correct[rng.choice(N_TEST, round(accuracy * N_TEST), replace=False)] = True
    return _data(variant, seed, correct)


def _data(variant: str, seed: int, correct: np.ndarray) -> RunData:
    return RunData(variant, seed, f"{variant}-{seed}", test_loss=0.1, test_accuracy=float(correct.mean()),
                   train_seconds=1.0, parameters=1, correct=correct, curves=pd.DataFrame())


@pytest.fixture(scope="module")
def runs() -> dict:
    out = {(v, s): _run(v, s, acc) for v, accs in ACCURACY.items() for s, acc in zip(SEEDS, accs)}
    for s in SEEDS:
        twin = out[("base", s)].correct.copy()
        twin[np.flatnonzero(twin)[:2]] = False
        out[("twin", s)] = _data("twin", s, twin)
    return out


def _judge(runs: dict, claims: list[tuple[str, list[list[str]]]]) -> list[C.Judgement]:
    settings = CompareSettings(conclusions=[Conclusion(claim=c, holds_if=pairs) for c, pairs in claims])
    significance = comparisons(runs, [*ACCURACY, "twin"], SEEDS, settings)
    return C.judge(settings.conclusions, significance, {v for v, _ in runs})


def test_holds_reversed_equivalent_and_inconclusive(runs):
    holds, reversed_, noise, twin, mixed, broken = _judge(runs, [
        ("better beats base", [["better", "base"]]),
        ("base beats better", [["base", "better"]]),
        ("noise beats base", [["noise", "base"]]),
        ("base beats its twin", [["base", "twin"]]),
        ("better beats base and noise beats base", [["better", "base"], ["noise", "base"]]),
        ("better beats base and base beats better", [["better", "base"], ["base", "better"]]),
    ])
    assert (holds.verdict, reversed_.verdict, noise.verdict, twin.verdict) == (
        C.HOLDS, C.REVERSED, C.INCONCLUSIVE, C.EQUIVALENT)
    assert twin.rests_on_equivalence and not noise.rests_on_equivalence
    assert mixed.verdict == C.INCONCLUSIVE and [p.call for p in mixed.pairs] == [C.HOLDS, C.INCONCLUSIVE]
    assert broken.verdict == C.REVERSED
    # the evidence reads in the claimed direction: the same pair, opposite signs, one interval mirrored
    forward, backward = holds.pairs[0], reversed_.pairs[0]
    expected = 100 * (np.mean(ACCURACY["better"]) - np.mean(ACCURACY["base"]))
    assert forward.diff_pp == pytest.approx(expected, abs=0.02) and backward.diff_pp == -forward.diff_pp
    assert forward.low_pp < forward.diff_pp < forward.high_pp and forward.low_pp > 0
    assert (backward.low_pp, backward.high_pp) == pytest.approx((-forward.high_pp, -forward.low_pp))
    assert forward.p_holm < 0.05 and forward.p_sign_flip == 0.25  # three seeds: the exact test's floor
    inconclusive = noise.pairs[0]
    assert inconclusive.low_pp < 0 < inconclusive.high_pp and inconclusive.mde_pp > 0.1
    assert "smallest difference this study could detect" in C.pair_evidence(inconclusive)
    equal = twin.pairs[0]
    assert -0.1 < equal.low_pp and equal.high_pp < 0.1


def test_the_interval_beside_a_verdict_is_at_the_verdicts_level(runs):
    """Holm within the family: an interval excludes 0 exactly when its verdict is a direction."""
    settings = CompareSettings(conclusions=[Conclusion(claim="x", holds_if=[["better", "base"], ["noise", "base"],
                                                                            ["base", "twin"]])])
    table = comparisons(runs, [*ACCURACY, "twin"], SEEDS, settings)
    for row in table.itertuples():
        direction = row.verdict in (evidence.POSITIVE, evidence.NEGATIVE)
        assert direction == (row.low_pp > 0 or row.high_pp < 0), row
        assert direction == (row.p_holm < settings.alpha), row
    assert set(table["family"]) == {CONFIRMATORY}


def test_a_claim_naming_an_untrained_variant_is_not_tested(runs):
    (judgement,) = _judge(runs, [("bn_all beats base", [["bn_all", "base"], ["better", "base"]])])
    assert judgement.verdict == C.UNTESTED and judgement.missing == ("bn_all",) and judgement.pairs == ()
    assert C.metrics([judgement]) == {}


def test_the_claims_pairs_are_the_confirmatory_family_and_the_rest_exploratory():
    settings = CompareSettings(pairs=[("a", "b")], control="c",
                               conclusions=[Conclusion(claim="x", holds_if=[("b", "a"), ("a", "d"), ("z", "a")])])
    assert compared_pairs(["a", "b", "c", "d"], settings) == [("b", "a"), ("a", "d"), ("a", "c"), ("b", "c"),
                                                               ("d", "c")]


def test_an_interaction_is_tested_in_the_confirmatory_family(runs):
    settings = CompareSettings(control="base", conclusions=[Conclusion(claim="x", holds_if=[["better", "base"]])],
                               interactions=[Interaction(question="q?", plus=["better", "base"],
                                                         minus=["noise", "twin"])])
    table = comparisons(runs, [*ACCURACY, "twin"], SEEDS, settings)
    row = table[table["b"] == ""].iloc[0]
    assert row["family"] == CONFIRMATORY and row["comparison"] == "(better − noise) − (twin − base)"
    acc = {v: np.mean([runs[(v, s)].test_accuracy for s in SEEDS]) for v in [*ACCURACY, "twin"]}
    expected = (acc["better"] - acc["noise"]) - (acc["twin"] - acc["base"])
    assert row["diff_pp"] == pytest.approx(100 * expected)
    assert table.loc[table["family"] == EXPLORATORY, "comparison"].tolist() == ["noise vs base", "twin vs base"]
    assert (table["family"] == CONFIRMATORY).sum() == 2


@pytest.mark.parametrize(("verdict", "sign", "call"), [
    (evidence.POSITIVE, 1, C.HOLDS), (evidence.NEGATIVE, 1, C.REVERSED), (evidence.POSITIVE, -1, C.REVERSED),
    (evidence.NEGATIVE, -1, C.HOLDS), (evidence.EQUIVALENT, 1, C.EQUIVALENT), (evidence.INCONCLUSIVE, -1, C.INCONCLUSIVE)])
def test_pair_call(verdict, sign, call):
    assert C.pair_call(verdict, sign) == call


def test_verdicts_as_numbers(runs):
    judgements = _judge(runs, [("h", [["better", "base"]]), ("r", [["base", "better"]]), ("n", [["noise", "base"]]),
                               ("e", [["base", "twin"]])])
    metrics = C.metrics(judgements)
    assert {k: v["verdict"] for k, v in metrics.items()} == {"conclusion_1": 1, "conclusion_2": -1, "conclusion_3": 0,
                                                              "conclusion_4": 0}
    assert [v["equivalent"] for v in metrics.values()] == [0, 0, 0, 1]
    assert metrics["conclusion_2"]["min_diff_pp"] == pytest.approx(-metrics["conclusion_1"]["min_diff_pp"])


# --- steps to a target accuracy ---------------------------------------------------------------


def _curve(steps, accuracy) -> pd.DataFrame:
    return pd.DataFrame({"step": steps, "test_accuracy": accuracy})


def test_steps_to_target_interpolates_between_checkpoints():
    curve = _curve([0, 100, 200, 300], [0.10, 0.90, 0.99, 0.995])
    assert R.steps_to_target(curve, 0.95) == pytest.approx(100 + 100 * 0.05 / 0.09)
    assert R.steps_to_target(curve, 0.99) == 200          # reached exactly at a checkpoint
    assert R.steps_to_target(curve, 0.05) == 0            # already at step 0
    assert math.isnan(R.steps_to_target(curve, 0.999))    # never reached
    # the first crossing counts, even if the curve dips below the target afterwards; order of rows does not matter
    dipping = _curve([300, 0, 200, 100], [0.99, 0.5, 0.94, 0.96])
    assert R.steps_to_target(dipping, 0.95) == pytest.approx(0 + 100 * 0.45 / 0.46)


def test_steps_table_counts_seeds_that_never_reach_a_target():
    curves = {
        ("fast", 0): _curve([0, 100, 200], [0.1, 0.96, 0.98]),
        ("fast", 1): _curve([0, 100, 200], [0.1, 0.98, 0.99]),
        ("slow", 0): _curve([0, 100, 200], [0.1, 0.90, 0.975]),
        ("slow", 1): _curve([0, 100, 200], [0.1, 0.80, 0.96]),
        ("slow", 2): _curve([0, 100, 200], [0.1, 0.80, 0.90]),
    }
    table = R.steps_table(curves, ["fast", "slow", "untrained"], [0.95, 0.97])
    assert table["variant"].tolist() == ["fast", "slow"]
    fast, slow = (row for _, row in table.iterrows())
    to_95 = [100 * (0.95 - 0.1) / 0.86, 100 * (0.95 - 0.1) / 0.88]
    assert fast["steps_95%_mean"] == pytest.approx(np.mean(to_95))
    assert fast["steps_95%_std"] == pytest.approx(np.std(to_95, ddof=1))
    assert R.steps_cell(fast, 0.95) == f"{np.mean(to_95):.0f} ± {np.std(to_95, ddof=1):.0f}"
    assert slow["steps_95%_reached"] == 2 and slow["steps_97%_reached"] == 1
    assert R.steps_cell(slow, 0.97) == f"{100 + 100 * 0.07 / 0.075:.0f} (1 of 3 seeds; 2 not reached)"
    never = R.steps_table({("x", 0): _curve([0, 100], [0.1, 0.5])}, ["x"], [0.95])
    assert R.steps_cell(never.iloc[0], 0.95) == "not reached"
    assert R.metrics(never, [0.95]) == {"convergence": {"x": {"steps_to_95pct": None, "reached_95pct": 0}}}


def test_a_description_too_long_for_mlflow_is_cut_at_a_line_with_a_pointer():
    from pipeline.compare.report import CUT_NOTE, cut

    text = "".join(f"line {i:04d}\n" for i in range(2000))  # 20,000 characters
    assert cut(text, len(text)) == text
    short = cut(text, 8000)
    assert len(short) <= 8000 and short.endswith(CUT_NOTE)
    kept = short[:-len(CUT_NOTE)]
    assert text.startswith(kept + "\n") and all(len(line) == 9 for line in kept.splitlines())  # whole lines only
    assert len(kept.splitlines()) == (8000 - len(CUT_NOTE)) // 10


def _recalibrated(variant: str, seed: int, correct: np.ndarray, after: np.ndarray | None) -> RunData:
    run = _data(variant, seed, correct)
    run.diagnostics = {"summary": {"coadaptation_fc1": 0.3, "recalibration": {"images": 500, "coadaptation_fc1": 0.2}}}
    if after is not None:
        run.diagnostics["recalibrated_correct"] = after
    return run


def test_recalibration_change_and_gaps_are_judged_over_seeds_and_images(runs):
    from pipeline.compare import recalibration as RC

    # "with" (dropout + BN) is base as trained and better after re-estimation; "without" (BN alone) is better
    # as trained and changes by two images after re-estimation on every seed (the control: equivalent).
    by_variant = {"with": [], "without": [], "plain": []}
    for s in SEEDS:
        control = runs[("better", s)].correct.copy()
        control[np.flatnonzero(control)[:2]] = False
        by_variant["with"].append(_recalibrated("with", s, runs[("base", s)].correct, runs[("better", s)].correct))
        by_variant["without"].append(_recalibrated("without", s, runs[("better", s)].correct, control))
        by_variant["plain"].append(_recalibrated("plain", s, runs[("base", s)].correct, None))  # no batch norm
    rows, gaps = RC.section(by_variant, [("with", "without"), ("with", "plain")], alpha=0.05, margin=0.001)
    assert [r.variant for r in rows] == ["with", "without"]
    with_row, control_row = rows
    expected = np.mean(ACCURACY["better"]) - np.mean(ACCURACY["base"])
    assert with_row.change.estimate == pytest.approx(expected, abs=1e-4)
    assert with_row.change.verdict == evidence.POSITIVE and RC.WORDS[with_row.change.verdict] == "recovers accuracy"
    assert control_row.change.verdict == evidence.EQUIVALENT
    assert control_row.change.estimate == pytest.approx(-2 / N_TEST)
    # Holm over the two: the smaller p is judged at alpha / 2.
    assert sorted(r.change.alpha for r in rows) == [0.025, 0.05]
    assert (with_row.images, with_row.coadaptation_before, with_row.coadaptation_after) == (500, pytest.approx(0.3),
                                                                                         pytest.approx(0.2))
    # The gap to the counterpart as trained: "without" better before; after re-estimation "with" matches it.
    (gap,) = [g for g in gaps if g.without == "without"]
    assert gap.before.verdict == evidence.NEGATIVE
    assert gap.after.estimate == 0.0
    assert "closes 100% of the gap" in RC.gap_line(gap)
    numbers = RC.metrics(rows, gaps)
    assert numbers["recalibration"]["with"]["verdict"] == "positive"
    table = RC.table(rows)
    assert "recovers accuracy" in table and "no change (equivalent)" in table and "0.300 → 0.200" in table
