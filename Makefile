# The verbs a user says. `make demo` and `make test` are all a new user needs (see README).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3
.DEFAULT_GOAL := help
# TensorFlow's start-up lines (oneDNN, cpu_feature_guard) are printed before any of our code runs:
# only the environment can stop them. VERBOSE=1 brings them and the other library logs back.
# TF_CPP_MIN_LOG_LEVEL=2 stops cpu_feature_guard; TensorFlow 2.21 still prints "oneDNN custom
# operations are on" (twice, with absl's "before absl::InitializeLog()" preamble) whatever the
# level: only TF_ENABLE_ONEDNN_OPTS=0 stops it, which also turns off oneDNN's faster CPU kernels.
# So the verbs that load TensorFlow drop exactly those lines from stderr; all else passes, and
# the command's exit status is kept (the filter is waited for, so no line comes after make's).
# Progress bars (tqdm) would stop on the pipe: the terminal stays open as descriptor 9 for them
# ($$PROGRESS_FD, pipeline.terminal.progress_stream).
TF_NOISE := oneDNN custom operations are on|All log messages before absl::InitializeLog
ifeq ($(filter-out 0 false,$(VERBOSE)),)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PROGRESS_FD := 9
QUIET_TF := 9>&2 2> >(grep --line-buffered -vE '$(TF_NOISE)' >&2); status=$$?; wait $$!; exit $$status
endif

.PHONY: help install demo repro test test-fast lint format ui serve predict bench-serve browser \
	monitor promote rollback azurite package-azure serve-mlflow lint-workflows azure-server-env azure-ml-env \
	train-azure sweep-azure bring-home azure-train-env azure-onnx-env export-onnx bench-engines bench-quantize \
	bench-gpu bench-gpu-wheels npm plots-page

# `make help`: each verb's `## @<group> text`, by group; $$(VAR) in a text is shown as its value.
HELP_GROUPS := start pipeline serve deploy develop
HELP_VARS = PORT SOURCE OUT RELEASE
define HELP_AWK
/^[a-zA-Z_-]+:.*## @/ {
	target = $$0; sub(/:.*/, "", target)
	text = $$0; sub(/^[^#]*## @/, "", text)
	group = text; sub(/ .*/, "", group); sub(/^[^ ]* /, "", text)
	n = split(values, pairs, " ")
	for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); gsub("[$$][(]" kv[1] "[)]", kv[2], text) }
	shown[group] = shown[group] sprintf("  %-17s %s\n", target, text)
}
END { n = split(order, g, " "); for (i = 1; i <= n; i++) printf "\n%s\n%s", g[i], shown[g[i]] }
endef
export HELP_AWK

help: ## @start this list (the default target)
	@echo "make <verb> [VAR=value ...]: the verbs a user says (README for the walk-through)"
	@awk -v order="$(HELP_GROUPS)" -v values="$(foreach v,$(HELP_VARS),$(v)=$($(v)))" \
		"$$HELP_AWK" $(MAKEFILE_LIST)

# uv installs what pip would (same PyPI releases, same pins) in a fraction of the time: the five
# environments' downloads are fetched once into uv's cache and linked from there. pip stays in
# every venv for whoever wants it.
UV := $(BIN)/uv
# Bytecode compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on our CI machines) every
# process otherwise compiles TensorFlow's, Keras' and MLflow's sources again on import, ~8 s each;
# a pipeline stage, a served model or a test's subprocess pays it every time.
export UV_COMPILE_BYTECODE := 1

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv>=0.9,<1"

$(STAMP): pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(PY) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## @start create .venv and install the project with its dev tools

demo: install ## @start run the whole pipeline on the built-in synthetic demo data
	@PATH="$(abspath $(BIN)):$$PATH" dvc repro $(QUIET_TF)
	@echo
	@cat reports/evaluate/comparison.md
	@echo
	@$(PY) -c 'import json; s = json.load(open("reports/selection.json")); p = json.load(open("models/selected/release.json"))["provenance"]; print("Selected", s["winner"], "-", s["reason"]); print("Released", p["model_name"], "version", p["version"] or "(not registered)", "@" + (s["alias"] or "-"))'
	@echo "All metrics: .venv/bin/dvc metrics show   Model card: reports/model_card.md   Runs: make ui"

repro: demo ## @pipeline the same as demo: `dvc repro` through the project's venv

# Test files run on two workers: most of the suite's time is spent waiting on subprocesses and
# servers (dvc repro, mlflow/azmlinfsrv servers, a browser), so two overlap well even on 2 cores.
# Each file stays on one worker (its module fixtures are built once); tests/conftest.py sends the
# longest files first. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
SIDE_ENVS := azure-server-env azure-onnx-env azure-ml-env azure-train-env

