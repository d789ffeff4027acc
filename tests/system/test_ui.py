"""`mlflow ui` as a user meets it, in a real headless Chromium: a tracking server on loopback over
a store made by the real training code on the fixture data (two variants × two seeds, and one
learning-rate grid run). The study's view shows one row per variant, its test accuracy averaged
over the seeds, and leaves the grid run out; a run's charts start with the per-epoch accuracy; a
model's page is named for its variant and carries its test accuracy.

Needs Debian's ``chromium`` and Playwright for Python (the test extra; see tools/ui_screenshots.py).
Under CI as root the test installs ``chromium`` from Debian's packages itself; elsewhere it is
skipped, saying so, when either is missing; in CI a missing one fails it."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import mlflow
import pytest
import yaml

from conftest import VENV_BIN, ci_apt_install, tiny_params
from pipeline.core import metric_names
from pipeline.core import tracking
from tools import ui_screenshots as ui

pytestmark = pytest.mark.slow
EXPERIMENT = "test-study"
VARIANTS = ("plain", "bn_hidden")
SEEDS = (0, 1)


def _ensure_chromium() -> None:
    """Debian's chromium, installed only under CI as root (as the PostgreSQL test does)."""
    if ui.chromium_path() is None:
        ci_apt_install("chromium")


def _require_browser() -> None:
    _ensure_chromium()
    missing = []
    if ui.chromium_path() is None:
        missing.append("chromium (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, prepared_fixture):
    """Two variants × two seeds and one grid run into a fresh store (while the server starts); the
    server's address, the experiment and {variant: {seed: TrainResult}}."""
    _require_browser()
    from pipeline.train.stage import train

    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root}/mlflow.db"
    params_path = root / "params.yaml"
    params = tiny_params(train_limit=300, test_limit=200)
    params["lr_grid"]["validation_images"] = 100
    params_path.write_text(yaml.safe_dump(params))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        experiment_id = tracking.prepare_experiment(EXPERIMENT)  # the store exists before the server
        server = subprocess.Popen([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1"],
                                  stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"),
                                  start_new_session=True)
        try:
            results = {v: {s: train(v, s, params_path=params_path, prepared=prepared_fixture) for s in SEEDS}
                       for v in VARIANTS}
            train("plain", 0, params_path=params_path, prepared=prepared_fixture, grid_rate=0.1)  # part = lr_grid
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("mlflow server did not start: " + (root / "server.log").read_text()[-2000:])
                    time.sleep(0.5)
            yield base, experiment_id, results
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def page(served):
    with ui.browser_page() as page:
        yield page


def _row_texts(page) -> list[str]:
    """Each table row's text; the grid draws a row in parts (pinned columns, the rest), joined here."""
    rows: dict[str, list[str]] = {}
    cells = page.locator("[role=row][row-index]")
    for i in range(cells.count()):
        part = cells.nth(i)
        rows.setdefault(part.get_attribute("row-index"), []).append(part.inner_text())
    return [" ".join(parts).replace("\n", " ") for _, parts in sorted(rows.items(), key=lambda kv: int(kv[0]))]


def test_the_study_view_shows_one_row_per_variant_with_its_mean_test_accuracy(served, page):
    base, experiment_id, results = served
    ui.open_runs(page, base, experiment_id)
    assert "workflowType=machine_learning" in page.url
    assert page.get_by_text("Model training").first.is_visible()
    for header in (metric_names.TEST_ACCURACY, metric_names.TEST_LOSS, "variant", "seed"):
        assert page.get_by_role("columnheader", name=header).count() >= 1, header
    body = page.inner_text("body")
    assert "Group by: variant" in body
    # the study's runs only: the grid run (part = lr_grid) is filtered out
    assert f"{len(VARIANTS) * len(SEEDS)} matching runs" in body
    rows = _row_texts(page)
    assert len(rows) == len(VARIANTS), rows  # groups closed: one row per variant, no run rows
    for variant in VARIANTS:
        row = next(r for r in rows if f"Group: {variant} " in r + " ")
        words = row.split()
        assert words[words.index(variant) + 1] == str(len(SEEDS)), row  # the group's run count
        mean = sum(results[variant][s].metrics["test_accuracy"] for s in SEEDS) / len(SEEDS)
        averages = [float(w) for w, nxt in zip(words, words[1:]) if nxt == "(average)"]
        assert averages and averages[0] == pytest.approx(mean, abs=1e-6), row  # first metric column: test accuracy
    # the other variant's runs are not shown as rows of their own
    assert not [r for r in rows if "-s0" in r or "-s1" in r], rows


def test_a_run_shows_its_accuracy_before_its_diagnostics(served, page):
    base, experiment_id, results = served
    run = results["bn_hidden"][0]
    ui.open_run_metrics(page, base, experiment_id, run.run_id)
    sections = ui.section_titles(page)
    assert sections[0] == metric_names.EPOCH_GROUP, sections
    assert "diagnostics/coadaptation" in sections and "timing" in sections
    assert sections.index(metric_names.EPOCH_GROUP) < min(i for i, s in enumerate(sections) if s.startswith("diagnostics"))
    text = page.locator("main").inner_text() if page.locator("main").count() else page.inner_text("body")
    first_chart = text.index("test_accuracy")
    assert first_chart < text.index("test_loss") < text.index("train_accuracy")
    assert first_chart < text.index("diagnostics/")


def test_a_model_page_is_named_for_its_variant_with_its_test_accuracy(served, page):
    base, experiment_id, results = served
    run = results["bn_hidden"][0]
    ui.open_model(page, base, experiment_id, run.model_id)
    body = page.inner_text("body")
    assert "lenet5-bn_hidden-s0" in body
    assert "Metrics (4)" in body  # the final epoch's metrics only, no diagnostics
    row = page.get_by_role("row").filter(has_text=metric_names.TEST_ACCURACY).first.inner_text()
    assert "mnist-test" in row and str(run.metrics["test_accuracy"])[:5] in row
    assert "Datasets used" in body and "mnist-train" in body
    assert EXPERIMENT in body  # its registered model version


def test_screenshots_of_the_three_pages(served, page, tmp_path):
    base, _, _ = served
    shots = ui.save(base, EXPERIMENT, tmp_path / "ui", page=page)
    assert [p.name for p in shots] == ["runs.png", "run_metrics.png", "model.png"]
    for p in shots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
