"""Selection looks at validation metrics only, explains itself, and registers the winner."""

import json

import keras
import mlflow
import pytest

from pipeline import select
from pipeline.config import parse_params
from pipeline.errors import UserError
from tests.factories import enter_project, make_prepared


def metrics(val_f1, test_f1, val_sens=0.8, threshold=0.3):
    def entry(value):
        return {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}

    return {
        "val": {
            "macro_f1": entry(val_f1),
            "malignant_sensitivity": entry(val_sens),
            "operating_point": {"threshold": threshold, "sensitivity": 0.9, "specificity": 0.7},
        },
        "test": {"macro_f1": entry(test_f1), "malignant_sensitivity": entry(0.5)},
    }


def test_the_winner_is_chosen_on_validation_even_when_test_disagrees():
    found = {"densenet121": metrics(0.70, 0.95), "resnet50": metrics(0.80, 0.40)}
    winner, reason = select.choose(found, "macro_f1")
    assert winner == "resnet50"
    assert "higher validation macro_f1" in reason


def test_a_tie_goes_to_the_higher_malignant_sensitivity():
    found = {"densenet121": metrics(0.7, 0.7, val_sens=0.6), "resnet50": metrics(0.7, 0.7, 0.9)}
    winner, reason = select.choose(found, "macro_f1")
    assert winner == "resnet50" and "tied" in reason


def test_an_unknown_selection_metric_names_the_parameter():
    found = {"densenet121": metrics(0.7, 0.7), "resnet50": metrics(0.8, 0.8)}
    with pytest.raises(UserError, match="select.metric: 'auc'"):
        select.choose(found, "auc")


@pytest.fixture
def project(tmp_path, monkeypatch):
    uri = enter_project(monkeypatch, tmp_path)
    make_prepared(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("t")
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(
        inputs,
        keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)),
    )
    for arch, f1 in [("densenet121", 0.6), ("resnet50", 0.8)]:
        folder = tmp_path / "models" / arch
        folder.mkdir(parents=True)
        model.save(folder / "model.keras")
        (folder / "classes.json").write_text(json.dumps(["benign", "malignant", "normal"]))
        with mlflow.start_run() as run:
            local = tmp_path / f"mlflow-{arch}"
            mlflow.keras.save_model(model, str(local))
            mlflow.log_artifacts(str(local), "model")
        (folder / "run.json").write_text(json.dumps({"run_id": run.info.run_id}))
        report = tmp_path / "reports" / "evaluate" / arch
        report.mkdir(parents=True)
        (report / "metrics.json").write_text(json.dumps(metrics(f1, 0.5)))
    return tmp_path


def test_the_winner_is_registered_as_challenger_with_its_evidence(project):
    selection = select.run(parse_params({"mlflow": {"experiment": "t"}}))
    assert selection["winner"] == "resnet50"
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("tumor-classifier", "challenger")
    assert str(version.version) == selection["version"]
    assert version.tags["arch"] == "resnet50"
    assert version.tags["val_macro_f1"] == "0.8000"
    assert version.tags["val_macro_f1_ci95"] == "[0.7000, 0.9000]"
    assert float(version.tags["operating_point_threshold"]) == pytest.approx(0.3)
    assert len(version.tags["manifest_sha256"]) == 64
    assert "Research use only" in version.description or "research" in version.description.lower()
    written = json.loads((project / "reports" / "selection.json").read_text())
    assert written["reason"].startswith("higher validation macro_f1")
    assert (project / "models" / "selected" / "model.keras").is_file()
    assert written["operating_point_threshold"] == pytest.approx(0.3)  # served from models/selected
    assert (project / "reports" / "model_card.md").read_text() == version.description


def test_missing_evaluation_says_to_run_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert select.main([]) == 2
