"""``python -m pipeline.train``: see ``pipeline.train.stage``."""

from pipeline.train.stage import main

main()
