"""LeNet-5 batch-norm / dropout study on MNIST.

Stages (one module each, each with a ``main()``):

- ``pipeline.download``  mirrors -> ``data/raw/*.gz`` (payload SHA-256 verified)
- ``pipeline.normalize`` ``data/raw`` -> ``data/prepared/*.npy`` + ``data/summary.json``
- ``pipeline.train``     prepared data + one variant spec -> one MLflow run + a DVC record
- ``pipeline.compare``   DVC records + MLflow query API -> ``reports/``
"""

import os

# TensorFlow's C++ start-up chatter hides the progress lines users look for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
