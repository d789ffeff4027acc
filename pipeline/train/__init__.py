"""Stage ``train`` (``python -m pipeline.train``): one LeNet-5 variant, one seed, one MLflow run.

``pipeline.train.stage.train(...)`` is the stage as a function (returns a ``TrainResult``);
the other modules are its parts: the model builder, inputs, callbacks, convergence monitor,
diagnostics wiring, artifacts and the logged model."""
