"""MLflow wiring: where the tracking store lives and how a run is tagged.

The store defaults to `sqlite:///<project root>/mlflow.db`, resolved to an absolute path because
`dvc exp run --temp/--queue` runs stages in a copy of the repository where a relative URI would
land in the copy: there the project root is `DVC_ROOT`, which DVC sets for every stage command to
the repository the experiment was queued from. `MLFLOW_TRACKING_URI` overrides it (a team server,
a test's own store).

A SQLite store keeps its artifacts beside it (`mlartifacts/`), and MLflow records their locations
as absolute URIs: it resolves even a relative `artifact_location` or `--default-artifact-root`
against the working directory when it stores it (mlflow/mlflow#7670), and `mlflow-artifacts:`
URIs need an HTTP tracking server. So a moved or copied project's store would still point into the
old folder; `follow_move` repoints it once, the first time the store is opened from its new folder.

The commands that only read the store (`promote`, `rollback`, `serve` and `predict` of a
registered model) open it through `existing_store_uri`: a missing, empty (0 bytes) or damaged
`mlflow.db` is one line naming the file and the fix (`dvc repro -f select`), never a traceback and
never a new empty store created in its place (which `dvc repro`, up to date, would not refill).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import mlflow

from pipeline import paths
from pipeline.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# MLflow 3's UI opens an experiment on its GenAI (traces) view unless the experiment says it is
# for model development; this tag, set when the project creates the experiment, says so.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The runs table sorted by the headline metric, best first (URL keys of MLflow 3's experiment
# page: orderByKey, orderByAsc, compareRunsMode; mlflow/server/js, experiment page search facets).
HEADLINE_METRIC = "val_macro_f1"
# The columns the runs view opens with: evaluate's headline numbers (reports/evaluate/metrics.json:
# f1, sens, spec, auc) as the training runs carry them. The flag's three are logged again under the
# headline's short names (evaluate_report.log_to_mlflow): their long names share 20 characters
# (`val_operating_point_`), so in a column that fits the screen all three read "val_operating…".
HEADLINE_COLUMNS = (HEADLINE_METRIC, "val_sens", "val_spec", "val_auc")
# Column widths (px) of the runs view. At 1280 px MLflow 3's sidebar and its Assistant panel, which
# it opens by itself in a fresh browser on a local server (no setting turns that off), leave the
# table 698 px: row checkboxes 73, run name 125 ("densenet121"), created 140 ("58 minutes ago"),
# the sorted metric 110 (its name and the sort arrow) and three more of 78 fit (683, and room for
# a scrollbar);
# duration comes after them. Column ids as the UI's ag-grid names them (mlflow/server/js).
RUN_NAME_COLUMN = "attributes.`Run Name`"
CREATED_COLUMN = "runDateAndNestInfo"
DURATION_COLUMN = "duration"
COLUMN_WIDTHS = {RUN_NAME_COLUMN: 125, CREATED_COLUMN: 140}
SORTED_COLUMN_WIDTH = 110
METRIC_COLUMN_WIDTH = 78
# MLflow 3's UI keeps chosen columns in the browser, not in the URL; a "shared view" is an
# experiment tag `mlflow.sharedViewState.<key>` holding the view state (search facets and UI
# state as JSON) that `?viewStateShareKey=<key>` opens (mlflow/server/js, experiment page).
SHARED_VIEW_TAG = "mlflow.sharedViewState."
# The UI's switch between its GenAI and model-training views is kept in the browser; this URL
# parameter sets it (`workflowType`, mlflow/server/js): the link opens the model-training view.
WORKFLOW = "machine_learning"
RUNS_VIEW_KEY = "headline"
ARTIFACTS_DIR = "mlartifacts"
# Where MLflow 3 stores artifact locations (its SQL schema): (table, column, extra condition).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location", ""),
    ("runs", "artifact_uri", ""),
    ("logged_models", "artifact_location", ""),
    ("model_versions", "storage_location", ""),
    ("model_versions", "source", ""),
    ("trace_tags", "value", " AND key = 'mlflow.artifactLocation'"),
)


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
    return ((root or project_root()).resolve() / ARTIFACTS_DIR).as_uri()


def store_uri() -> str:
    """`tracking_uri()`, its SQLite store repointed first if it moved (`follow_move`): for the
    commands that read the store without `setup` (serve, predict, `make ui`)."""
    uri = tracking_uri()
    follow_move(uri)
    return uri


REBUILD = (
    "move it away and run `dvc repro -f select` to register the selected model again "
    "(or restore the file from a backup)"
)


def existing_store_uri() -> str:
    """`store_uri()` for a command that reads what the pipeline registered: a SQLite store that
    is missing, empty or damaged is a UserError naming the file and the fix."""
    uri = tracking_uri()
    check_store(uri)
    follow_move(uri)
    return uri


def store_uri_for(model: str | Path) -> str:
    """The store to load `model` from: checked (`existing_store_uri`) for a registry or run URI,
    which only the store can answer; untouched for a folder, which needs no store."""
    registered = str(model).startswith(("models:/", "runs:/"))
    return existing_store_uri() if registered else tracking_uri()


def check_store(uri: str) -> None:
    """Refuse a SQLite store that is missing, 0 bytes, not a database, damaged, or without
    MLflow's registry tables, in one line (other stores are the server's to check)."""
    store = sqlite_store(uri)
    if store is None:
        return
    if not store.is_file():
        raise UserError(f"MLflow store {store}: not found; run `dvc repro -f select` to make it")
    if store.stat().st_size == 0:
        raise UserError(f"MLflow store {store}: empty (0 bytes), not a database; {REBUILD}")
    try:
        with contextlib.closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as db:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise UserError(f"MLflow store {store}: damaged ({exc}); {REBUILD}") from None
    if verdict != "ok":
        raise UserError(f"MLflow store {store}: damaged (integrity check failed); {REBUILD}")
    if "registered_models" not in tables:
        raise UserError(f"MLflow store {store}: holds no MLflow registry; {REBUILD}")


@contextlib.contextmanager
def promotion_lock() -> Iterator[None]:
    """Hold the project's promotion lock (beside a SQLite store, else at the project root): two
    `make promote` at once both ran the gate and both recorded replacing the same champion. A
    second one waits, and says so, then finds the alias already moved."""
    store = sqlite_store(tracking_uri())
    path = (
        store.with_name(store.name + ".promote.lock") if store else project_root() / ".promote.lock"
    )
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another promotion or rollback to finish ({path})", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # released when the file closes


def sqlite_store(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI, None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def follow_move(uri: str) -> str | None:
    """Repoint a SQLite store's artifact locations after its folder was moved or copied.

    The folder the store was created in is read from the project experiment's artifact location
    (`file://<folder>/mlartifacts`, written by `setup`). When the store now lives elsewhere, every
    stored location under the old folder (experiments, runs, LoggedModels, model versions, traces)
    is rewritten to the same path under the new one, in one transaction: new runs write beside
    the store, not into the old checkout, and the artifacts copied or moved with it are found.
    A store whose artifacts stayed behind in a folder that still exists is left alone.
    Returns the old folder when it rewrote, else None (other stores, nothing moved, a new store).
    """
    store = sqlite_store(uri)
    if store is None or not store.is_file():
        return None
    new = store.resolve().parent
    try:
        return _repoint(store, new)
    except sqlite3.DatabaseError as exc:  # a damaged file: one line, not a traceback
        raise UserError(f"MLflow store {store}: damaged ({exc}); {REBUILD}") from None


def _repoint(store: Path, new: Path) -> str | None:
    with contextlib.closing(sqlite3.connect(store, timeout=60)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        if "experiments" not in tables:
            return None  # not migrated yet: MLflow creates it, nothing is recorded
        recorded = {
            Path(unquote(urlparse(location).path)).parent
            for (location,) in db.execute(
                "SELECT artifact_location FROM experiments WHERE artifact_location LIKE ?",
                (f"file://%/{ARTIFACTS_DIR}",),
            )
        }
        if len(recorded) != 1 or recorded == {new}:
            return None  # none of ours, several roots (set by hand: left alone) or not moved
        (old,) = recorded
        if (old / ARTIFACTS_DIR).is_dir() and not (new / ARTIFACTS_DIR).is_dir():
            return None  # the artifacts did not travel with the store: they are still found
        with db:  # one transaction: all rewritten or none
            for table, column, where in _LOCATION_COLUMNS:
                if table not in tables:
                    continue
                for before, after in (
                    (f"{old.as_uri()}/", f"{new.as_uri()}/"),
                    (f"{old}/", f"{new}/"),
                ):
                    db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?{where}",
                        (after, len(before) + 1, len(before), before),
                    )
    print(
        f"MLflow store {store}: moved from {old}; artifact locations now under {new}",
        file=sys.stderr,
    )
    return str(old)


def setup(experiment: str) -> str:
    """Point MLflow at the project's store and return the experiment id (created if new)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # explicit: a registry URI set earlier in-process must not win
    store = sqlite_store(uri)
    with _store_lock(uri):
        follow_move(uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        elif store is not None:
            experiment_id = mlflow.create_experiment(
                experiment, artifact_location=artifact_root(store.resolve().parent),
                tags=EXPERIMENT_KIND,
            )  # fmt: skip
        else:
            experiment_id = mlflow.create_experiment(experiment, tags=EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    mlflow.MlflowClient().set_experiment_tag(
        experiment_id, SHARED_VIEW_TAG + RUNS_VIEW_KEY, json.dumps(runs_view_state())
    )
    return experiment_id


def runs_view_state() -> dict:
    """The runs table's view that `make ui` links to: sorted by validation macro-F1, best first,
    with the headline metrics as its only chosen columns, right after the run's name and date and
    narrow enough to be seen at 1280 px beside MLflow's Assistant panel (beside MLflow's source,
    models and dataset columns they fell off a 1400 px screen)."""
    metrics = [f"metrics.`{name}`" for name in HEADLINE_COLUMNS]  # the UI's canonical column key
    return {
        "orderByKey": metrics[0],
        "orderByAsc": False,
        "selectedColumns": metrics,
        "columnOrder": [RUN_NAME_COLUMN, CREATED_COLUMN, *metrics, DURATION_COLUMN],
        "columnWidths": COLUMN_WIDTHS
        | dict.fromkeys(metrics, METRIC_COLUMN_WIDTH)
        | {metrics[0]: SORTED_COLUMN_WIDTH},
    }


def runs_view_url(base: str, experiment: str) -> str:
    """The MLflow UI link that opens `experiment`'s runs table, sorted by validation macro-F1,
    with the headline metric columns (the shared view `setup` writes), in any browser.

    A fresh browser on `mlflow ui` lands on the GenAI overview; this link goes to the classic
    runs view. The experiments list when the store or the experiment does not exist yet; the
    sorted table without chosen columns for an experiment no stage has opened since.
    """
    uri = tracking_uri()
    store = Path(uri.removeprefix("sqlite:///"))
    found = None
    if not uri.startswith("sqlite:///") or store.is_file():
        found = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        return f"{base}/#/experiments"
    runs = f"{base}/#/experiments/{found.experiment_id}/runs?workflowType={WORKFLOW}"
    if SHARED_VIEW_TAG + RUNS_VIEW_KEY in found.tags:
        return f"{runs}&viewStateShareKey={RUNS_VIEW_KEY}"
    order = quote(f"metrics.`{HEADLINE_METRIC}`")
    return f"{runs}&orderByKey={order}&orderByAsc=false&compareRunsMode=TABLE"


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


# What the pipeline itself rewrites while it runs: a change there says nothing about the code.
PIPELINE_WRITES = ("dvc.lock", str(paths.REPORTS), str(paths.MODELS))


def git_commit() -> str:
    """The current commit (with `-dirty` when the code or params have changes), or `unknown`
    outside git. What the pipeline writes while it runs (dvc.lock after each stage, the committed
    reports) does not count: otherwise every run of `make demo` after its first stage was tagged
    dirty on a clean checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        outputs = [f":(exclude){path}" for path in PIPELINE_WRITES]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs],
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