test: install browser npm azurite ## @develop the whole test suite (unit + integration)
	@# the four side environments are independent: built side by side (downloads overlap)
	$(MAKE) --no-print-directory -j4 $(SIDE_ENVS)
	@# the 25 slowest tests are listed at the end: tests/conftest.py's LONGEST_FIRST is kept from them
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: install ## @develop unit tests only
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install ## @develop ruff (lint + format check), mypy over pipeline/, then lint-workflows
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@$(MAKE) --no-print-directory lint-workflows

format: install ## @develop ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui: PORT = 5000
ui: install ## @pipeline MLflow UI on http://127.0.0.1:5000 (PORT=5000); prints the link to the runs table
	@$(PY) -c 'from pipeline import tracking as t; from pipeline.config import load_params; t.store_uri(); print("Runs:", t.runs_view_url("http://127.0.0.1:$(PORT)", load_params().mlflow.experiment))'
	@$(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(abspath mlflow.db)}" \
		--host 127.0.0.1 --port $(PORT)

# A released model: models:/<name>@<alias>, models:/<name>/<version>, or a folder such as
# models/selected. Empty: models:/<select.model_name>@<promote.alias> from params.yaml.
MODEL ?=
PORT ?= 8000
TRACKING := MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(abspath mlflow.db)}"
MODEL_URI = $(or $(MODEL),$(shell $(PY) -c 'from pipeline.config import default_model_uri as d; print(d())' 2>/dev/null))
SOURCE ?= data/raw
OUT ?= predictions.csv

serve: install ## @serve classifier page + API on http://127.0.0.1:$(PORT) (MODEL=models:/...@alias | models/selected)
	@$(TRACKING) $(PY) -m pipeline.serve --model "$(MODEL_URI)" --port $(PORT) $(QUIET_TF)

predict: install ## @serve score a folder or CSV of images into a CSV (SOURCE=$(SOURCE) OUT=$(OUT) MODEL=...)
	@$(TRACKING) $(PY) -m pipeline.predict "$(SOURCE)" --model "$(MODEL_URI)" --out "$(OUT)" $(QUIET_TF)

monitor: install ## @serve drift report of the prediction log vs the release's reference (exit 1 on drift)
	@$(PY) -m pipeline.monitor $(QUIET_TF)

bench-serve: install ## @develop service latency vs raw model.predict on loopback (BENCH_ARGS="--seconds 30 --clients 8")
	$(PY) bench/serve_latency.py $(BENCH_ARGS)

# Azurite, Microsoft's Azure Storage emulator, for the Azure Blob DVC remote's test
# (tests/integration/test_dvc_remote.py): from npm into .azurite/, pinned, no global install.
AZURITE_VERSION := 3.35.0

azurite: .azurite/node_modules/.bin/azurite-blob ## @develop Azurite (npm) for the DVC remote's test

.azurite/node_modules/.bin/azurite-blob:
	npm install --silent --no-audit --no-fund --prefix .azurite azurite@$(AZURITE_VERSION)

# Browser code from npm (package.json, pinned by package-lock.json): vega for the DVC plots page,
# axe-core for the page's accessibility test. `npm ci` only when the lock file changes.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

npm: node_modules/.package-lock.json ## @develop node_modules/ from package-lock.json (vega, vega-lite, vega-embed, axe-core)

plots-page: install npm ## @develop .dvc/plots.html with vega, vega-lite and vega-embed inline, so dvc plots show draws offline
	@$(PY) -m pipeline.plots_page

browser: ## @develop Debian's chromium for the page's end-to-end test (root; no Playwright download)
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version)"; \
	else apt-get update && apt-get install -y chromium; fi

# --- promotion and Azure deployment (docs/deploy.md) ----------------------------------------------
AZ_SERVER_VENV := .venv-azureml-server
AZ_ML_VENV := .venv-azure-ai-ml
AZ_TRAIN_VENV := .venv-azureml-train
AZ_ONNX_VENV := .venv-azureml-onnx

promote: install ## @deploy point @champion at @challenger's version if it passes params.yaml's promote: gates
	@$(PY) -m pipeline.promote $(QUIET_TF)

rollback: install ## @deploy point @champion back at the version it replaced
	@$(PY) -m pipeline.promote rollback $(QUIET_TF)

package-azure: install ## @deploy build/azure/: the champion + score.py + YAMLs (PACKAGE_ARGS="--engine onnx": no TensorFlow)
	@$(PY) -m pipeline.package $(PACKAGE_ARGS)

RELEASE ?= models/selected

export-onnx: install ## @deploy model.onnx for a release folder made before select exported it (RELEASE=...; select's have one)
	@$(PY) -m pipeline.export "$(RELEASE)" $(QUIET_TF)

bench-engines: install ## @develop Keras vs ONNX Runtime (float, INT8), alone and behind the service, per-stage split (BENCH_ARGS="--repeats 200")
	$(PY) bench/serve_engines.py $(BENCH_ARGS)

