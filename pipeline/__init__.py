"""LeNet-5 batch-norm / dropout study on MNIST.

Stages (one module each, each with a ``main()``):

- ``pipeline.download``  mirrors -> ``data/raw/*.gz`` (payload SHA-256 verified)
- ``pipeline.normalize`` ``data/raw`` -> ``data/prepared/*.npy`` + ``data/summary.json``
- ``pipeline.train``     prepared data + one variant spec -> one MLflow run + a DVC record
- ``pipeline.compare``   DVC records + MLflow query API -> ``reports/``

Importing the package quiets TensorFlow's start-up notices (see ``_QuietTensorFlowImport``);
``TF_CPP_MIN_LOG_LEVEL=0`` in the environment brings them all back.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import subprocess
import sys

# TensorFlow's C++ start-up chatter hides the progress lines users look for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


if os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("", "0") and sys.executable and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
