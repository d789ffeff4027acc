"""``python -m pipeline.sweep``: see ``pipeline.sweep.driver``."""

from pipeline.sweep.driver import main

main()
