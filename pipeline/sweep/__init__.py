"""The Ray sweep (``python -m pipeline.sweep``): every missing or stale training stage on a Ray
cluster, recorded and committed to DVC as ``dvc repro`` would. ``driver`` plans and collects,
``tasks`` runs one training on a node, ``dvc`` asks DVC what is stale and commits records."""
