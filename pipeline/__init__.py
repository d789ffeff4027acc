"""LeNet-5 batch-norm / dropout study on MNIST.

Stages (one module each, each with a ``main()``):

- ``pipeline.download``  mirrors -> ``data/raw/*.gz`` (payload SHA-256 verified)
- ``pipeline.normalize`` ``data/raw`` -> ``data/prepared/*.npy`` + ``data/summary.json``
- ``pipeline.train``     prepared data + one variant spec -> one MLflow run + a DVC record
- ``pipeline.compare``   DVC records + MLflow query API -> ``reports/``
"""
