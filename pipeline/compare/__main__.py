"""``python -m pipeline.compare``: see ``pipeline.compare.stage``."""

from pipeline.compare.stage import main

main()
