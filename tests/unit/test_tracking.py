"""Where runs land and how they are named, in a plain `dvc repro` and inside a DVC experiment."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest

from pipeline import tracking
from tests.factories import enter_project

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def outside_dvc(monkeypatch, tmp_path):
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_store_is_the_projects_absolute_path(outside_dvc):
    assert tracking.tracking_uri() == f"sqlite:///{outside_dvc.resolve() / 'mlflow.db'}"
    assert tracking.artifact_root() == (outside_dvc.resolve() / "mlartifacts").as_uri()


def test_an_experiments_temporary_copy_tracks_to_the_original_project(outside_dvc, monkeypatch):
    project = outside_dvc / "project"
    copy = outside_dvc / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)  # DVC runs a queued experiment's stages here ...
    monkeypatch.setenv("DVC_ROOT", str(project))  # ... and names the original repository
    assert tracking.project_root() == project.resolve()
    assert tracking.tracking_uri() == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert Path(tracking.artifact_root().removeprefix("file://")).parent == project.resolve()


def test_mlflow_tracking_uri_still_wins(outside_dvc, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(outside_dvc))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.tracking_uri() == "http://mlflow.internal:5000"


def test_runs_are_named_and_tagged_with_the_dvc_experiment(outside_dvc, monkeypatch):
    assert tracking.experiment_name() is None
    assert tracking.run_name("resnet50") == "resnet50"
    assert "dvc_experiment" not in tracking.run_tags("train_resnet50", True)
    monkeypatch.setenv("DVC_EXP_NAME", "lucid-lamb")
    assert tracking.experiment_name() == "lucid-lamb"
    assert tracking.run_name("resnet50") == "lucid-lamb/resnet50"
    assert tracking.run_tags("train_resnet50", True)["dvc_experiment"] == "lucid-lamb"


@pytest.mark.slow
def test_parallel_experiments_share_a_new_store_without_a_migration_race(outside_dvc):
    """`dvc queue start -j N` starts N stages at once on a store that may not exist yet.

    Without the lock, two processes failed together in 2 of 3 trials and one of them in the third.
    """
    code = "from pipeline import tracking; print(tracking.setup('sweep'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env |= {"DVC_ROOT": str(outside_dvc), "PYTHONPATH": str(ROOT)}
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=outside_dvc,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in starts]
    assert all(code == 0 for code, _, _ in results), [err[-500:] for _, _, err in results]
    assert len({out.strip() for _, out, _ in results}) == 1  # one experiment, the same id


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame) -> pd.DataFrame:
        return model_input


def _project_with_a_run(monkeypatch, root: Path) -> tuple[str, str]:
    """A project folder whose store holds a run with an artifact and a registered LoggedModel."""
    root.mkdir()
    enter_project(monkeypatch, root)
    tracking.setup("moving")
    with mlflow.start_run() as run:
        mlflow.log_text("kept", "note.txt")
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[])
    version = mlflow.register_model(info.model_uri, "echo").version
    return run.info.run_id, f"models:/echo/{version}"


def _reopen(monkeypatch, root: Path) -> None:
    for name in ("DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    enter_project(monkeypatch, root)
    tracking.setup("moving")


@pytest.mark.slow
def test_a_moved_project_finds_its_artifacts_and_writes_new_ones_beside_its_store(
    tmp_path, monkeypatch
):
    """A real move: MLflow stores absolute artifact URIs, so without follow_move the old run's
    artifacts and the registered model point into a folder that no longer exists."""
    old, new = tmp_path / "old", tmp_path / "new"
    run_id, model_uri = _project_with_a_run(monkeypatch, old)
    monkeypatch.chdir(tmp_path)
    shutil.move(old, new)
    _reopen(monkeypatch, new)

    assert (
        mlflow.get_experiment_by_name("moving").artifact_location
        == (new.resolve() / "mlartifacts").as_uri()
    )
    note = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/note.txt", dst_path=tmp_path)
    assert Path(note).read_text() == "kept"
    assert mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"x": [1]}))["x"][0] == 1
    with mlflow.start_run() as run:
        mlflow.log_text("new", "note.txt")
    assert run.info.artifact_uri.startswith((new.resolve() / "mlartifacts").as_uri() + "/")
    assert not old.exists()  # nothing was written into the old folder


@pytest.mark.slow
def test_a_copied_project_writes_into_its_own_folder_and_leaves_the_original_alone(
    tmp_path, monkeypatch
):
    original, copy = tmp_path / "original", tmp_path / "copy"
    _project_with_a_run(monkeypatch, original)
    shutil.copytree(original, copy)
    _reopen(monkeypatch, copy)
    with mlflow.start_run() as run:
        mlflow.log_text("copy", "note.txt")
    assert Path(urlparse(run.info.artifact_uri).path).is_relative_to(copy.resolve())
    assert not (original / "mlartifacts" / run.info.run_id).exists()

    _reopen(monkeypatch, original)  # the original's store never saw the copy
    assert tracking.follow_move(tracking.tracking_uri()) is None
    assert (
        mlflow.get_experiment_by_name("moving").artifact_location
        == (original.resolve() / "mlartifacts").as_uri()
    )


def test_the_manifest_is_logged_as_a_local_dataset_without_a_warning(tmp_path, monkeypatch):
    """A bare path matches two of MLflow's source types, which warned on every training run."""
    from pipeline import train

    enter_project(monkeypatch, tmp_path)
    manifest = Path("data/prepared/manifest.csv")
    manifest.parent.mkdir(parents=True)
    manifest.write_text("path,label,split,sha256\na.png,benign,train,0\n")
    tracking.setup("datasets")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mlflow.start_run() as run:
            train._log_dataset(manifest)
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.source_type == "local"
    assert json.loads(logged.dataset.source) == {"uri": "data/prepared/manifest.csv"}


