"""MLflow wiring: where the tracking store lives and how a run is tagged.

The store defaults to `sqlite:///<project root>/mlflow.db`, resolved to an absolute path because
`dvc exp run --temp/--queue` runs stages in a copy of the repository where a relative URI would
land in the copy: there the project root is `DVC_ROOT`, which DVC sets for every stage command to
the repository the experiment was queued from. `MLFLOW_TRACKING_URI` overrides it (a team server,
a test's own store).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import mlflow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# MLflow 3's UI opens an experiment on its GenAI (traces) view unless the experiment says it is
# for model development; this tag, set when the project creates the experiment, says so.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The runs table sorted by the headline metric, best first (URL keys of MLflow 3's experiment
# page: orderByKey, orderByAsc, compareRunsMode; mlflow/server/js, experiment page search facets).
HEADLINE_METRIC = "val_macro_f1"


def project_root() -> Path:
    """The project's folder: `DVC_ROOT` inside a DVC stage (the original repository, also from an
    experiment's temporary copy: dvc/repo/experiments/queue/base.py), else the working directory
    (stages and make targets run from the project root)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """The tracking URI this project uses: MLFLOW_TRACKING_URI, else SQLite at the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or project_root()).resolve() / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> str:
    """Artifacts beside the store (absolute), unless a server decides (MLFLOW_TRACKING_URI)."""
    return ((root or project_root()).resolve() / "mlartifacts").as_uri()


def setup(experiment: str) -> str:
    """Point MLflow at the project's store and return the experiment id (created if new)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # explicit: a registry URI set earlier in-process must not win
    with _store_lock(uri):
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        elif uri.startswith("sqlite:"):
            experiment_id = mlflow.create_experiment(
                experiment, artifact_location=artifact_root(), tags=EXPERIMENT_KIND
            )
        else:
            experiment_id = mlflow.create_experiment(experiment, tags=EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def runs_view_url(base: str, experiment: str) -> str:
    """The MLflow UI link that opens `experiment`'s runs table, sorted by validation macro-F1.

    A fresh browser on `mlflow ui` lands on the GenAI overview; this link goes to the classic
    runs view. The experiments list when the store or the experiment does not exist yet.
    """
    uri = tracking_uri()
    store = Path(uri.removeprefix("sqlite:///"))
    found = None
    if not uri.startswith("sqlite:///") or store.is_file():
        found = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        return f"{base}/#/experiments"
    order = quote(f"metrics.`{HEADLINE_METRIC}`")
    return (
        f"{base}/#/experiments/{found.experiment_id}/runs"
        f"?orderByKey={order}&orderByAsc=false&compareRunsMode=TABLE"
    )


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while it is created and the experiment found.

    Stages of parallel experiments (`dvc queue start -j 2`) start together: on a new store both ran
    MLflow's schema migrations and one failed (`table _alembic_tmp_experiments already exists`,
    measured), and both would create the experiment. A server store handles that itself.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    store = Path(uri.removeprefix("sqlite:///"))
    with open(store.with_name(store.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def experiment_name() -> str | None:
    """The DVC experiment this process runs in (`dvc exp run`, also --temp and --queue), or None.

    DVC sets DVC_EXP_NAME for every experiment run (a generated name when none is given) and
    never for `dvc repro`: experiments are logged and compared, but never move registry aliases.
    """
    return os.environ.get("DVC_EXP_NAME") or None


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


def data_kind(synthetic: bool) -> str:
    """The one label for the kind of data a run or model saw."""
    return "synthetic-demo" if synthetic else "user-data"


def run_name(base: str) -> str:
    """`base`, or `<experiment>/<base>` inside a DVC experiment, so a sweep's runs tell apart."""
    experiment = experiment_name()
    return f"{experiment}/{base}" if experiment else base


def run_tags(stage: str, synthetic: bool) -> dict[str, str]:
    """Tags that tie a run to its code, its DVC stage (and experiment) and the data it saw."""
    commit = git_commit()
    tags = {
        "git_commit": commit,
        "dvc_stage": stage,
        "data_kind": data_kind(synthetic),
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
    }
    experiment = experiment_name()
    if experiment:
        tags["dvc_experiment"] = experiment
    return tags
