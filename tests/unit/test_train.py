"""Training writes a self-contained model, its history, and one fully tracked MLflow run."""

import dataclasses
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model
from sklearn.metrics import f1_score

from pipeline import augment, paths, train
from pipeline.datasets import load_set
from pipeline.paths import PREPARED
from tests.factories import enter_project, make_prepared, project_params

TINY = {
    "prepare": {"image_size": 32},
    "train": {
        "batch_size": 8,
        "run_eagerly": True,  # no graph tracing of ResNet50/DenseNet121: seconds, not minutes
        "schedule": "cosine",
        "backbones": {"resnet50": {"epochs": 2}, "densenet121": {"epochs": 1}},
    },
    "mlflow": {"experiment": "unit-test"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        make_prepared(root, per_split={"train": 4, "val": 2, "test": 2})
        params = project_params(TINY)
        augment.run(params)
        summary = train.run(params, "resnet50")
        yield root, params, summary


@pytest.mark.slow  # trains
def test_model_and_run_record_are_written(trained):
    root, _, _ = trained
    folder = root / paths.model_dir("resnet50")
    model = keras.saving.load_model(folder / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 3)).astype("float32")
    assert model.predict(images, verbose=0).shape == (3, 3)
    assert getattr(model, "optimizer", None) is None  # served, never resumed: no optimizer state
    # the classes travel in params.yaml and the release, not in a file nothing reads
    assert {f.name for f in folder.iterdir()} == {"model.keras", "run.json"}
    assert set(json.loads((folder / "run.json").read_text())) == {"run_id", "experiment_id"}


@pytest.mark.slow  # trains
def test_history_has_one_row_per_epoch_with_whole_val_set_macro_f1(trained):
    root, _, summary = trained
    history = pd.read_csv(root / "reports/train/resnet50/history.csv")
    assert list(history.epoch) == [1, 2]  # as Keras prints them: "Epoch 1/2"
    best_row = history.loc[history.val_macro_f1.idxmax()]
    assert summary["best_epoch"] == best_row.epoch  # the epoch Keras showed as "Epoch k/2"
    for column in ("loss", "accuracy", "val_loss", "val_macro_f1", "learning_rate"):
        assert history[column].notna().all(), column
    assert 0 <= summary["val_macro_f1"] <= 1
    assert summary["val_macro_f1"] == history.val_macro_f1.max()
    assert history.learning_rate[1] < history.learning_rate[0]  # cosine decay within the phase
    assert (root / "reports/train/resnet50/curves.png").stat().st_size > 0


@pytest.mark.slow  # trains
def test_committed_training_reports_hold_nothing_that_changes_between_reruns(trained):
    """Timings differ on every run of the same code: they belong to MLflow, not to git."""
    root, _, summary = trained
    history = pd.read_csv(root / "reports/train/resnet50/history.csv")
    saved = json.loads((root / "reports/train/resnet50/metrics.json").read_text())
    assert saved == summary
    for names in (list(history.columns), list(saved)):
        assert not [n for n in names if "second" in n or "run_id" in n], names


@pytest.mark.slow  # trains
def test_mlflow_run_holds_params_epoch_metrics_tags_and_the_model(trained):
    root, _, _ = trained
    run_id = json.loads((root / "models/trained/resnet50/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.data.params["arch"] == "resnet50"
    assert run.data.params["image_size"] == "32"
    assert run.data.tags["dvc_stage"] == "train@resnet50"  # the stage's name in dvc.yaml
    assert run.data.tags["data_kind"] in {"synthetic-demo", "user-data"}
    assert run.info.run_name == "resnet50"  # `<dvc experiment>/resnet50` inside `dvc exp run`
    steps = mlflow.MlflowClient().get_metric_history(run_id, "val_macro_f1")
    assert [m.step for m in steps] == [1, 2]
    assert {"best_epoch", "epochs_run", "train_seconds", "best_val_macro_f1"} <= set(
        run.data.metrics
    )
    # the first step's tracing and compilation, apart from the epochs' images/s
    assert 0 < run.data.metrics["compile_seconds"] < run.data.metrics["train_seconds"]
    assert not [k for k in run.data.metrics if k.startswith("best_best")]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "manifest"
    assert len(dataset.dataset.digest) == 16
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    (logged,) = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    assert logged.name == "model"  # a LoggedModel: the Models tab lists it
    model = mlflow.keras.load_model(f"models:/{logged.model_id}")
    assert model.output_shape == (None, 3)
    local = mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}")
    mlmodel = Model.load(local)
    assert set(mlmodel.flavors) == {"keras", "python_function"}  # plain Keras: no serving code
    assert not (Path(local) / "code").exists()
    assert tuple(mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 32, 32, 3)


@pytest.mark.slow  # trains
def test_the_saved_model_is_the_best_epoch_it_reports(trained):
    root, params, summary = trained
    model = keras.saving.load_model(root / "models/trained/resnet50/model.keras")
    val = load_set(root / PREPARED, params.classes, split="val")
    predicted = model.predict(val.images, batch_size=8, verbose=0).argmax(axis=1)
    assert f1_score(val.labels, predicted, average="macro") == pytest.approx(
        summary["val_macro_f1"]
    )


@pytest.mark.slow  # trains
def test_same_seed_same_validation_score(trained, tmp_path, monkeypatch):
    root, params, summary = trained
    enter_project(monkeypatch, tmp_path)
    make_prepared(tmp_path, per_split={"train": 4, "val": 2, "test": 2})
    augment.run(params)
    again = train.run(dataclasses.replace(params), "resnet50")
    assert again["val_macro_f1"] == pytest.approx(summary["val_macro_f1"], abs=1e-6)


def test_an_arch_not_in_train_backbones_is_one_line_naming_them(capsys):
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert train.main(["--arch", "vgg16", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --arch: unknown backbone 'vgg16'; train.backbones has [")
    assert err.count("\n") == 1


def test_params_default_is_usable():
    assert project_params().train.arch("densenet121").epochs >= 1


def test_mixed_precision_is_set_for_one_training_only_even_when_it_fails():
    assert keras.mixed_precision.global_policy().name == "float32"
    seen = []

    def failing_training():
        with train._dtype_policy("mixed_bfloat16"):
            seen.append(keras.mixed_precision.global_policy().name)
            raise RuntimeError("training failed")

    with pytest.raises(RuntimeError):
        failing_training()
    assert seen == ["mixed_bfloat16"]
    assert keras.mixed_precision.global_policy().name == "float32"
