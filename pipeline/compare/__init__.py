"""Stage ``compare`` (``python -m pipeline.compare``): the study's report, built from MLflow's query API.

``stage`` drives it; ``runs`` reads the runs back; ``stats`` holds the tests; each report section
owns its data, table, figure and metrics (``results``, ``significance``, ``conclusions``,
``convergence``, ``lr_grid``, ``diagnostics``); ``report`` renders them with ``templates/``.
Nothing here imports Keras or TensorFlow."""
