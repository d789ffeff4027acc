"""The answer at tuned rates under DVC, with real trainings on the fixture: `dvc repro` runs the grid,
the choice and the confirmations on fresh seeds; a grid change that leaves every choice alone
reruns no confirmation, and one that changes a variant's choice reruns exactly that variant's."""

from __future__ import annotations

import json
import subprocess

import mlflow
import pytest
import yaml

from conftest import VENV_BIN, make_project_copy, subprocess_env, tiny_params

pytestmark = pytest.mark.slow


def repro(project, env) -> str:
    proc = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def ran(stdout: str, kind: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines()
            if line.startswith(f"Running stage '{kind}@")}


def chosen(project) -> dict[str, float | None]:
    return {p.stem: json.loads(p.read_text())["learning_rate"] for p in (project / "results" / "chosen").glob("*.json") if not p.name.endswith(".candidates.json")}


def set_rates(project, rates) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["lr_grid"]["learning_rates"] = rates
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_runs_grid_choice_and_confirmation_and_reruns_only_the_confirmations_whose_rate_changed(tmp_path):
    params = tiny_params(train_limit=400, test_limit=200)
    params["variants"] = {v: params["variants"][v] for v in ("plain", "bn_all")}
    params["diagnostics"]["enabled"] = False
    params["lr_grid"] = {"learning_rates": [0.05, 0.2], "seeds": [0], "validation_images": 100, "epochs": None}
    params["confirm"] = {"seeds": [5]}
    project = make_project_copy(tmp_path / "project", params)
    env = subprocess_env(tmp_path)

    first = repro(project, env)
    assert ran(first, "lr_grid") == {f"lr_grid@{v}-0-{r}" for v in ("plain", "bn_all") for r in (0.05, 0.2)}
    assert ran(first, "confirm") == {"confirm@plain-5", "confirm@bn_all-5"}
    assert first.index("Running stage 'choose@plain'") < first.index("Running stage 'confirm@plain-5'")
    rates = chosen(project)
    assert set(rates) == {"plain", "bn_all"} and set(rates.values()) <= {0.05, 0.2}
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    for variant, rate in rates.items():
        record = json.loads((project / "results" / "confirm" / f"{variant}-s5" / "record.json").read_text())
        run = client.get_run(record["run_id"])
        assert run.info.run_name == f"{variant}-s5-tuned" and run.info.status == "FINISHED"
        assert run.data.tags["part"] == "confirm" and float(run.data.tags["learning_rate"]) == rate
        assert float(run.data.params["train.learning_rate"]) == rate == record["learning_rate"]
        assert run.data.params["data.n_train"] == "400"  # the full training set, no validation carved out
    assert len(client.search_model_versions(f"name = '{params['mlflow']['experiment']}'")) == 2  # the study's only
    # the report answers twice: at the notebook's rate and at the tuned rates, side by side
    md = (project / "reports" / "comparison.md").read_text()
    section = md[md.index("## The answer at tuned rates"):md.index("## Figures")]
    assert "with seeds the grid never used (5)" in section and "**Each conclusion at both settings:**" in section
    assert "| at the notebook's setting | at the tuned rates |" in section.replace("  ", " ") or \
        "at the notebook's setting" in section
    for variant, rate in rates.items():
        assert f"| {variant} " in section and f"{rate:g}" in section
    # its budget: every training it rests on, counted from the records
    n_study = 2 * len(params["seeds"])
    epochs = params["train"]["epochs"]
    assert (f"**Budget:** {n_study} trainings of the study (2 variants × seeds "
            f"{', '.join(map(str, params['seeds']))}, rate {params['train']['learning_rate']:g})") in section
    assert f"4 trainings of the grid (2 variants × 2 rates 0.05, 0.2 × seed 0, {epochs} epochs" in section
    assert f"2 trainings of the confirmations (2 variants × seeds 5)" in section
    assert f": {n_study + 6} trainings, " in section
    assert (project / "reports" / "figures" / "convergence_tuned.png").stat().st_size > 1000
    tuned_tests = (project / "reports" / "tuned_significance.csv").read_text().splitlines()
    assert len(tuned_tests) >= 2 and "bn_all" in tuned_tests[1]
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["tuned"]["rates"] == rates and metrics["tuned"]["seeds"] == [5]
    assert set(metrics["tuned"]["test_accuracy"]) == set(rates)

    # a rate that diverges is never chosen: the choices stand and no confirmation reruns
    set_rates(project, [0.05, 0.2, 1000])
    second = repro(project, env)
    assert ran(second, "lr_grid") == {"lr_grid@plain-0-1000", "lr_grid@bn_all-0-1000"}
    assert ran(second, "choose") == {"choose@plain", "choose@bn_all"}
    assert chosen(project) == rates and ran(second, "confirm") == set() and ran(second, "train") == set()

    # plain's rate leaves the grid: plain's choice changes, and its confirmation alone (with any variant
    # that had chosen the same rate) trains again
    gone = rates["plain"]
    set_rates(project, [r for r in (0.05, 0.2) if r != gone] + [1000])
    third = repro(project, env)
    changed = {v for v, r in chosen(project).items() if r != rates[v]}
    assert "plain" in changed and changed == {v for v, r in rates.items() if r == gone}
    assert ran(third, "confirm") == {f"confirm@{v}-5" for v in changed}
    assert ran(third, "lr_grid") == set() and ran(third, "train") == set()
