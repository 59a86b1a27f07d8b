"""The MLflow model registry: register a run's model, point aliases, tag versions.

Aliases (`challenger`, `champion`) replace the deprecated registry stages in MLflow 3.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException


def register(run_id: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register `runs:/<run_id>/model` as a new version of `name`, tag it, move `alias` to it."""
    version = mlflow.register_model(f"runs:/{run_id}/model", name, tags=tags)
    client = MlflowClient()
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def file_sha256(path: Path) -> str:
    """Content hash that ties a model version to the exact data manifest it was trained on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def version_by_alias(name: str, alias: str) -> ModelVersion | None:
    """The version `name@alias` points at, or None when the alias (or the model) does not exist."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `name@alias` at `version` (an alias names one version; the old target loses it)."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    """Set (or overwrite) tags on one model version."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))
