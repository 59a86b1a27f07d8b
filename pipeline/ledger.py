"""The test-split ledger: every computation of test metrics, recorded in MLflow and counted.

A test split stays an unbiased estimate only while nothing is chosen by it. Each look (the evaluate
stage reporting test, a promotion gate scoring a challenger) is one MLflow run in its own
experiment, `<experiment>-test-ledger`, tagged with the split's fingerprint, the manifest hash, the
model and the purpose. The model card and the promotion record say how many times this split has
been looked at and by how many models, so a split worn out by tuning is visible.

The ledger is kept apart from the training runs on purpose: the training experiment (and
`dvc exp show`) carries validation numbers only, and test numbers sit in one place that must be
opened deliberately.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import mlflow
from mlflow.entities import Run

LEDGER_SUFFIX = "-test-ledger"
SPLIT_TAG = "test_split_sha256"


def ledger_experiment(experiment: str) -> str:
    """The ledger's MLflow experiment name for a project experiment."""
    return f"{experiment}{LEDGER_SUFFIX}"


def split_fingerprint(image_hashes: Iterable[str]) -> str:
    """SHA-256 over the sorted image hashes of a split: the same images, the same split.

    Content, not the manifest: adding training images changes the manifest but not which test
    images have been seen.
    """
    digest = hashlib.sha256()
    for value in sorted(image_hashes):
        digest.update(value.encode() + b"\n")
    return digest.hexdigest()


def record_look(
    experiment: str,
    *,
    split_sha256: str,
    manifest_sha256: str,
    model: str,
    model_sha256: str,
    purpose: str,
    metrics: dict[str, float],
) -> str:
    """Log one look at a test split (its metrics and who looked, why); return the run id.

    Uses the tracking URI already set (pipeline.tracking.setup) and does not change the active
    experiment or run.
    """
    client = mlflow.MlflowClient()
    name = ledger_experiment(experiment)
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    tags = {
        SPLIT_TAG: split_sha256,
        "manifest_sha256": manifest_sha256,
        "model": model,
        "model_sha256": model_sha256,
        "purpose": purpose,
    }
    run = client.create_run(experiment_id, tags=tags, run_name=f"{purpose}: {model}")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def split_use(experiment: str, split_sha256: str) -> dict[str, int | str]:
    """How often the split was looked at, by how many distinct models, as the ledger records it."""
    client = mlflow.MlflowClient()
    name = ledger_experiment(experiment)
    found = client.get_experiment_by_name(name)
    runs: list[Run] = []
    if found is not None:
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.{SPLIT_TAG} = '{split_sha256}'",
            max_results=50000,
        )
    return {
        "looks": len(runs),
        "models": len({r.data.tags.get("model_sha256") for r in runs}),
        "split_sha256": split_sha256,
        "ledger": name,
    }


def file_sha256(path: str) -> str:
    """Content hash of a file (a model, a manifest): what the ledger calls it by."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
