#!/usr/bin/env bash
# The Azure ML training job's command (train-job.yml), and each sweep trial's (sweep-job.yml), run
# from the uploaded project folder. tests/integration/test_azure_train_job.py runs this same script
# on tiny params in an environment built from the same pins (requirements-train.txt), so the cloud
# run cannot miss an install step.
#
#   deploy/azure/train-job.sh RAW_DIR OUT_DIR PARAMS_FILE TARGET [section.key=value ...] [tag.name=value ...]
#
# RAW_DIR: the images (a mounted data asset or DVC remote folder, any layout `prepare` reads), or
# `demo` for the built-in synthetic set. PARAMS_FILE becomes params.yaml. TARGET: the last stage
# to reproduce, `evaluate` by default (docs/deploy.md: why the job does not register).
# `section.key=value`: a params override, as `dvc exp run -S` takes it (a sweep trial's sampled
# values). `tag.name=value`: a tag for the job's own run (the commit, dvc.lock's hash, the data
# version the submitter recorded).
#
# Azure ML gives the job one MLflow run (MLFLOW_RUN_ID). The stages keep their own runs, as on a
# laptop, so the variable is hidden from them; after each training stage and after evaluate,
# report_trial.py logs the primary metric, the tags and, at the end, the outputs to the job's run.
set -euo pipefail
raw="$1"; out="$2"; params="$3"; target="${4:-evaluate}"
shift $(( $# < 4 ? $# : 4 ))
job_run="${MLFLOW_RUN_ID:-}"
unset MLFLOW_RUN_ID
report() { [ -z "$job_run" ] || MLFLOW_RUN_ID="$job_run" python deploy/azure/report_trial.py "$@"; }

[ "$params" = params.yaml ] || cp "$params" params.yaml
overrides=()
[ "$raw" = demo ] || overrides+=("data.raw_dir=data/raw/input")
overrides+=("$@")
python deploy/azure/report_trial.py --apply "${overrides[@]}"   # params.yaml; tag.* are skipped
if [ "$raw" != demo ]; then
    mkdir -p data/raw/input
    cp -R "$raw"/. data/raw/input/       # a read-only mount cannot hold DVC's outputs beside it
fi
# The uploaded snapshot has no .git; DVC then runs without an SCM (dvc.lock is still written).
[ -d .git ] || dvc config --local core.no_scm true

# The training stages one by one (each reports), then the rest up to the target.
if [[ "$target" != train* ]]; then
    for stage in $(dvc stage list --name-only | grep '^train'); do
        dvc repro "$stage"
        report --interim "$@"
    done
fi
dvc repro "$target"

mkdir -p "$out"
cp -R models reports dvc.lock params.yaml "$out"/
mkdir -p "$out/data" && cp -R data/prepared "$out/data/"   # select's validation images
report --final "$out" "$@"
echo "train-job: reproduced up to $target; outputs in $out"
