"""What a training run keeps besides its metrics and model: files for MLflow, a record for DVC.

In: the trained model, its variant spec, the test data, its test-set probabilities and the
per-epoch history.
Out: ``write_artifacts(out, ...)`` fills a folder that becomes the run's artifacts
(``predictions.csv``, ``confusion_matrix.csv/.png``, ``history.csv``, ``model_summary.txt``,
``bn_weights/``); ``write_record`` writes the DVC record (``record.json``, ``metrics.json``,
``history.csv``, ``convergence.csv``) atomically, file by file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from pipeline.core import figures
from pipeline.core.params import VariantSpec

RECORD_METRICS = ("test_loss", "test_accuracy")
# Also in metrics.json when the record has them: a grid training's validation metrics, a diverged step.
OPTIONAL_RECORD_METRICS = ("validation_loss", "validation_accuracy", "diverged_at_step")


def write_artifacts(out: Path, model, spec: VariantSpec, data: dict, probs: np.ndarray, history: list[dict]) -> None:
    """Everything a run keeps besides metrics and the model, into ``out``."""
    write_predictions(out, spec, data["y_test"], probs)
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    write_model_summary(out / "model_summary.txt", model)
    write_bn_weights(out / "bn_weights", model, spec)


def write_predictions(out: Path, spec: VariantSpec, labels: np.ndarray, probs: np.ndarray) -> None:
    """Per-image predictions (the report's McNemar tests read them) and the confusion matrix."""
    from sklearn.metrics import confusion_matrix

    predicted = probs.argmax(axis=1)
    pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "predicted": predicted,
                  "probability": probs[np.arange(len(labels)), predicted].round(6),
                  "correct": (predicted == labels).astype(int)}).to_csv(out / "predictions.csv", index=False)
    matrix = confusion_matrix(labels, predicted, labels=list(range(10)))
    pd.DataFrame(matrix, index=[f"true_{i}" for i in range(10)], columns=[f"pred_{i}" for i in range(10)]
                 ).to_csv(out / "confusion_matrix.csv")
    confusion_matrix_figure(matrix, out / "confusion_matrix.png", f"{spec.name}: test confusion matrix")


def write_model_summary(path: Path, model) -> None:
    lines: list[str] = []
    # Keras renders with rich, which crops to the console: 80 columns when stdout is not a
    # terminal (DVC, mlflow run). A wider table silently loses its "Param #" column.
    model.summary(print_fn=lambda line, *a, **k: lines.append(line), line_length=80)
    path.write_text("\n".join(lines) + "\n")


def write_bn_weights(bn_dir: Path, model, spec: VariantSpec) -> None:
    """Each BN layer's gamma, beta and moving statistics (``<site>.npz``), a summary and a figure.

    Nothing is written for a model without batch norm.
    """
    from pipeline.train.model import bn_layers, bn_site

    weights = {bn_site(layer.name): {"gamma": layer.gamma.numpy(), "beta": layer.beta.numpy(),
                                     "moving_mean": layer.moving_mean.numpy(),
                                     "moving_variance": layer.moving_variance.numpy()}
               for layer in bn_layers(model)}
    if not weights:
        return
    bn_dir.mkdir(exist_ok=True)
    summary = {}
    for site, arrays in weights.items():
        np.savez(bn_dir / f"{site}.npz", **arrays)
        summary[site] = {name: {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
                                "min": float(v.min()), "max": float(v.max())} for name, v in arrays.items()}
    (bn_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    figures.bn_distributions({spec.name: weights}, bn_dir / "distributions.png")


def write_record(record_dir: Path, record: dict, history: list[dict], convergence: Sequence[dict] = ()) -> None:
    """The DVC record of one training: ``record.json`` (run id and results), ``metrics.json``
    (what ``dvc metrics`` compares), ``history.csv`` and ``convergence.csv`` (``dvc plots``; the
    latter a header only when convergence was off). Each file appears whole or not at all."""
    record_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[Path], object]] = {
        "history.csv": lambda p: pd.DataFrame(history).to_csv(p, index=False),
        "convergence.csv": lambda p: pd.DataFrame(list(convergence), columns=["step", "test_accuracy"]).to_csv(
            p, index=False),
        "metrics.json": lambda p: p.write_text(json.dumps(
            {k: record[k] for k in (*RECORD_METRICS, *OPTIONAL_RECORD_METRICS) if k in record}, indent=2) + "\n"),
        "record.json": lambda p: p.write_text(json.dumps(record, indent=2) + "\n"),
    }
    for name, write in writers.items():
        tmp = record_dir / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, record_dir / name)


def confusion_matrix_figure(cm: np.ndarray, path: Path, title: str) -> None:
    fig, ax = figures.pyplot().subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(10), yticks=range(10))
    figures.save(fig, path)
