# Two commands run everything:  make study  (set up + dvc repro)   make test  (set up + tests)
# Setup is idempotent: the virtual environment is rebuilt only when the pins change.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# dvc.yaml's stages call `python`: make it the environment's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup study test test-unit test-fast bench ui sweep clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/dvc repro

# Two workers, a test file per worker at a time (see tests/conftest.py): about half the wall time.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# Every missing or stale training on a Ray cluster (RAY_ADDRESS, or a local one); see README.
sweep: $(STAMP)
	$(BIN)/python -m pipeline.sweep $(SWEEP_ARGS)

# Prints the address of the study's runs table (model-training mode, variant/seed/test accuracy
# columns, best first), then serves the local store on it.
UI_PORT ?= 5000
ui: $(STAMP)
	@MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db $(BIN)/python -m pipeline.core.tracking ui-url http://127.0.0.1:$(UI_PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

clean-venv:
	rm -rf $(VENV)
