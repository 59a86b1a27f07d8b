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


def register(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name`, tag it, move `alias` to it."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def next_version(name: str) -> str:
    """The version number the registry will give `name`'s next version (as a string)."""
    try:
        versions = MlflowClient().search_model_versions(f"name='{name}'")
    except MlflowException:
        return "1"
    return str(1 + max((int(v.version) for v in versions), default=0))


def delete_version(name: str, version: str) -> None:
    """Remove a registered version: select drops one that got another number than its release
    records."""
    MlflowClient().delete_model_version(name, str(version))


def version_description(name: str, version: str) -> str:
    """A version's description (its model card), empty when it has none."""
    return MlflowClient().get_model_version(name, str(version)).description or ""


def describe_version(name: str, version: str, description: str) -> None:
    """A version's description: its model card, as `mlflow ui` shows it."""
    MlflowClient().update_model_version(name, str(version), description=description)


def describe_model(name: str, description: str) -> None:
    """The registered model's own description (what `mlflow ui` shows above its versions)."""
    MlflowClient().update_registered_model(name, description=description)


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
