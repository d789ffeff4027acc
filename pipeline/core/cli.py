"""How a stage runs from the command line: one-line errors and clean interrupts.

In: a stage's ``main`` body (a callable).
Out: exit status 0, 2 (a ``UserError``, or a disk that filled up: one line on stderr, no traceback) or 130
(SIGINT or SIGTERM). SIGTERM becomes ``KeyboardInterrupt`` so clean-up (temporary
files, the MLflow run's status) happens for ``kill`` as it does for Ctrl-C. Also the
command-line numbers of the training stage (``--seed``, ``--epochs`` …), checked the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import signal
import sys
from typing import Any, Callable, Iterator

from pipeline.core import quiet
from pipeline.core.errors import UserError

# Signals received by the handler. Python drops an exception raised while it runs a
# weakref callback or __del__ ("Exception ignored in ..."), so an interrupt can be lost;
# long loops (training: pipeline.train.callbacks.SignalGuard) check this and raise it again.
pending_signals: list[int] = []


# While above 0 (inside ``signals_at_safe_points``), a first signal is only noted: the loop raises
# it at its next safe point. Raised at an arbitrary bytecode, the interrupt can land inside
# TensorFlow's or SQLite's Python glue (a half-built tf.function, an MLflow call in a callback),
# whose unwinding can crash the process (exit -11) before any clean-up runs.
_defer_depth = 0
_deferred_from = 0  # len(pending_signals) when deferring began


def _interrupt(signum, frame):
    pending_signals.append(signum)
    if _defer_depth and len(pending_signals) - _deferred_from == 1:
        return  # the first one, while deferring: raised at the next safe point
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` and are noted in ``pending_signals``."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def raise_pending_signal() -> None:
    """Raise again an interrupt that was received but whose exception may have been lost."""
    if pending_signals:
        raise KeyboardInterrupt(f"signal {pending_signals[-1]} (raised again at the next batch)")


@contextlib.contextmanager
def signals_at_safe_points() -> Iterator[None]:
    """Inside, SIGINT or SIGTERM is raised only where the body calls ``raise_pending_signal`` (training:
    at the next batch, ``pipeline.train.callbacks.SignalGuard``) or, at the latest, on leaving; a second
    signal raises at once, for someone who presses Ctrl-C twice."""
    global _defer_depth, _deferred_from
    if _defer_depth == 0:
        _deferred_from = len(pending_signals)
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    raise_pending_signal()


def run_main(body: Callable[[], Any]) -> None:
    """Run a stage's main body with one-line errors and signal handling (see module docstring).
    A crash of native code (TensorFlow, SQLite) prints every thread's Python stack (faulthandler)."""
    faulthandler.enable()
    quiet.install()
    install_signal_handlers()
    try:
        body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a full disk is the user's to fix, not a traceback; anything else is a bug
        from pipeline.core.store_faults import disk_full

        if (message := disk_full(exc)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


# --- Command-line numbers: ``mlflow run`` passes every parameter, unset ones as "" ------------

TRAIN_OVERRIDE_FLAGS = ("epochs", "batch-size", "learning-rate", "momentum", "train-limit", "test-limit")
FLOAT_FLAGS = ("learning-rate", "momentum", "grid-rate")


def number(flag: str, text: str) -> int | float | None:
    """A command-line number; ``""`` (what ``mlflow run`` passes for an unset parameter) is None."""
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--{flag} = {text!r} is not a number") from None
    return int(value) if value.is_integer() and flag not in FLOAT_FLAGS else value


def whole_number(flag: str, text: str) -> int:
    value = number(flag, text)
    if value is None or not float(value).is_integer() or value < 0:
        raise UserError(f"--{flag} = {text!r} is invalid: must be a whole number >= 0")
    return int(value)


def train_overrides(args: argparse.Namespace) -> dict:
    """The ``--epochs`` … flags as overrides of params.yaml's ``train`` (None: as in params.yaml)."""
    return {flag.replace("-", "_"): number(flag, getattr(args, flag.replace("-", "_"))) for flag in TRAIN_OVERRIDE_FLAGS}
