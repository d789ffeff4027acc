"""Benchmark of the training pipeline against a bare Keras script, the DVC stages and the machine.

Development only: not part of the shipped ``pipeline`` package. Run it from the project root.

In: ``params.yaml`` (variants, the ``train`` and ``diagnostics`` sections), the MNIST files
(``MNIST_MIRROR``, else ``data/raw``, else the mirrors in params; the fixture subset in
``--quick``), and the machine itself. Nothing under the project's ``data/``, ``results/``,
``mlflow.db`` or ``mlruns/`` is written: every run goes to a temporary project copy
(``testbed.project_copy``) or a temporary MLflow store.

Out: ``reports/benchmark.json`` and ``reports/benchmark.md`` (``--out-dir`` elsewhere):

- ``throughput``: images/s of ``pipeline.train.stage.train`` (its own ``images_per_second``
  metric, diagnostics on as shipped and off) and of a bare Keras script (the notebook's
  way: same ``build_lenet`` model, same optimizer/loss/metric, ``model.fit`` on NumPy
  arrays, same batch size, no callbacks), per variant, median and min–max over
  repetitions. Both are timed over the same epochs including the same first-epoch warm-up
  (``whole``), and per epoch with an identical epoch timer (``steady``: epochs 2..E).
- ``stages``: wall time of every stage of a 1-epoch ``dvc repro`` in a fresh project copy
  (from the timestamps of DVC's ``Running stage`` lines), and of a no-op ``dvc repro``.
- ``memory``: peak RSS of the training stage (psutil sampling inside the repro, and
  ``getrusage`` of each training worker).
- ``hardware``: float32 matmul peak FLOP/s (NumPy and TF), LeNet FLOPs per image counted
  from the layers, achieved FLOP/s (training = 3 x forward) and its fraction of the peak.
- ``candidates`` (``--candidates``): speed-ups tried on the pipeline without changing the
  model, each with a determinism check (all repetitions share the seed, so their final
  weights must hash the same).

``python -m benchmarks.fixed_cost`` (its own command, ``fixed_cost.json``/``.md``) measures the fixed cost
per training: the stage's own command timed from process start to exit, split into start-up, ``fit``,
the finish after the last step and the exit, side by side with the project at another commit
(``--before REF``) and a bare Keras process.

Usage: ``make bench`` (= ``python -m benchmarks``: dvc timing, 3 repetitions, ~30 min);
``--quick`` (fixture subset, a few batches, 1 repetition: checks the code, not the speed);
``--candidates baseline spe=5 threads=2x1`` adds speed-ups to try; on a shared machine add
``--quiet-wait 900 --retries 2`` so each run starts, and is re-run, until nobody else uses
the CPU; ``--render reports/benchmark.json`` rewrites the Markdown from the JSON.

Modules, one concern each: ``cli`` (command line, orchestration), ``plan`` (what to
measure), ``candidates`` (speed-ups), ``workers`` (what runs inside one measurement
subprocess), ``launch`` (starting them, re-running disturbed runs), ``quiet`` (others' CPU),
``stages`` (dvc repro timing and RSS sampling), ``throughput`` (the training runs),
``flops`` (FLOPs per image), ``machine`` (versions, git), ``fixed_cost`` (one training's fixed cost), ``spread`` and ``summary`` (the
JSON), ``report`` with ``report.md.j2`` (the Markdown).
"""
