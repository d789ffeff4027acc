"""Speed-up candidates: changes to how the pipeline trains that leave the model and its math alone.

In: a ``--candidates`` word such as ``baseline`` or ``spe=16+threads=2x1+xla``.
Out: a ``Candidate`` (its fields travel to a worker as JSON), the TensorFlow thread
settings it asks for (``configure_threads``) and the environment it needs (``onednn_env``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import UserError

HELP = "use baseline or parts like spe=16, threads=2x1, xla, nodet, arrays, onednn=0, jax, noconv joined with '+'"


@dataclass
class Candidate:
    """A change to how the pipeline trains that leaves the model and its math alone."""

    name: str = "baseline"
    steps_per_execution: int | None = None
    intra_threads: int | None = None
    inter_threads: int | None = None
    xla: bool = False
    determinism: bool = True
    arrays: bool = False
    onednn: bool | None = None
    backend: str | None = None
    convergence: bool = True

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``baseline``, or ``+``-joined parts: ``spe=N``, ``threads=INTRAxINTER``, ``xla``
        (implies ``nodet``), ``nodet`` (op determinism off), ``arrays`` (NumPy arrays into ``fit``,
        Keras' autotuned input pipeline, instead of ``train.batches``), ``onednn=0|1``, ``jax``
        (Keras on JAX instead of ``train.backend``: different random streams, so different weights),
        ``noconv`` (no held-out accuracy every ``convergence.every_steps``: what measuring it costs)."""
        candidate = cls(name=text)
        if text == "baseline":
            return candidate
        for part in text.split("+"):
            try:
                candidate._apply(part)
            except ValueError:
                raise UserError(f"--candidates: cannot read '{part}' in '{text}'; {HELP}") from None
        return candidate

    def _apply(self, part: str) -> None:
        """Set the fields one ``+``-separated part names; ValueError when it names none."""
        key, _, value = part.partition("=")
        if key == "spe":
            self.steps_per_execution = int(value)
        elif key == "threads":
            intra, _, inter = value.partition("x")
            self.intra_threads = int(intra) if intra else None
            self.inter_threads = int(inter) if inter else None
        elif key == "xla" and not value:
            self.xla, self.determinism = True, False
        elif key == "nodet" and not value:
            self.determinism = False
        elif key == "arrays" and not value:
            self.arrays = True
        elif key == "onednn" and value in ("0", "1"):
            self.onednn = value == "1"
        elif key == "jax" and not value:
            self.backend = "jax"
        elif key == "noconv" and not value:
            self.convergence = False
        else:
            raise ValueError(part)


def configure_threads(candidate: Candidate) -> None:
    """TensorFlow's thread pools as the candidate asks (before TensorFlow runs anything)."""
    if not (candidate.intra_threads or candidate.inter_threads):
        return
    import tensorflow as tf

    if candidate.intra_threads:
        tf.config.threading.set_intra_op_parallelism_threads(candidate.intra_threads)
    if candidate.inter_threads:
        tf.config.threading.set_inter_op_parallelism_threads(candidate.inter_threads)


def onednn_env(candidate: Candidate | None) -> dict[str, str]:
    """The worker's ``TF_ENABLE_ONEDNN_OPTS`` when the candidate sets oneDNN on or off."""
    if candidate is None or candidate.onednn is None:
        return {}
    return {"TF_ENABLE_ONEDNN_OPTS": "1" if candidate.onednn else "0"}
