"""The test-split ledger: every computation of test metrics, recorded and counted.

A test split stays an unbiased estimate only while nothing is chosen by it. Each look (the evaluate
stage reporting test, a promotion gate scoring a challenger) is one row of `reports/test_looks.csv`
(LEDGER_FILE), a file committed to git so the count survives a fresh clone (the MLflow store is
local and ignored): when (UTC), the split's fingerprint, the manifest hash, the purpose, the model
and hashes of the model and of the figures. The figures themselves go to one MLflow run per look
in the experiment `test-ledger-<experiment>` (ledger_experiment), apart from the training runs, so
the training experiment (and `dvc exp show`) carries validation numbers only.

A look is new information: computing the same figures of the same model on the same split again
(a rerun of `evaluate` on unchanged inputs) adds no row, so a rerun changes no committed file; a
retrained model, other evaluate settings or another purpose does. The model card, test.md and the
promotion record name the row their figures come from, and how many looks the split has had.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import mlflow

from pipeline.tracking import project_root

LEDGER_PREFIX = "test-ledger-"
# The name before: MLflow's lists cut experiment names at 20 characters, where it read the same as
# the training experiment. An existing store's ledger under it is renamed on first use.
OLD_LEDGER_SUFFIX = "-test-ledger"
SPLIT_TAG = "test_split_sha256"
LEDGER_FILE = Path("reports/test_looks.csv")
COLUMNS = (
    "time_utc", "purpose", "model", "model_sha256", "split_sha256", "manifest_sha256",
    "figures_sha256",
)  # fmt: skip


def ledger_experiment(experiment: str) -> str:
    """The ledger's MLflow experiment name for a project experiment: the prefix first, so the two
    names differ in the 20 characters MLflow's experiment lists show."""
    return f"{LEDGER_PREFIX}{experiment}"


def ledger_experiment_id(client: mlflow.MlflowClient, experiment: str) -> str:
    """The ledger experiment's id, created if new; a ledger under the old name
    (`<experiment>-test-ledger`) is renamed, so an existing store keeps its looks' history."""
    name = ledger_experiment(experiment)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    old = client.get_experiment_by_name(f"{experiment}{OLD_LEDGER_SUFFIX}")
    if old is not None:
        client.rename_experiment(old.experiment_id, name)
        return str(old.experiment_id)
    return str(client.create_experiment(name))


def split_fingerprint(image_hashes: Iterable[str]) -> str:
    """SHA-256 over the sorted image hashes of a split: the same images, the same split.

    Content, not the manifest: adding training images changes the manifest but not which test
    images have been seen.
    """
    digest = hashlib.sha256()
    for value in sorted(image_hashes):
        digest.update(value.encode() + b"\n")
    return digest.hexdigest()


def ledger_path() -> Path:
    """The ledger file of this project: at the project root, also from a DVC experiment's
    temporary copy (tracking.project_root), so a queued experiment's looks are not lost."""
    return project_root() / LEDGER_FILE


def figures_sha256(metrics: dict[str, float]) -> str:
    """Content hash of a look's figures (rounded to 12 digits: the same figures, the same hash)."""
    rounded = {k: round(float(v), 12) for k, v in sorted(metrics.items())}
    return hashlib.sha256(json.dumps(rounded).encode()).hexdigest()


def read_looks(path: Path | None = None) -> list[dict[str, str]]:
    """Every row of the ledger file (none when it does not exist yet)."""
    path = path or ledger_path()
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def record_look(
    experiment: str,
    *,
    split_sha256: str,
    manifest_sha256: str,
    model: str,
    model_sha256: str,
    purpose: str,
    metrics: dict[str, float],
) -> dict[str, str]:
    """Record one look at a test split; return its ledger row (the earlier one when the same
    figures of the same model were already recorded for this purpose: no new row, no new run).

    The figures go to an MLflow run in ledger_experiment(experiment) (the tracking URI already set,
    pipeline.tracking.setup; the active experiment and run are left alone).
    """
    row = {
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "purpose": purpose,
        "model": model,
        "model_sha256": model_sha256,
        "split_sha256": split_sha256,
        "manifest_sha256": manifest_sha256,
        "figures_sha256": figures_sha256(metrics),
    }
    same = ("purpose", "model_sha256", "split_sha256", "figures_sha256")
    for earlier in read_looks():
        if all(earlier.get(k) == row[k] for k in same):
            return earlier
    _append(row)
    _log_figures(experiment, row, metrics)
    return row


def _append(row: dict[str, str]) -> None:
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _log_figures(experiment: str, row: dict[str, str], metrics: dict[str, float]) -> None:
    client = mlflow.MlflowClient()
    experiment_id = ledger_experiment_id(client, experiment)
    tags = {SPLIT_TAG: row["split_sha256"], **{k: row[k] for k in COLUMNS if k != "split_sha256"}}
    run = client.create_run(experiment_id, tags=tags, run_name=f"{row['purpose']}: {row['model']}")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)


def split_use(experiment: str, split_sha256: str) -> dict[str, int | str]:
    """How often the split was looked at, by how many distinct models, as the ledger file says;
    `file` names it, `ledger` the MLflow experiment holding each look's figures."""
    runs = [r for r in read_looks() if r.get("split_sha256") == split_sha256]
    return {
        "looks": len(runs),
        "models": len({r.get("model_sha256") for r in runs}),
        "split_sha256": split_sha256,
        "file": str(LEDGER_FILE),
        "ledger": ledger_experiment(experiment),
    }


def file_sha256(path: str) -> str:
    """Content hash of a file (a model, a manifest): what the ledger calls it by."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
