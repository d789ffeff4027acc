"""What runs inside one benchmark subprocess: one training, or the hardware measurement.

In: a JSON spec written by ``benchmarks.launch`` (``kind`` ``train`` with ``mode`` ``bare``
or ``pipeline``, a variant, seed, params.yaml path, prepared-data folder and candidate
fields; or ``kind`` ``hardware`` with the matmul size and the variants).
Out: a JSON result file. A training gives images/s (whole ``fit`` and steady epochs),
every epoch's seconds, test loss/accuracy, a SHA-256 of the final weights and the
process's peak RSS; the hardware measurement gives float32 matmul FLOP/s (NumPy, TF) and
every variant's FLOPs per image.

The pipeline is driven only through ``pipeline.train.stage.train`` and its ``TrainOptions``.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.candidates import Candidate, configure_threads
from benchmarks.flops import flops_summary


class EpochTimer:
    """Wall time of each epoch, begin to end, after every other callback has run."""

    def __init__(self):
        import keras

        timer = self

        class TimerCallback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer.begins.append(time.perf_counter())

            def on_epoch_end(self, epoch, logs=None):
                timer.ends.append(time.perf_counter())

        self.begins: list[float] = []
        self.ends: list[float] = []
        self.callback = TimerCallback()

    def seconds(self) -> list[float]:
        return [end - begin for begin, end in zip(self.begins, self.ends)]


def weights_digest(model) -> str:
    """SHA-256 of all the model's weights: equal digests, equal models."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


def train_pipeline(spec: dict, candidate: Candidate, params, timer: EpochTimer) -> tuple[Any, dict]:
    """The pipeline's own ``train()``, timed by its ``images_per_second`` metric."""
    from pipeline.train.stage import TrainOptions, train

    options = TrainOptions(callbacks=(timer.callback,), compile={"jit_compile": True} if candidate.xla else {},
                           op_determinism=candidate.determinism, inputs="arrays" if candidate.arrays else "batches")
    started = time.perf_counter()
    result = train(spec["variant"], int(spec["seed"]), params=params, prepared=Path(spec["prepared"]),
                   options=options)
    metrics = result.metrics
    return result.model, {
        "train_call_seconds": time.perf_counter() - started, "diagnostics_final_seconds": result.diagnostics_seconds,
        "n_train": round(metrics["images_per_second"] * metrics["train_seconds"] / params.train.epochs),
        "fit_seconds": metrics["train_seconds"], "images_per_second": metrics["images_per_second"],
        "test_loss": metrics["test_loss"], "test_accuracy": metrics["test_accuracy"]}


def train_bare(spec: dict, params, timer: EpochTimer) -> tuple[Any, dict]:
    """The notebook's way: the same model and optimizer, ``model.fit`` on NumPy arrays."""
    import keras

    from pipeline.train.inputs import load_data
    from pipeline.train.model import build_lenet

    settings = params.train
    data = load_data(settings, Path(spec["prepared"]))
    y_train = keras.utils.to_categorical(data["y_train"], 10)
    y_test = keras.utils.to_categorical(data["y_test"], 10)
    keras.utils.set_random_seed(int(spec["seed"]))
    model = build_lenet(params.variant(spec["variant"]))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=settings.learning_rate, momentum=settings.momentum),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(data["x_train"], y_train, batch_size=settings.batch_size, epochs=settings.epochs,
              shuffle=settings.shuffle, verbose=0, callbacks=[timer.callback])
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(data["x_test"], y_test, batch_size=1000, verbose=0)
    return model, {"n_train": len(y_train), "fit_seconds": seconds,
                   "images_per_second": settings.epochs * len(y_train) / seconds,
                   "test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}


def worker_train(spec: dict) -> dict:
    """One training measurement: ``spec['mode']`` is ``bare`` or ``pipeline``."""
    from pipeline.core import backend
    from pipeline.core.params import Params

    candidate = Candidate(**spec.get("candidate", {}))
    params = Params.load(Path(spec["params"])).with_train({"backend": candidate.backend})
    if not candidate.convergence:
        params = params.model_copy(update={"convergence": params.convergence.model_copy(update={"enabled": False})})
    backend.activate(params.train.backend, candidate.determinism)  # before Keras is imported
    if params.train.backend == "tensorflow":
        configure_threads(candidate)
    timer = EpochTimer()
    if spec["mode"] == "pipeline":
        model, out = train_pipeline(spec, candidate, params, timer)
    else:
        model, out = train_bare(spec, params, timer)
    epoch_seconds = timer.seconds()
    steady = epoch_seconds[1:]
    out.update(mode=spec["mode"], variant=params.variant(spec["variant"]).name, candidate=candidate.name,
               batch_size=params.train.batch_size, epochs=params.train.epochs,
               jit_compile=bool(model.jit_compile), steps_per_execution=int(model.steps_per_execution),
               epoch_seconds=epoch_seconds,
               steady_images_per_second=(out["n_train"] * len(steady) / sum(steady)) if steady else None,
               weights_sha256=weights_digest(model),
               peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return out


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def worker_hardware(spec: dict) -> dict:
    """float32 matmul peak (NumPy and TF) and LeNet FLOPs per image of every variant."""
    import numpy as np
    import tensorflow as tf

    from pipeline.train.model import build_lenet
    from pipeline.core.params import Params

    n, repeats = int(spec["matmul_n"]), int(spec["matmul_repeats"])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n ** 3
    np.matmul(a, b)
    numpy_seconds = best_seconds(lambda: np.matmul(a, b), repeats)
    ta, tb = tf.constant(a), tf.constant(b)
    tf.linalg.matmul(ta, tb).numpy()
    tf_seconds = best_seconds(lambda: tf.linalg.matmul(ta, tb).numpy(), repeats)
    params = Params.load(Path(spec["params"]))
    flops = {name: flops_summary(build_lenet(params.variant(name))) for name in spec["variants"]}
    return {"matmul_n": n, "matmul_repeats": repeats,
            "numpy_matmul_flops_per_second": flop / numpy_seconds, "tf_matmul_flops_per_second": flop / tf_seconds,
            "peak_flops_per_second": flop / min(numpy_seconds, tf_seconds), "flops": flops}


def worker_main(spec_path: str, out_path: str) -> None:
    """Read the spec, run the measurement it names, write the result."""
    spec = json.loads(Path(spec_path).read_text())
    result = worker_hardware(spec) if spec["kind"] == "hardware" else worker_train(spec)
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
