"""The Keras backend is a setting: ``train.backend`` = tensorflow or jax, each in its own process.

Real trainings on the fixture subset. JAX runs on the CPU here (the same code path a GPU
takes, minus the device); TensorFlow must not even be imported on the JAX path.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT, tiny_params
from pipeline.core import metric_names
from pipeline.core.errors import UserError
from pipeline.core.params import Params

jax = pytest.importorskip("jax", reason="JAX is part of the test extra: make test installs it")

# Trains in a fresh process (a process's Keras backend is fixed at import) and prints what
# the caller checks. For JAX, TensorFlow is made unimportable first: a machine with JAX alone
# (a GPU box) must be able to train.
TRAIN_ONE = r"""
import json, sys
from pathlib import Path


class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


if sys.argv[5] == "jax":
    sys.meta_path.insert(0, NoTensorFlow())
from pipeline.train.stage import train
result = train(sys.argv[1], int(sys.argv[2]), params_path=Path(sys.argv[3]), prepared=Path(sys.argv[4]))
import keras
print("RESULT " + json.dumps({"record": result.record, "backend": keras.backend.backend(),
                              "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def train_in_process(tmp_path, prepared, variant: str, seed: int, backend: str, **train) -> dict:
    params = tiny_params(train_limit=300, test_limit=200, backend=backend, **train)
    params["diagnostics"].update({"probe_size": 32, "every_n_batches": 1, "variance_shift_images": 64})
    path = tmp_path / f"params-{backend}.yaml"
    path.write_text(yaml.safe_dump(params))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", TRAIN_ONE, variant, str(seed), str(path), str(prepared), backend],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_jax_trains_logs_and_repeats_itself_without_tensorflow(tmp_path, prepared_fixture):
    import mlflow

    first = train_in_process(tmp_path, prepared_fixture, "bn_dropout", 0, "jax")
    again = train_in_process(tmp_path, prepared_fixture, "bn_dropout", 0, "jax")
    other = train_in_process(tmp_path, prepared_fixture, "bn_dropout", 1, "jax")
    assert first["backend"] == "jax" and not first["tensorflow_loaded"]
    metrics = ("test_loss", "test_accuracy")
    assert [first["record"][k] for k in metrics] == [again["record"][k] for k in metrics]
    assert [first["record"][k] for k in metrics] != [other["record"][k] for k in metrics]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(first["record"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.backend"] == "jax"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bn_weights", "diagnostics", "predictions.csv"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "diagnostics")} >= {
        "diagnostics/summary.json", "diagnostics/fc1_activations.npy"}
    assert any(k.startswith(metric_names.variance_shift("")) for k in run.data.metrics)


@pytest.mark.slow
def test_tensorflow_and_jax_give_the_same_network_different_streams(tmp_path, prepared_fixture):
    on_tf = train_in_process(tmp_path, prepared_fixture, "plain", 0, "tensorflow")
    on_jax = train_in_process(tmp_path, prepared_fixture, "plain", 0, "jax")
    assert on_tf["backend"] == "tensorflow" and on_tf["tensorflow_loaded"]
    assert on_tf["record"]["parameters"] == on_jax["record"]["parameters"] == 545_546
    # different random streams (initialisers, dropout, order): different numbers, one network
    assert on_tf["record"]["test_accuracy"] != on_jax["record"]["test_accuracy"]


def test_backend_is_validated_and_logged_as_a_train_setting():
    params = Params.from_dict(tiny_params(backend="jax"))
    assert params.train.backend == "jax" and params.train.flat()["train.backend"] == "jax"
    assert Params.from_dict(tiny_params()).train.backend == "tensorflow"
    with pytest.raises(UserError, match=r"'train\.backend' = 'torch' is invalid: must be tensorflow or jax"):
        Params.from_dict(tiny_params(backend="torch"))


def test_a_second_backend_in_one_process_is_refused():
    import keras

    from pipeline.core import backend

    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    with pytest.raises(UserError, match=rf"train.backend = '{other}', but Keras already runs on"):
        backend.activate(other)


def test_seeded_batches_visit_every_image_once_per_epoch_in_a_seeded_order():
    from pipeline.train.seeded_batches import SeededBatches

    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)

    def epochs(seed: int, n: int = 3) -> list[list[int]]:
        data = SeededBatches(x, y, 4, shuffle=True, seed=seed)
        seen = []
        for _ in range(n):
            assert len(data) == 3  # 4 + 4 + 2
            batches = [data[i] for i in range(len(data))]
            assert all(np.array_equal(bx[:, 0], by) for bx, by in batches)  # images stay with labels
            seen.append([int(v) for _, by in batches for v in by])
            data.on_epoch_end()
        return seen

    first = epochs(0)
    assert all(sorted(order) == list(range(10)) for order in first)  # each image once per epoch
    assert first == epochs(0)  # same seed, same orders
    assert first[0] != first[1]  # a new order every epoch
    assert first != epochs(1)
    plain = SeededBatches(x, y, 4)
    assert [int(v) for i in range(len(plain)) for v in plain[i][1]] == list(range(10))
