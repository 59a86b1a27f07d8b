"""The MLflow model registry: register a run's model, point aliases, tag versions.

Aliases (`challenger`, `champion`) replace the deprecated registry stages in MLflow 3.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def register(run_id: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register `runs:/<run_id>/model` as a new version of `name`, tag it, move `alias` to it."""
    version = mlflow.register_model(f"runs:/{run_id}/model", name, tags=tags)
    client = MlflowClient()
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def file_sha256(path: Path) -> str:
    """Content hash that ties a model version to the exact data manifest it was trained on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
