"""The grid's "the ranking changes" is said only as far as the comparisons at the best rates carry it:
a reversed pair counts when its verdict there says the now-higher variant is better."""
from types import SimpleNamespace

import pandas as pd

from pipeline.compare.lr_grid import ranking_line, reversals


def tests_at_best(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"a": a, "b": b, "call": call} for a, b, call in rows])


def grid(study_order, best_order, significance) -> SimpleNamespace:
    return SimpleNamespace(study_order=study_order, best_order=best_order, significance=significance)


def test_the_same_order_holds():
    assert ranking_line(grid(["bn_all", "plain"], ["bn_all", "plain"], tests_at_best())) == "The ranking holds."


def test_a_reversal_its_test_confirms_is_a_changed_ranking():
    tests = tests_at_best(("plain", "dropout", "dropout better"), ("bn_all", "plain", "bn_all better"))
    line = ranking_line(grid(["bn_all", "plain", "dropout"], ["bn_all", "dropout", "plain"], tests))
    assert reversals(["bn_all", "plain", "dropout"], ["bn_all", "dropout", "plain"], tests) == [
        ("dropout", "plain", "dropout better")]
    assert line == ("The means' order changes (dropout over plain (dropout better)): the ranking changes, "
                    "shown by dropout over plain.")


def test_a_reversal_within_the_noise_is_not_a_changed_ranking():
    for call in ("inconclusive", "equivalent", "plain better"):
        line = ranking_line(grid(["plain", "dropout"], ["dropout", "plain"],
                                 tests_at_best(("plain", "dropout", call))))
        assert line == (f"The means' order changes (dropout over plain ({call})), but no reversed pair is told "
                        "apart at the best rates: a changed ranking is not shown."), call


def test_every_reversed_pair_is_named_and_a_missing_comparison_says_so():
    pairs = reversals(["a", "b", "c"], ["c", "b", "a"], tests_at_best(("a", "c", "c better")))
    assert pairs == [("c", "b", "not compared"), ("c", "a", "c better"), ("b", "a", "not compared")]
