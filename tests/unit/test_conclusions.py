"""The verdict logic behind "the notebook's conclusions, judged" and the steps-to-target
numbers behind "convergence speed", on constructed inputs: runs whose per-image predictions
are built to give a known accuracy per seed, and curves built to cross a target at a known step.
The verdicts go through the compare stage's own significance table (paired t across seeds,
Holm's adjustment), as the report's do."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.compare import conclusions as C
from pipeline.compare import convergence as R
from pipeline.compare.significance import compared_pairs, comparisons
from pipeline.core.params import CompareSettings, Conclusion
from pipeline.compare.runs import RunData

N_TEST = 10_000
SEEDS = [0, 1, 2]
# test accuracy per seed: "better" is ~4 pp above "base"; "noise" is within ±0.05 pp of base,
# crossing it, so no test can tell the two apart
ACCURACY = {
    "better": [0.9900, 0.9890, 0.9895],
    "base": [0.9500, 0.9510, 0.9490],
    "noise": [0.9505, 0.9505, 0.9488],
}


def _run(variant: str, seed: int, accuracy: float) -> RunData:
    rng = np.random.default_rng([list(ACCURACY).index(variant), seed])
    correct = np.zeros(N_TEST, dtype=bool)
    correct[rng.choice(N_TEST, round(accuracy * N_TEST), replace=False)] = True
    return RunData(variant, seed, f"{variant}-{seed}", test_loss=1 - accuracy, test_accuracy=float(correct.mean()),
                   train_seconds=1.0, parameters=1, correct=correct, curves=pd.DataFrame())


@pytest.fixture(scope="module")
def runs() -> dict:
    return {(v, s): _run(v, s, acc) for v, accs in ACCURACY.items() for s, acc in zip(SEEDS, accs)}


def _judge(runs: dict, claims: list[tuple[str, list[list[str]]]]) -> list[C.Judgement]:
    settings = CompareSettings(conclusions=[Conclusion(claim=c, holds_if=pairs) for c, pairs in claims])
    significance = comparisons(runs, list(ACCURACY), SEEDS, settings)
    accuracy = {v: [runs[(v, s)].test_accuracy for s in SEEDS] for v in ACCURACY}
    return C.judge(settings.conclusions, significance, accuracy, settings.alpha, settings.confidence)


def test_a_real_difference_holds_a_reversed_one_is_reversed_noise_is_not_distinguishable(runs):
    holds, reversed_, noise, mixed, broken = _judge(runs, [
        ("better beats base", [["better", "base"]]),
        ("base beats better", [["base", "better"]]),
        ("noise beats base", [["noise", "base"]]),
        ("better beats base and noise beats base", [["better", "base"], ["noise", "base"]]),
        ("better beats base and base beats better", [["better", "base"], ["base", "better"]]),
    ])
    assert (holds.verdict, reversed_.verdict, noise.verdict) == (C.HOLDS, C.REVERSED, C.UNCLEAR)
    assert mixed.verdict == C.UNCLEAR and [p.call for p in mixed.pairs] == [C.HOLDS, C.UNCLEAR]
    assert broken.verdict == C.REVERSED
    # the evidence reads in the claimed direction: the same pair, opposite signs, one interval mirrored
    forward, backward = holds.pairs[0], reversed_.pairs[0]
    expected = 100 * (np.mean(ACCURACY["better"]) - np.mean(ACCURACY["base"]))
    assert forward.diff_pp == pytest.approx(expected, abs=0.02) and backward.diff_pp == -forward.diff_pp
    assert forward.low_pp < forward.diff_pp < forward.high_pp and forward.low_pp > 0
    assert (backward.low_pp, backward.high_pp) == pytest.approx((-forward.high_pp, -forward.low_pp))
    assert forward.test == "paired t across seeds" and forward.p_holm < 0.05 and forward.n_seeds == 3
    assert noise.pairs[0].low_pp < 0 < noise.pairs[0].high_pp and noise.pairs[0].p_holm >= 0.05


def test_a_claim_naming_an_untrained_variant_is_not_tested(runs):
    (judgement,) = _judge(runs, [("bn_all beats base", [["bn_all", "base"], ["better", "base"]])])
    assert judgement.verdict == C.UNTESTED and judgement.missing == ("bn_all",) and judgement.pairs == ()
    assert C.metrics([judgement]) == {}


def test_the_claims_pairs_join_the_compared_family_once():
    settings = CompareSettings(pairs=[("a", "b")], control="c",
                               conclusions=[Conclusion(claim="x", holds_if=[("b", "a"), ("a", "d"), ("z", "a")])])
    assert compared_pairs(["a", "b", "c", "d"], settings) == [("a", "b"), ("a", "d"), ("a", "c"), ("b", "c"),
                                                               ("d", "c")]


@pytest.mark.parametrize(("diff", "p", "call"), [(0.5, 0.01, C.HOLDS), (-0.5, 0.01, C.REVERSED),
                                                 (0.5, 0.05, C.UNCLEAR), (0.5, math.nan, C.UNCLEAR),
                                                 (0.0, 0.0, C.UNCLEAR)])
def test_pair_call(diff, p, call):
    assert C.pair_call(diff, p, alpha=0.05) == call


def test_verdicts_as_numbers(runs):
    judgements = _judge(runs, [("h", [["better", "base"]]), ("r", [["base", "better"]]), ("n", [["noise", "base"]])])
    metrics = C.metrics(judgements)
    assert {k: v["verdict"] for k, v in metrics.items()} == {"conclusion_1": 1, "conclusion_2": -1, "conclusion_3": 0}
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