bench-quantize: install ## @develop which ops INT8 quantizes: demo answers kept, speed (BENCH_ARGS="--speed 224")
	$(PY) bench/int8_ops.py $(BENCH_ARGS)

# A GPU host's every training figure (docs/benchmarks.md, docs/scaling.md) in one go, within 8 minutes: bench/gpu.sh.
# Its image has JAX but no Keras: `make bench-gpu-wheels` here puts Keras' wheels in .whl/ (git-
# ignored), the GPU host gets the tree with .whl/ and runs `bash bench/gpu.sh` (no make, no venv).
GPU_PYTHON ?= 3.12
GPU_WHEELS := keras namex optree

bench-gpu: ## @develop every GPU figure of docs/ in one go, under 8 min (bench/gpu.sh; OUT=folder)
	PYTHON=$${PYTHON:-python3} bash bench/gpu.sh $(if $(OUT),$(OUT),reports/bench-gpu)

bench-gpu-wheels: install ## @develop the wheels bench/gpu.sh needs on a GPU image without Keras, into .whl/
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl \
		$$($(PY) -c 'import sys; from importlib.metadata import version as v; print(*(f"{n}=={v(n)}" for n in sys.argv[1:]))' $(GPU_WHEELS))

serve-mlflow: install ## @serve MLflow's own server for the champion on http://127.0.0.1:$(PORT)/invocations
	@PATH="$(abspath $(BIN)):$$PATH" $(TRACKING) \
	$(BIN)/mlflow models serve -m "$(MODEL_URI)" --env-manager local --host 127.0.0.1 --port $(PORT)

lint-workflows: install ## @develop .github/workflows: GitHub's schema, actionlint, zizmor's security audit (offline)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/actionlint
	$(BIN)/zizmor --offline --quiet .github/workflows

azure-server-env: $(AZ_SERVER_VENV)/.installed-stamp ## @develop .venv-azureml-server: azmlinfsrv + the pinned scoring env

$(AZ_SERVER_VENV)/.installed-stamp: deploy/azure/requirements.txt | $(UV)
	$(PYTHON) -m venv $(AZ_SERVER_VENV)
	$(UV) pip install --quiet --python $(AZ_SERVER_VENV)/bin/python -r deploy/azure/requirements.txt
	touch $@

azure-onnx-env: $(AZ_ONNX_VENV)/.installed-stamp ## @develop .venv-azureml-onnx: azmlinfsrv + the ONNX Runtime scoring env (no TensorFlow)

$(AZ_ONNX_VENV)/.installed-stamp: deploy/azure/requirements-onnx.txt | $(UV)
	$(PYTHON) -m venv $(AZ_ONNX_VENV)
	$(UV) pip install --quiet --python $(AZ_ONNX_VENV)/bin/python -r deploy/azure/requirements-onnx.txt
	touch $@

azure-ml-env: $(AZ_ML_VENV)/.installed-stamp ## @develop .venv-azure-ai-ml: azure-ai-ml to validate the YAMLs offline

$(AZ_ML_VENV)/.installed-stamp: deploy/azure/requirements-deploy.txt | $(UV)
	$(PYTHON) -m venv $(AZ_ML_VENV)
	$(UV) pip install --quiet --python $(AZ_ML_VENV)/bin/python -r deploy/azure/requirements-deploy.txt
	touch $@

TRAIN_AZURE_ARGS ?=

train-azure: azure-ml-env ## @deploy submit the training stages as an Azure ML GPU job (TRAIN_AZURE_ARGS="--raw azureml:busi-raw@1 --stream")
	@$(AZ_ML_VENV)/bin/python deploy/azure/submit_train.py $(TRAIN_AZURE_ARGS)

SWEEP_AZURE_ARGS ?=

sweep-azure: azure-ml-env ## @deploy submit the hyper-parameter sweep (deploy/azure/sweep-job.yml) to Azure ML (SWEEP_AZURE_ARGS="--raw azureml:busi-raw@1")
	@$(AZ_ML_VENV)/bin/python deploy/azure/submit_train.py --sweep $(SWEEP_AZURE_ARGS)

RUN ?=
FROM ?=

bring-home: install ## @deploy register a workspace run's models as @challenger through select (RUN=<run id> FROM=<tracking uri>)
	@$(TRACKING) $(PY) -m pipeline.bring_home "$(RUN)" --from "$(FROM)" $(QUIET_TF)

azure-train-env: $(AZ_TRAIN_VENV)/.installed-stamp ## @develop .venv-azureml-train: the training job's pinned env (CPU JAX), for its local test

$(AZ_TRAIN_VENV)/.installed-stamp: deploy/azure/requirements-train.txt | $(UV)
	$(PYTHON) -m venv $(AZ_TRAIN_VENV)
	$(UV) pip install --quiet --python $(AZ_TRAIN_VENV)/bin/python -r deploy/azure/requirements-train.txt
	touch $@
