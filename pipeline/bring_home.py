"""Bring a workspace run's models home: `python -m pipeline.bring_home RUN_ID --from URI`.

An Azure ML training job or sweep trial (deploy/azure/train-job.sh) leaves its outputs (models/,
reports/, the prepared data, params.yaml, dvc.lock) as its run's `pipeline/` artifacts in the
workspace's MLflow, whose registry has no aliases. This command downloads them, checks that they
are a complete pipeline output of this project (the release format select reads), and runs the
project's own `select` stage on them against the project's tracking store: the same choice on
validation, the same release (rule, OOD statistics, reference, pyfunc), the same registration as
`@challenger`. The registered version is tagged with where it came from (the workspace's URI and
run, and the commit, dvc.lock hash and data version the trial recorded), and promotion then treats
it like any other challenger. Nothing in the project's work tree changes: the download and the
release built from it stay under build/bring-home/<run id>/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from pipeline import paths, tracking
from pipeline.cli import stage_main
from pipeline.config import Params, load_params
from pipeline.errors import UserError

ARTIFACTS = "pipeline"
# What the trial tagged its run with (deploy/azure/report_trial.py), copied onto the version.
SOURCE_TAGS = ("commit", "dvc_lock", "data_version", "reproduce")


def download(run_id: str, source: str, dest: Path) -> dict[str, str]:
    """The run's `pipeline/` artifacts into `dest`; returns the run's tags."""
    client = mlflow.MlflowClient(tracking_uri=source)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise UserError(f"run {run_id}: not found on {source} ({exc.error_code})") from None
    if not any(a.path == ARTIFACTS for a in client.list_artifacts(run_id)):
        raise UserError(
            f"run {run_id}: has no {ARTIFACTS}/ artifacts; bring home a run of "
            "deploy/azure/train-job.sh (a training job or a sweep trial, not the sweep itself)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=ARTIFACTS, dst_path=str(dest), tracking_uri=source
    )
    return dict(run.data.tags)


def check_release_format(folder: Path, project: Params) -> Params:
    """The downloaded outputs' params, after checking that select has all it reads; a missing or
    foreign piece is a UserError naming it."""
    params = load_params(folder / "params.yaml")
    if tuple(params.classes) != tuple(project.classes):
        raise UserError(
            f"{folder / 'params.yaml'}: classes {list(params.classes)} differ from this "
            f"project's {list(project.classes)}"
        )
    reports = folder / paths.EVALUATE_MODELS
    evaluated = sorted(p.parent.name for p in reports.glob("*/metrics.json"))
    if not evaluated:
        raise UserError(f"{reports}: no evaluated model; run the job up to evaluate")
    needed = [folder / "dvc.lock", folder / paths.MANIFEST]
    for arch in evaluated:
        model = folder / paths.model_dir(arch)
        needed += [model / "model.keras", model / "run.json", reports / arch / "rule.json"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise UserError(f"not a complete pipeline output: missing {', '.join(missing)}")
    return params


def local_run(folder: Path, project: Params, run_id: str, source: str, tags: dict) -> str:
    """A run in the project's store that stands for the workspace run (select logs the release to
    it and registers from it); every downloaded model's run.json now points at it."""
    experiment = tracking.setup(project.mlflow.experiment)
    provenance = {f"source_{k}": tags[k] for k in SOURCE_TAGS if k in tags}
    provenance |= {"source": "bring_home", "source_run_id": run_id, "source_tracking_uri": source}
    client = mlflow.MlflowClient()
    run = client.create_run(experiment, run_name=f"bring-home-{run_id[:12]}", tags=provenance)
    client.set_terminated(run.info.run_id)
    for record in (folder / paths.TRAINED).glob("*/run.json"):
        record.write_text(json.dumps(json.loads(record.read_text()) | {"run_id": run.info.run_id}))
    return run.info.run_id


def run(params: Params, run_id: str, source: str) -> dict:
    """Download, check, select and register; return the release's provenance."""
    folder = (paths.BRING_HOME / run_id).resolve()
    tags = download(run_id, source, folder)
    folder = folder / ARTIFACTS
    trial = yaml.safe_load((folder / "params.yaml").read_text())
    check_release_format(folder, params)
    # registered under this project's name, experiment and alias, not the job's
    trial["select"] = yaml.safe_load(Path("params.yaml").read_text())["select"]
    trial["mlflow"] = yaml.safe_load(Path("params.yaml").read_text())["mlflow"]
    (folder / "params.yaml").write_text(yaml.safe_dump(trial, sort_keys=False))
    store = tracking.tracking_uri()
    local = local_run(folder, params, run_id, source, tags)
    env = {k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"}
    env |= {"MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(Path.cwd())}
    env["GIT_CEILING_DIRECTORIES"] = str(folder.parent)  # not this project's commit: the trial's
    result = subprocess.run([sys.executable, "-m", "pipeline.select"], cwd=folder, env=env)
    if result.returncode != 0:
        raise UserError(f"select refused the run's models (above); its files: {folder}")
    provenance = json.loads((folder / paths.SELECTED / "release.json").read_text())["provenance"]
    version = provenance.get("version")
    if version is not None:
        client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
        for key, value in client.get_run(local).data.tags.items():
            if key.startswith("source"):
                client.set_model_version_tag(params.select.model_name, version, key, value)
    print(
        f"Brought home run {run_id} from {source}: {params.select.model_name} version "
        f"{version or '(not registered)'} @{params.select.alias}; release in {folder}"
    )
    return provenance


def configure(parser: argparse.ArgumentParser) -> None:
    """RUN_ID and --from: the workspace run and its tracking server."""
    parser.add_argument("run_id", help="the workspace run (a training job or one sweep trial)")
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        help="its tracking URI (the workspace's MLflow URI, or any MLflow server)",
    )


def main(argv: list[str] | None = None) -> int:
    """`make bring-home RUN=<run id> FROM=<tracking uri>`."""
    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
