"""What every stage shares: paths, params, errors, the command-line plumbing, metric names, the
tracking store, the Keras backend, run labels and the figure style. Imports nothing else from
``pipeline``."""
