"""The diagnostics of one training run: ``pipeline.measures.covariate_shift`` wired into ``fit`` and MLflow.

In: the ``diagnostics`` settings, the model being trained and the loaded data (the probe
batch is the last ``probe_size`` test images; variance shift uses the first
``variance_shift_images``; recalibration re-estimates BN on the first ``recalibration_images``
training images and tests on every test image).
Out: ``monitor`` (a callback for ``fit``, or None) logs ``diagnostics/covariate_shift/*`` and
``diagnostics/coadaptation/fc1`` at every checkpoint (the end of training is the last one, so
its latest point is the final value); ``finish(out, title)`` logs the final measurements as metrics and
writes ``history.csv``, ``summary.json``, ``covariate_shift.png`` and
``fc1_activations.npy`` into ``out`` (for a network with batch norm, also
``recalibrated_predictions.csv``: the test images' correctness after BN was re-estimated with
dropout off), and returns the summary. The trained model is never changed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipeline.core import metric_names
from pipeline.core.params import DiagnosticsSettings

COADAPTATION_LAYER = "fc1_tanh"  # the Dense(84) units after tanh


class RunDiagnostics:
    """Only the diagnostics switched on in ``settings`` run; ``monitor`` is None when neither
    covariate shift nor co-adaptation is on."""

    def __init__(self, settings: DiagnosticsSettings, model, data: dict):
        from pipeline.measures.monitor import CovariateShiftMonitor

        self.settings = settings
        self.model = model
        self.data = data
        x_test = data["x_test"]
        self.probe_x = x_test[-min(settings.probe_size, len(x_test)):]
        self.variance_x = x_test[:min(settings.variance_shift_images, len(x_test))]
        self.monitor = None
        if settings.covariate_shift or settings.coadaptation:
            self.monitor = CovariateShiftMonitor(
                self.probe_x, settings.every_n_batches, self._on_record,
                coadaptation_layer=COADAPTATION_LAYER if settings.coadaptation else None,
                covariate_shift=settings.covariate_shift)

    def _on_record(self, step: int, record: dict, coadaptation: float | None) -> None:
        import mlflow

        metrics = {metric_names.covariate_shift(k): v for k, v in record.items()}
        if coadaptation is not None:
            metrics[metric_names.COADAPTATION_FC1] = coadaptation
        mlflow.log_metrics(metrics, step=step)

    def finish(self, out: Path, title: str) -> dict:
        """After training: final measurements as metrics, history/summary/figure as artifacts."""
        import mlflow

        start = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        summary: dict = {"probe_size": len(self.probe_x), "every_n_batches": self.settings.every_n_batches}
        metrics: dict[str, float] = {}
        monitor = self.monitor
        if monitor is not None:
            monitor.finish()  # the end of training is a checkpoint too
        if self.settings.covariate_shift:
            self._finish_covariate_shift(out, title, summary)
        if self.settings.coadaptation:
            # The final value is the series' latest point (logged by the end-of-training record above).
            summary["coadaptation_fc1"] = monitor.coadaptation_history[-1][1]
            summary["coadaptation_history"] = monitor.coadaptation_history
            # The probe images' fc1 activations at the end: the report compares variants on them, image by image.
            np.save(out / "fc1_activations.npy", monitor.last_output.astype(np.float32))
        if self.settings.variance_shift:
            metrics.update(self._finish_variance_shift(summary))
        if self.settings.recalibration:
            metrics.update(self._finish_recalibration(out, summary))
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
        mlflow.log_metrics({**metrics, metric_names.DIAGNOSTICS_FINAL_SECONDS: time.perf_counter() - start})
        return summary

    def _finish_covariate_shift(self, out: Path, title: str, summary: dict) -> None:
        import pandas as pd

        from pipeline.measures.covariate_shift import drift_summary, plot_percentiles, settled_step

        history = self.monitor.history
        # after batch norm's moving averages settled, as the report measures it (pipeline.compare.diagnostics)
        summary["drift"] = drift_summary([(step, r) for step, r in history if step >= settled_step()])
        pd.DataFrame([{"step": s, **r} for s, r in history]).to_csv(out / "history.csv", index=False)
        plot_percentiles(history, out / "covariate_shift.png", title)

    def _finish_variance_shift(self, summary: dict) -> dict[str, float]:
        from pipeline.measures.monitor import variance_ratios
        from pipeline.measures.variance_shift import shift_from_ratios

        ratios = variance_ratios(self.model, self.variance_x)  # one pass, batched
        summary["variance_shift"] = shift_from_ratios(ratios)
        summary["variance_ratio_mean"] = {k: float(np.mean(v)) for k, v in ratios.items()}
        return {metric_names.variance_shift(k): v for k, v in summary["variance_shift"].items()}

    def _finish_recalibration(self, out: Path, summary: dict) -> dict[str, float]:
        """Li et al.'s check: BN re-estimated with dropout off on training images, the copy tested again."""
        import pandas as pd

        from pipeline.measures.monitor import coadaptation
        from pipeline.measures.recalibrate import recalibrated
        from pipeline.train.model import bn_layers

        if not bn_layers(self.model):
            return {}
        images = self.data["x_train"][:self.settings.recalibration_images]
        copy = recalibrated(self.model, images)
        labels = self.data["y_test"]
        probs = copy.predict(self.data["x_test"], batch_size=1000, verbose=0)
        correct = probs.argmax(axis=1) == labels
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0))))
        pd.DataFrame({"correct": correct.astype(int)}).to_csv(out / "recalibrated_predictions.csv", index=False)
        found = {"test_accuracy": float(correct.mean()), "test_loss": loss}
        if self.settings.coadaptation:
            found["coadaptation_fc1"] = coadaptation(copy, self.probe_x, COADAPTATION_LAYER)
        summary["recalibration"] = {"images": len(images), **found}
        names = {"test_accuracy": metric_names.RECALIBRATED_TEST_ACCURACY,
                 "test_loss": metric_names.RECALIBRATED_TEST_LOSS,
                 "coadaptation_fc1": metric_names.RECALIBRATED_COADAPTATION_FC1}
        return {names[k]: v for k, v in found.items()}
