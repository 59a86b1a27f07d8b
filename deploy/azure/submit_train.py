"""Submit the training job (deploy/azure/train-job.yml) to Azure ML: `make train-azure`.

Run with the azure-ai-ml environment (`make azure-ml-env`). The workspace comes from
AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZURE_ML_WORKSPACE, the credentials from
DefaultAzureCredential (`az login` on a laptop, the OIDC login in the train-azure workflow).
`--check` only loads the YAML offline with azure-ai-ml's `load_job` and prints what it would
submit, as JSON: the tests run that, and so can anyone without a workspace.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from azure.ai.ml import Input, load_job

JOB_FILE = Path(__file__).with_name("train-job.yml")
SWEEP_FILE = Path(__file__).with_name("sweep-job.yml")
PROJECT = Path(__file__).resolve().parents[2]
WORKSPACE_VARIABLES = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_ML_WORKSPACE")


def build_job(args: argparse.Namespace):
    """The job from the YAML, with the command line's overrides (compute, data, params, target)."""
    job = load_job(source=args.file)
    if args.compute:
        job.compute = args.compute
    if args.raw:
        job.inputs["raw"] = Input(type="uri_folder", path=args.raw, mode="ro_mount")
    if args.params:
        job.inputs["params"] = args.params
    if args.target:
        job.inputs["target"] = args.target
    if "commit" in job.inputs:  # a sweep: every trial is tagged with where it came from
        job.inputs.update(provenance(job.inputs["raw"]))
    return job


def provenance(raw) -> dict[str, str]:
    """The commit (marked -dirty with uncommitted changes), dvc.lock's sha256 and the data version
    the job is submitted with: a trial reproduces with these and its `dvc exp run -S` tag."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    lock = PROJECT / "dvc.lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "none"
    return {"commit": commit, "dvc_lock": digest, "data_version": str(getattr(raw, "path", raw))}


def summary(job) -> dict:
    """What would be submitted, as azure-ai-ml itself writes the job (its public `dump`)."""
    text = io.StringIO()
    job.dump(text)
    return yaml.safe_load(text.getvalue())


def submit(job, stream: bool) -> int:
    """Submit the job to the workspace the environment names; with `stream`, follow it to its
    end."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    missing = [name for name in WORKSPACE_VARIABLES if not os.environ.get(name)]
    if missing:
        print(f"error: set {', '.join(missing)} (docs/deploy.md)", file=sys.stderr)
        return 2
    client = MLClient(
        DefaultAzureCredential(),
        os.environ["AZURE_SUBSCRIPTION_ID"],
        os.environ["AZURE_RESOURCE_GROUP"],
        os.environ["AZURE_ML_WORKSPACE"],
    )
    created = client.jobs.create_or_update(job)
    print(f"submitted {created.name}: {created.studio_url}")
    if stream:
        client.jobs.stream(created.name)  # raises when the job fails
    return 0


def main(argv: list[str] | None = None) -> int:
    """`make train-azure`: the training job from train-job.yml with the overrides given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=str(JOB_FILE), help="train-job.yml or sweep-job.yml")
    parser.add_argument("--sweep", action="store_true", help="submit sweep-job.yml (--file's)")
    parser.add_argument("--compute", help="azureml:<cluster> (default: the YAML's)")
    parser.add_argument("--raw", help="azureml:<data asset>@<version> or azureml://... folder")
    parser.add_argument("--params", help="params file inside the project (default: the YAML's)")
    parser.add_argument("--target", help="last DVC stage to reproduce (default: evaluate)")
    parser.add_argument("--stream", action="store_true", help="follow the logs until it ends")
    parser.add_argument("--check", action="store_true", help="validate offline, submit nothing")
    args = parser.parse_args(argv)
    if args.sweep:
        args.file = str(SWEEP_FILE)
    try:
        job = build_job(args)
    except Exception as exc:  # the loader raises several types; any of them means "invalid"
        print(f"invalid: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    if args.check:
        print(json.dumps(summary(job), default=str))
        return 0
    return submit(job, args.stream)


if __name__ == "__main__":
    raise SystemExit(main())
