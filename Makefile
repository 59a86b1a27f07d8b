# The verbs a user says. `make demo` and `make test` are all a new user needs (see README).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: install demo repro test test-fast lint format ui clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev tools

demo: install ## run the whole pipeline on the built-in synthetic demo data
	PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@echo
	@PATH="$(abspath $(BIN)):$$PATH" dvc metrics show
	@echo "Compare runs: make ui   (MLflow UI on http://127.0.0.1:5000)"

repro: demo

test: install ## the whole test suite (unit + integration)
	$(PY) -m pytest

test-fast: install ## unit tests only
	$(PY) -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui: install ## MLflow UI on the project's tracking store
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(abspath mlflow.db)" --host 127.0.0.1 --port 5000
