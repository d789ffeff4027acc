"""Confirmations that fail at their tuned rate are named in the report, from their records alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from pipeline.compare import tuned
from pipeline.core import labels, paths
from pipeline.core.params import Params


def params_with(tmp_path: Path) -> Params:
    raw = yaml.safe_load(paths.PARAMS.read_text())
    raw["lr_grid"].update({"learning_rates": [0.1, 0.3], "seeds": [0]})
    raw["confirm"] = {"seeds": [10, 11, 12]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return Params.load(path)


def record(results: Path, variant: str, seed: int, accuracy: float, **extra) -> None:
    folder = paths.result_dir(variant, seed, labels.TUNED, results)
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps({"variant": variant, "seed": seed, "test_accuracy": accuracy,
                                                    "train_seconds": 60.0, **extra}))


def test_collapsed_and_diverged_confirmations_are_named_and_the_rest_are_not(tmp_path):
    params = params_with(tmp_path)
    results = tmp_path / "results"
    record(results, "plain", 10, 0.1010)
    record(results, "plain", 11, 0.9850)
    record(results, "plain", 12, 0.1009)
    record(results, "dropout", 10, 0.0980, diverged_at_step=17)
    record(results, "bn_all", 10, 0.9900)
    rates = {"plain": 0.3, "dropout": 0.3, "bn_all": 0.1, "bn_hidden": None, "bn_dropout": 1.0}
    failed = tuned.failures(params, results, rates)
    assert [(f.variant, f.seed, f.diverged) for f in failed] == [("plain", 10, False), ("plain", 12, False),
                                                                 ("dropout", 10, True)]
    found = tuned.Tuned(rates, {}, pd.DataFrame(), pd.DataFrame(), [], None, [10, 11, 12], tuned.budget(params, results), failed)
    line = tuned.failure_line(found, params)
    assert line.startswith("**Failed at the tuned rate:** `plain` at 0.3, 2 of 3 seeds (seed 10: collapsed, test "
                           "accuracy 0.1010; seed 12: collapsed, test accuracy 0.1009); `dropout` at 0.3, 1 of 3 "
                           "seeds (seed 10: diverged, test accuracy 0.0980).")
    assert "The grid chose that rate on seed 0" in line
    assert tuned.metrics(found)["tuned"]["failed"][2] == {"variant": "dropout", "seed": 10, "learning_rate": 0.3,
                                                          "test_accuracy": 0.098, "diverged": True}
    assert [(p.name, p.trainings) for p in found.budget] == [("study", 0), ("grid", 0), ("confirmation", 5)]
    healthy = tuned.Tuned(rates, {}, pd.DataFrame(), pd.DataFrame(), [], None, [10, 11, 12], (), [])
    assert tuned.failure_line(healthy, params) == ""
