"""Stage choose@<variant>: each variant's tuned rate from the grid's DVC metrics, validation only; a best
rate at the grid's end flagged; a variant whose every rate diverged gets none, with the reason; a
confirmation refuses a missing, foreign or empty choice in one line. On metrics files as the grid's
stages write them; the whole chain under DVC is ``test_tuned.py``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import VENV_BIN, make_project_copy, subprocess_env, tiny_params
from pipeline.compare import choice
from pipeline.compare.lr_grid import best_markdown, LrGrid, summary
from pipeline.compare.runs import GridRun
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.train.resolve import tuned_params

# validation accuracy by (variant, rate): a peaks inside the grid, b at its top rate
VALIDATION = {("a", 0.01): 0.90, ("a", 0.1): 0.95, ("a", 1): 0.93, ("b", 0.01): 0.80, ("b", 0.1): 0.85, ("b", 1): 0.9}
RATES = [0.01, 0.1, 1]


def write_grid(results: Path, test_accuracy, diverged=()) -> None:
    """metrics.json per (variant, seed, rate), as the lr_grid stage writes them."""
    for (variant, rate), val in VALIDATION.items():
        for seed in (0, 1):
            folder = results / "lr_grid" / f"{variant}-s{seed}-lr{rate}"
            folder.mkdir(parents=True, exist_ok=True)
            metrics = {"test_loss": 0.3, "test_accuracy": test_accuracy(variant, rate),
                       "validation_loss": 1 - val, "validation_accuracy": val + 0.001 * seed}
            if (variant, rate) in diverged:
                metrics.update(validation_accuracy=0.1, diverged_at_step=7)
            (folder / "metrics.json").write_text(json.dumps(metrics))


def test_the_choice_reads_validation_only_and_flags_a_rate_at_the_grid_edge(tmp_path):
    write_grid(tmp_path, lambda v, r: 0.99 if r == 0.01 else 0.5)  # the test set favours the worst rate
    a = choice.choose("a", [0, 1], RATES, 10, 5000, tmp_path)
    b = choice.choose("b", [0, 1], RATES, 10, 5000, tmp_path)
    assert (a["learning_rate"], a["at_edge"]) == (0.1, None)
    assert (b["learning_rate"], b["at_edge"]) == (1.0, "highest")
    assert [c["rate"] for c in a["candidates"]] == [0.01, 0.1, 1.0]
    assert a["candidates"][1]["validation_accuracy_mean"] == pytest.approx(0.9505)
    assert not [k for c in a["candidates"] for k in c if k.startswith("test")]
    # new test metrics, the same choice, byte for byte
    choice.write(a, tmp_path / "a-before.json")
    write_grid(tmp_path, lambda v, r: 0.99 if r == 1 else 0.1)
    choice.write(choice.choose("a", [0, 1], RATES, 10, 5000, tmp_path), tmp_path / "a-after.json")
    assert (tmp_path / "a-before.json").read_bytes() == (tmp_path / "a-after.json").read_bytes()
    # ... and the report says where the grid should grow
    runs = [GridRun(v, s, float(r), "id", val, 1 - val, 0.9, 0.3, False) for (v, r), val in VALIDATION.items()
            for s in (0, 1)]
    table = summary(runs, ["a", "b"])
    grid = LrGrid(table, {"a": 0.1, "b": 1.0}, table.iloc[0:0], [], [], [], [], [], None, "", 5000, len(runs))
    text = best_markdown(grid, table.iloc[0:0].assign(test_accuracy_mean=[], test_accuracy_std=[]), 0.01)
    assert "1 (the grid's highest: extend the grid)" in text and "0.1 (the grid's" not in text


def test_a_diverged_or_collapsed_rate_is_never_chosen_and_none_left_means_no_rate(tmp_path):
    write_grid(tmp_path, lambda v, r: 0.9, diverged={("a", 0.1), ("b", 0.01), ("b", 0.1), ("b", 1)})
    assert choice.choose("a", [0, 1], RATES, 10, 5000, tmp_path)["learning_rate"] == 1.0
    none = choice.choose("b", [0, 1], RATES, 10, 5000, tmp_path)
    assert none["learning_rate"] is None and none["at_edge"] is None
    assert "every rate diverged or collapsed" in none["reason"] and "extend the grid to smaller rates" in none["reason"]
    assert [c["n_diverged"] for c in none["candidates"]] == [2, 2, 2]


def test_missing_grid_metrics_are_one_line_naming_the_stage(tmp_path):
    write_grid(tmp_path, lambda v, r: 0.9)
    (tmp_path / "lr_grid" / "a-s1-lr0.1" / "metrics.json").unlink()
    with pytest.raises(UserError, match=r"no grid metrics .*a-s1-lr0.1/metrics.json; run `dvc repro lr_grid@a-1-0.1`"):
        choice.choose("a", [0, 1], RATES, 10, 5000, tmp_path)


def test_without_a_grid_the_choice_says_so():
    out = choice.choose("plain", [0], [], 10, 5000)
    assert out["learning_rate"] is None and "no learning-rate grid" in out["reason"]


def test_a_confirmation_takes_its_rate_from_the_choice_and_refuses_a_bad_one(tmp_path):
    params = Params.from_dict(tiny_params())
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"variant": "plain", "learning_rate": 0.3}))
    tuned, rate = tuned_params(params, "plain", path, None, {})
    assert rate == 0.3 and tuned.train.learning_rate == 0.3 and tuned.train.epochs == params.train.epochs
    cases = [("missing.json", None, r"not found; run `dvc repro choose@plain`"),
             ("bad.json", "not json", r"not a chosen-rate file"),
             ("other.json", {"variant": "bn_all", "learning_rate": 0.3}, r"holds the choice for 'bn_all', not for 'plain'"),
             ("none.json", {"variant": "plain", "learning_rate": None, "reason": "every rate diverged"},
              r"no rate was chosen for plain \(every rate diverged\)")]
    for name, content, message in cases:
        if content is not None:
            (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(UserError, match=message):
            tuned_params(params, "plain", tmp_path / name, None, {})
    with pytest.raises(UserError, match="--rate-from and --learning-rate both set the learning rate"):
        tuned_params(params, "plain", path, None, {"learning_rate": 0.1})
    with pytest.raises(UserError, match="--rate-from and --grid-rate both set the learning rate"):
        tuned_params(params, "plain", path, 0.1, {})


def test_confirmation_seeds_must_be_fresh():
    raw = tiny_params()
    raw["confirm"] = {"seeds": [0, 10]}
    with pytest.raises(UserError, match=r"^params: 'confirm.seeds' = \[0\] reuses seeds of 'lr_grid.seeds' \(the seeds that chose the rates\); "
                                        r"confirm on fresh seeds"):
        Params.from_dict(raw)
    raw["confirm"] = {"seeds": [10, 11]}
    assert Params.from_dict(raw).confirm.seeds == [10, 11]


def test_the_choose_stage_runs_under_dvc_and_writes_one_file_per_variant(tmp_path):
    params = tiny_params()
    params["variants"] = {"a": params["variants"]["plain"], "b": params["variants"]["bn_all"]}
    params["seeds"] = [0, 1]
    params["lr_grid"]["seeds"] = [0, 1]
    params["lr_grid"]["learning_rates"] = RATES
    project = make_project_copy(tmp_path / "project", params)
    write_grid(project / "results", lambda v, r: 0.9)
    env = subprocess_env(tmp_path)
    proc = subprocess.run([str(VENV_BIN / "dvc"), "repro", "--single-item", "choose@b"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chose b: learning rate 1 (at the grid's highest rate: extend the grid)" in proc.stdout
    written = json.loads((project / "results" / "chosen" / "b.json").read_text())
    assert written == {"variant": "b", "learning_rate": 1.0,
                       "reason": "highest mean validation accuracy over seeds among rates where no seed diverged "
                                 "or collapsed"}
    details = json.loads((project / "results" / "chosen" / "b.candidates.json").read_text())
    assert details["at_edge"] == "highest" and details["epochs"] == params["train"]["epochs"]
    assert len(details["candidates"]) == len(RATES)
    assert not (project / "results" / "chosen" / "a.json").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert list(lock) == ["choose@b"]
