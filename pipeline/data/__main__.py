"""``python -m pipeline.data``: the data stages outside DVC, only when ``data/prepared`` is missing.

What ``mlflow run`` (the MLproject ``main`` entry point) runs before the training, so that one
command trains a variant on a fresh checkout; under DVC the ``download`` and ``normalize`` stages do it.
"""

import logging

from pipeline.core.cli import run_main
from pipeline.core.params import Params
from pipeline.data import prepared


def prepare_if_missing() -> None:
    if prepared.exists():
        return
    from pipeline.data.download import download
    from pipeline.data.normalize import normalize

    params = Params.load()
    logging.getLogger("pipeline.data").info("data/prepared is missing: running the download and normalize stages")
    download(params.download)
    normalize(params.normalize)


logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
run_main(prepare_if_missing)
