"""What ``mlflow ui`` shows of the study, seen by headless Chromium: the runs table, a run's
metrics, a model's page. The browser test (tests/test_ui.py) checks these pages; run as

    python -m tools.ui_screenshots http://127.0.0.1:5000 [--experiment NAME] [--out reports/ui]

against a running ``mlflow ui``/``mlflow server`` it saves ``runs.png``, ``run_metrics.png`` and
``model.png`` into ``--out``. Needs Playwright for Python (``pip install playwright``; its own
browser download is not used) and Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.core import metric_names, store, ui_view  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOAD_TIMEOUT_MS = 60_000
ML = "workflowType=machine_learning"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(width: int = 1600, height: int = 1000):
    """One page of a headless Chromium (Debian's, not Playwright's download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def runs_url(base: str, experiment_id: str) -> str:
    return ui_view.ui_url(base, experiment_id)


def run_metrics_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{ML}"


def model_url(base: str, experiment_id: str, model_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/models/{model_id}?{ML}"


def open_runs(page, base: str, experiment_id: str) -> None:
    page.goto(runs_url(base, experiment_id))
    page.get_by_role("columnheader", name=metric_names.TEST_ACCURACY).first.wait_for(timeout=LOAD_TIMEOUT_MS)
    page.get_by_text("matching runs").first.wait_for(timeout=LOAD_TIMEOUT_MS)


def open_run_metrics(page, base: str, experiment_id: str, run_id: str) -> None:
    page.goto(run_metrics_url(base, experiment_id, run_id))
    page.get_by_text(metric_names.EPOCH_GROUP, exact=True).first.wait_for(timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(1500)  # the charts draw after their section


def open_model(page, base: str, experiment_id: str, model_id: str) -> None:
    page.goto(model_url(base, experiment_id, model_id))
    page.get_by_text(metric_names.TEST_ACCURACY, exact=True).first.wait_for(timeout=LOAD_TIMEOUT_MS)


def section_titles(page) -> list[str]:
    """The run page's chart sections, top to bottom (each title is followed by its chart count)."""
    lines = [line.strip() for line in page.locator("main").inner_text().splitlines()] if page.locator("main").count() \
        else [line.strip() for line in page.inner_text("body").splitlines()]
    return [lines[i] for i in range(len(lines) - 1)
            if lines[i] and lines[i + 1].startswith("(") and lines[i + 1].endswith(")") and lines[i + 1][1:-1].isdigit()]


def save(base: str, experiment: str, out: Path, uri: str | None = None, page=None) -> list[Path]:
    """Screenshots of the study at ``base`` (read through ``uri``, default the server itself):
    the runs table, the best run's metrics, the best run's model; in ``page`` if given."""
    import mlflow

    client = mlflow.MlflowClient(uri or base)  # the server answers the tracking API too
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} at {store.redact(uri or base)}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.variant != ''",
                              order_by=[f"metrics.`{metric_names.TEST_ACCURACY}` DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no training run in experiment '{experiment}'")
    best = runs[0]
    model_id = best.outputs.model_outputs[0].model_id
    out.mkdir(parents=True, exist_ok=True)
    if page is None:
        with browser_page() as page:
            return save(base, experiment, out, uri, page)
    shots = []
    open_runs(page, base, exp.experiment_id)
    shots.append(out / "runs.png")
    page.screenshot(path=str(shots[-1]))
    open_run_metrics(page, base, exp.experiment_id, best.info.run_id)
    shots.append(out / "run_metrics.png")
    page.screenshot(path=str(shots[-1]))
    open_model(page, base, exp.experiment_id, model_id)
    shots.append(out / "model.png")
    page.screenshot(path=str(shots[-1]))
    return shots


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.ui_screenshots", description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="the address of a running mlflow ui/server, e.g. http://127.0.0.1:5000")
    p.add_argument("--experiment", help="default: mlflow.experiment in params.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "ui")
    args = p.parse_args(argv)
    if chromium_path() is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    experiment = args.experiment
    if experiment is None:
        from pipeline.core.params import Params

        experiment = Params.load().mlflow.experiment
    for path in save(args.base, experiment, args.out):
        print(path)


if __name__ == "__main__":
    main()
