"""LeNet-5 batch-norm / dropout study on MNIST: a DVC pipeline logged in MLflow.

One package per role; a package imports only packages listed before it (checked by
``tests/unit/test_layout.py``):

- ``pipeline.core``      paths, params, errors, command-line plumbing, metric names, tracking store, backend, labels, figure style
- ``pipeline.data``      stages ``download`` and ``normalize``; the prepared-data contract
- ``pipeline.measures``  the diagnostics' measurements (pure NumPy, apart from ``probes``, ``checkpoints``, ``monitor``)
- ``pipeline.train``     stage ``train``: one variant, one seed, one MLflow run (``python -m pipeline.train``)
- ``pipeline.compare``   stage ``compare``: the report from MLflow's query API, never importing Keras (``python -m pipeline.compare``)
- ``pipeline.sweep``     the trainings on a Ray cluster (``python -m pipeline.sweep``)

Importing any of them has no side effect: no subprocess, no change to the environment.
"""
