"""How a stage runs from the command line: one-line errors and clean interrupts.

In: a stage's ``main`` body (a callable).
Out: exit status 0, 2 (a ``UserError``: its message on stderr, no traceback) or 130
(SIGINT or SIGTERM). SIGTERM becomes ``KeyboardInterrupt`` so clean-up (temporary
files, the MLflow run's status) happens for ``kill`` as it does for Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable

from pipeline.errors import UserError

# Signals received by the handler. Python drops an exception raised while it runs a
# weakref callback or __del__ ("Exception ignored in ..."), so an interrupt can be lost;
# long loops (training: pipeline.callbacks.SignalGuard) check this and raise it again.
pending_signals: list[int] = []


def _interrupt(signum, frame):
    pending_signals.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` and are noted in ``pending_signals``."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def raise_pending_signal() -> None:
    """Raise again an interrupt that was received but whose exception may have been lost."""
    if pending_signals:
        raise KeyboardInterrupt(f"signal {pending_signals[-1]} (raised again at the next batch)")


def run_main(body: Callable[[], Any]) -> None:
    """Run a stage's main body with one-line errors and signal handling (see module docstring)."""
    install_signal_handlers()
    try:
        body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
