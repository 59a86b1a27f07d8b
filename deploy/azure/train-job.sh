#!/usr/bin/env bash
# The Azure ML training job's command (train-job.yml), run from the uploaded project folder.
# tests/integration/test_azure_train_job.py runs this same script on tiny params in an environment
# built from the same pins (requirements-train.txt), so the cloud run cannot miss an install step.
#
#   deploy/azure/train-job.sh RAW_DIR OUT_DIR PARAMS_FILE TARGET
#
# RAW_DIR: the images (a mounted data asset or DVC remote folder, any layout `prepare` reads), or
# `demo` for the built-in synthetic set. PARAMS_FILE becomes params.yaml. TARGET: the last stage
# to reproduce, `evaluate` by default (docs/deploy.md: why the job does not register).
set -euo pipefail
raw="$1"; out="$2"; params="$3"; target="${4:-evaluate}"

[ "$params" = params.yaml ] || cp "$params" params.yaml
if [ "$raw" != demo ]; then
    mkdir -p data/raw/input
    cp -R "$raw"/. data/raw/input/       # a read-only mount cannot hold DVC's outputs beside it
    python - <<'PY'
import yaml
params = yaml.safe_load(open("params.yaml"))
params.setdefault("data", {})["raw_dir"] = "data/raw/input"
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
fi
# The uploaded snapshot has no .git; DVC then runs without an SCM (dvc.lock is still written).
[ -d .git ] || dvc config --local core.no_scm true
dvc repro "$target"

mkdir -p "$out"
cp -R models reports dvc.lock params.yaml "$out"/
mkdir -p "$out/data/prepared" && cp data/prepared/manifest.csv "$out/data/prepared/"
echo "train-job: reproduced up to $target; outputs in $out"
