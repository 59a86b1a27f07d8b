"""MLflow wiring: where the tracking store lives and how a run is tagged.

The store defaults to `sqlite:///<project root>/mlflow.db`, resolved to an absolute path because
`dvc exp run --temp/--queue` runs stages in a copy of the repository where a relative URI would
land in the copy. `MLFLOW_TRACKING_URI` overrides it (a team server, a test's own store).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def tracking_uri(root: Path | None = None) -> str:
    """The tracking URI this project uses: MLFLOW_TRACKING_URI, else SQLite at the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = (root or Path.cwd()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> str:
    """Artifacts beside the store (absolute), unless a server decides (MLFLOW_TRACKING_URI)."""
    return ((root or Path.cwd()).resolve() / "mlartifacts").as_uri()


def setup(experiment: str) -> str:
    """Point MLflow at the project's store and return the experiment id (created if new)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # explicit: a registry URI set earlier in-process must not win
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    elif uri.startswith("sqlite:"):
        experiment_id = mlflow.create_experiment(experiment, artifact_location=artifact_root())
    else:
        experiment_id = mlflow.create_experiment(experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """The current commit (with `-dirty` when the tree has changes), or `unknown` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def run_tags(stage: str, synthetic: bool) -> dict[str, str]:
    """Tags that tie a run to its code, its DVC stage and the kind of data it saw."""
    commit = git_commit()
    return {
        "git_commit": commit,
        "dvc_stage": stage,
        "data_kind": "synthetic-demo" if synthetic else "user-data",
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
    }
