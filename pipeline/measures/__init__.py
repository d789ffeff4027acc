"""The diagnostics' measurements: internal covariate shift, co-adaptation, variance shift.

``covariate_shift``, ``coadaptation`` and ``variance_shift`` are pure NumPy math on arrays (the
compare stage uses them without Keras); ``probes``, ``checkpoints`` and ``monitor`` take the
arrays from a Keras model during or after training."""