def test_make_uis_link_opens_the_runs_table_with_the_headline_columns(tmp_path, monkeypatch):
    """MLflow 3 keeps chosen columns in the browser: the link opens the shared view that setup
    writes as an experiment tag, so any browser sees the headline metrics as columns."""
    enter_project(monkeypatch, tmp_path)
    experiment_id = tracking.setup("linked")
    url = tracking.runs_view_url("http://127.0.0.1:5000", "linked")
    assert (
        url == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
        "?workflowType=machine_learning&viewStateShareKey=headline"
    )
    tags = mlflow.get_experiment(experiment_id).tags
    state = json.loads(tags["mlflow.sharedViewState.headline"])
    assert state["orderByKey"] == "metrics.`val_macro_f1`"
    assert state["orderByAsc"] is False
    metrics = [f"metrics.`{name}`" for name in ("val_macro_f1", "val_sens", "val_spec", "val_auc")]
    assert state["selectedColumns"] == metrics
    # right after the run's name and date, narrow enough for the ~700 px MLflow's Assistant
    # panel leaves at 1280 px (seen in test_mlflow_view)
    assert state["columnOrder"][2:6] == metrics
    assert 73 + sum(state["columnWidths"].values()) <= 698 - 15
    assert tracking.runs_view_url("http://h", "never-set-up") == "http://h/#/experiments"


def test_what_the_pipeline_writes_does_not_make_the_commit_dirty(outside_dvc):
    git = ("git", "-c", "user.email=t@t", "-c", "user.name=t")
    (outside_dvc / "reports").mkdir()
    for name in ("dvc.lock", "reports/test.md", "params.yaml"):
        (outside_dvc / name).write_text("first\n")
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = tracking.git_commit()
    (outside_dvc / "dvc.lock").write_text("after a stage\n")
    (outside_dvc / "reports/test.md").write_text("rewritten by evaluate\n")
    assert tracking.git_commit() == head
    assert not head.endswith("-dirty")
    (outside_dvc / "params.yaml").write_text("changed by hand\n")
    assert tracking.git_commit() == f"{head}-dirty"


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "not a database"])
def test_serving_a_registered_model_from_a_broken_store_is_one_line_naming_it(
    tmp_path, monkeypatch, capsys, damage
):
    """Issue 30: `make serve` on a 0-byte mlflow.db made it a new empty store; a truncated one
    gave a sqlite3 traceback. A folder model needs no store and is not held up by one."""
    from pipeline import serve

    enter_project(monkeypatch, tmp_path)
    store = tmp_path / "mlflow.db"
    content = {"empty": b"", "not a database": b"PHI? no: just text\n" * 50}
    if damage == "missing":
        store.unlink()
    elif damage == "truncated":
        store.write_bytes(store.read_bytes()[:5000])
    else:
        store.write_bytes(content[damage])
    before = store.read_bytes() if store.exists() else None
    with pytest.raises(tracking.UserError, match=f"MLflow store {store}: .*dvc repro -f select"):
        tracking.store_uri_for("models:/tumor-classifier@champion")
    assert tracking.store_uri_for(tmp_path / "a-release-folder")  # no store needed
    capsys.readouterr()  # the first test of a process makes the empty store enter_project copies
    assert serve.main(["--model", "models:/tumor-classifier@champion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"serve: MLflow store {store}: ")
    assert (store.read_bytes() if store.exists() else None) == before  # nothing made in its place
