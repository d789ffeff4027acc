"""The data stages: ``python -m pipeline.data.download`` (mirrors -> ``data/raw``, verified) and
``python -m pipeline.data.normalize`` (``data/raw`` -> ``data/prepared`` + ``data/summary.json``);
``pipeline.data.prepared`` is the contract the other stages read the data by."""
