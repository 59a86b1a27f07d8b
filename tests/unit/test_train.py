"""Training writes a self-contained model, its history, and one fully tracked MLflow run."""

import dataclasses
import json

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model

from pipeline import augment, train
from pipeline.config import Params, parse_params
from tests.factories import enter_project, make_prepared

TINY = {
    "prepare": {"image_size": 32},
    "train": {
        "batch_size": 8,
        "schedule": "cosine",
        "resnet50": {"epochs": 2},
        "densenet121": {"epochs": 1},
    },
    "mlflow": {"experiment": "unit-test"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        make_prepared(root, per_split={"train": 4, "val": 2, "test": 2})
        params = parse_params(TINY)
        augment.run(params)
        summary = train.run(params, "resnet50")
        yield root, params, summary


def test_model_and_run_record_are_written(trained):
    root, params, _ = trained
    folder = root / "models" / "resnet50"
    model = keras.saving.load_model(folder / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 3)).astype("float32")
    assert model.predict(images, verbose=0).shape == (3, 3)
    assert json.loads((folder / "classes.json").read_text()) == list(params.classes)
    assert set(json.loads((folder / "run.json").read_text())) == {"run_id", "experiment_id"}


def test_history_has_one_row_per_epoch_with_whole_val_set_macro_f1(trained):
    root, _, summary = trained
    history = pd.read_csv(root / "reports/train/resnet50/history.csv")
    assert list(history.epoch) == [0, 1]
    for column in (
        "loss",
        "accuracy",
        "val_loss",
        "val_macro_f1",
        "learning_rate",
        "images_per_second",
    ):
        assert history[column].notna().all(), column
    assert 0 <= summary["val_macro_f1"] <= 1
    assert summary["val_macro_f1"] == history.val_macro_f1.max()
    assert history.learning_rate[1] < history.learning_rate[0]  # cosine decay within the phase
    assert (root / "reports/train/resnet50/curves.png").stat().st_size > 0


def test_mlflow_run_holds_params_epoch_metrics_tags_and_the_model(trained):
    root, _, _ = trained
    run_id = json.loads((root / "models/resnet50/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.data.params["arch"] == "resnet50"
    assert run.data.params["image_size"] == "32"
    assert run.data.tags["dvc_stage"] == "train_resnet50"
    assert run.data.tags["data_kind"] in {"synthetic-demo", "user-data"}
    steps = mlflow.MlflowClient().get_metric_history(run_id, "val_macro_f1")
    assert [m.step for m in steps] == [0, 1]
    model = mlflow.keras.load_model(f"runs:/{run_id}/model")
    assert model.output_shape == (None, 3)
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model")
    example = Model.load(local).load_input_example(local)
    assert list(example) == ["image"] and len(example["image"]) == 1  # a synthetic scan


def test_same_seed_same_validation_score(trained, tmp_path, monkeypatch):
    root, params, summary = trained
    enter_project(monkeypatch, tmp_path)
    make_prepared(tmp_path, per_split={"train": 4, "val": 2, "test": 2})
    augment.run(params)
    again = train.run(dataclasses.replace(params), "resnet50")
    assert again["val_macro_f1"] == pytest.approx(summary["val_macro_f1"], abs=1e-6)


def test_unknown_arch_is_refused_by_the_command_line():
    with pytest.raises(SystemExit):
        train.main(["--arch", "vgg16"])


def test_params_default_is_usable():
    assert Params().train.arch("densenet121").epochs >= 1
