"""TensorFlow's start-up notices, kept out of the progress lines users read.

In: nothing; ``install()`` is called by a stage's entry point (``pipeline.core.cli.run_main``,
a sweep task) before TensorFlow is imported, never on import.
Out: ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2, and the first ``import tensorflow`` (also the one
inside ``import keras``) runs with file descriptor 2 routed through a filter process that drops
the two lines its shared libraries print while loading (see ``_STARTUP_NOISE``).
"""

import contextlib
import importlib.abc
import importlib.util
import os
import subprocess
import sys

# Logged while TensorFlow's shared libraries load, where TF_CPP_MIN_LOG_LEVEL does not
# apply (3 keeps them too), once by libtensorflow_framework and once by the profiler
# plugin, each with its own copy of absl. Only TF_ENABLE_ONEDNN_OPTS=0 stops them, and
# that changes the arithmetic.
_STARTUP_NOISE = (
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} [0-9:. ]+ \d+ port\.cc:\d+\] oneDNN custom operations are on\. .*"
)
_FILTER = (
    "import re, sys\n"
    "noise = re.compile(sys.argv[1].encode())\n"
    "for line in sys.stdin.buffer:\n"
    "    if not noise.fullmatch(line.rstrip(b'\\r\\n')):\n"
    "        sys.stdout.buffer.write(line)\n"
    "        sys.stdout.buffer.flush()\n"
)


@contextlib.contextmanager
def _stderr_without_startup_noise():
    """Routes file descriptor 2 through a filter process that drops ``_STARTUP_NOISE`` lines
    and passes every other line on at once. A separate process, so that what a crashing
    import writes last still comes out."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, _STARTUP_NOISE.decode()],
                                 stdin=subprocess.PIPE, stdout=saved)
    except OSError:
        os.close(saved)
        yield
        return
    os.dup2(child.stdin.fileno(), 2)
    try:
        yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()
        child.wait()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs the first ``import tensorflow`` (also the one inside ``import keras``) with
    ``_stderr_without_startup_noise``; the module itself is loaded by its own loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        with _stderr_without_startup_noise():
            self.loader.exec_module(module)


def install() -> None:
    """Quiet TensorFlow's start-up lines in this process (a stage's entry point calls it, before
    anything imports TensorFlow): its C++ log level to 2 unless set, and the first
    ``import tensorflow`` through the stderr filter. ``TF_CPP_MIN_LOG_LEVEL=0`` brings them all back."""
    # TensorFlow's C++ start-up chatter hides the progress lines users look for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("", "0") or not sys.executable or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
