"""The Keras backend a training runs on, chosen by ``train.backend`` in params.yaml.

In: the backend's name (``tensorflow`` or ``jax``), before Keras is imported in this process.
Out: ``activate(name)`` makes Keras load that backend (``KERAS_BACKEND``) and turns on its
deterministic mode; ``seed(seed)`` fixes Python, NumPy and the backend's random state;
``requirements()`` names the packages a logged model needs. TensorFlow is imported only
when it is the backend, so a machine with JAX alone (a GPU box) can train.

Determinism: TensorFlow gets op determinism (``enable_op_determinism``); JAX gets
``--xla_gpu_deterministic_ops=true`` in ``XLA_FLAGS`` (it matters on GPUs; JAX on a CPU is
deterministic already). Same backend, seed and machine give the same numbers.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

from pipeline.core.errors import UserError

BACKENDS = ("tensorflow", "jax")
JAX_DETERMINISM = "--xla_gpu_deterministic_ops=true"


def loaded() -> str | None:
    """The backend Keras already runs on in this process, or None before Keras is imported."""
    if "keras" not in sys.modules:
        return None
    import keras

    return keras.backend.backend()


def activate(name: str, deterministic: bool = True) -> None:
    """Make Keras use ``name``; refuse when Keras already runs on another backend here."""
    current = loaded()
    if current is not None and current != name:
        raise UserError(f"train.backend = {name!r}, but Keras already runs on {current!r} in this process; "
                        "run each backend in its own process (e.g. `python -m pipeline.train.stage`)")
    os.environ["KERAS_BACKEND"] = name
    if name == "jax" and deterministic:
        flags = os.environ.get("XLA_FLAGS", "")
        if JAX_DETERMINISM not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {JAX_DETERMINISM}".strip()


def seed(value: int, deterministic: bool = True) -> None:
    import keras

    keras.utils.set_random_seed(value)  # Python, NumPy and the backend's global seed
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _installed(*dists: str) -> list[str]:
    pins = []
    for dist in dists:
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return pins


def requirements() -> list[str]:
    """Pinned packages a model logged from this process needs to load again."""
    import keras

    if keras.backend.backend() == "jax":
        backend = _installed("jax", "jaxlib")
    else:
        backend = _installed("tensorflow-cpu") or _installed("tensorflow")
    return [*backend, *_installed("keras", "mlflow")]
