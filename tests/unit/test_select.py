"""Selection looks at validation metrics only, explains itself, and registers the winner."""

import json

import mlflow
import pytest

from pipeline import paths, select, tracking
from pipeline.errors import UserError
from pipeline.serving.classifier import load_classifier
from pipeline.serving.engine import OnnxEngine
from pipeline.serving.release import INT8_FILE, ONNX_FILE, read_release
from pipeline.serving.rule import DecisionRule
from tests.factories import CLASSES, enter_project, make_prepared, mini_classifier, project_params


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
    assert winner == "resnet50"
    assert "tied" in reason


def test_an_unknown_selection_metric_names_the_parameter():
    found = {"densenet121": metrics(0.7, 0.7), "resnet50": metrics(0.8, 0.8)}
    with pytest.raises(UserError, match="select.metric: 'auc'"):
        select.choose(found, "auc")


@pytest.fixture
def project(tmp_path, monkeypatch):
    enter_project(monkeypatch, tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    make_prepared(tmp_path)
    tracking.setup("t")
    for arch, f1, threshold in [("densenet121", 0.6, 0.2), ("resnet50", 0.8, 0.3)]:
        evaluated(tmp_path, arch, f1, threshold)
    return tmp_path


def evaluated(root, arch: str, f1: float, threshold: float) -> None:
    """What train and evaluate leave for select about one backbone."""
    folder = root / paths.model_dir(arch)
    folder.mkdir(parents=True)
    mini_classifier().save(folder / "model.keras")
    with mlflow.start_run() as run:
        mlflow.set_tag("arch", arch)
    (folder / "run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    report = root / paths.evaluate_dir(arch)
    report.mkdir(parents=True)
    (report / "metrics.json").write_text(json.dumps(metrics(f1, 0.5)))
    rule = DecisionRule(CLASSES, threshold=threshold, temperature=1.5, method="lowest ...",
                        chosen_on=f"validation of {arch}")  # fmt: skip
    (report / "rule.json").write_text(json.dumps(rule.to_dict()))


PARAMS = {"mlflow": {"experiment": "t"}}


def test_the_winner_is_released_with_its_rule_and_registered_as_challenger(project):
    selection = select.run(project_params(PARAMS))
    assert selection["winner"] == "resnet50"
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("tumor-classifier", "challenger")
    assert str(version.version) == selection["version"] == "1"
    release = read_release(project / "models" / "selected")
    # the rule evaluate fitted for the winner, copied: it lives in the artifact
    assert release.rule == DecisionRule.from_dict(
        json.loads((project / "reports/evaluate/models/resnet50/rule.json").read_text())
    )
    assert release.rule.chosen_on == "validation of resnet50"
    assert release.provenance["version"] == "1"
    assert release.provenance["arch"] == "resnet50"
    assert len(release.provenance["manifest_sha256"]) == 64
    assert version.tags["arch"] == "resnet50"
    assert version.tags["val_macro_f1"] == "0.8000"
    assert "operating_point_threshold" not in version.tags
    assert len(version.tags) <= 6
    assert "Research use only" in client.get_registered_model("tumor-classifier").description
    written = json.loads((project / "reports" / "selection.json").read_text())
    assert written["reason"].startswith("higher validation macro_f1")
    assert "run_id" not in written
    assert "version" not in written
    assert written["paired_comparison"]["note"].startswith("no paired comparison")
    committed = (project / "reports" / "model_card.md").read_text()
    assert "`tumor-classifier` version 1 (`@challenger` when selected)" in version.description
    # a rerun registers version 2
    assert "`tumor-classifier` (`@challenger` when selected)" in committed
    assert "version 1" not in committed


def test_the_registered_model_serves_the_rule_that_select_fixed(project):
    select.run(project_params(PARAMS))
    served = load_classifier("models:/tumor-classifier@challenger")
    assert served.release.rule == read_release(project / "models" / "selected").rule
    assert served.release.identity()["version"] == "1"


def test_every_release_carries_model_onnx_checked_against_keras_on_validation(project):
    select.run(project_params(PARAMS))
    release = read_release(project / "models" / "selected")
    assert (release.folder / ONNX_FILE).is_file()
    assert release.onnx["served"] == ONNX_FILE
    assert release.onnx["int8"] is None  # select.int8 is off by default
    parity = release.onnx["parity"]
    assert parity["split"] == "validation"
    assert parity["images"] == 9  # the validation split of the project fixture
    assert parity["max_abs_probability_difference"] <= parity["tolerance"] == 1e-4
    registered = load_classifier("models:/tumor-classifier@challenger", engine="auto")
    assert isinstance(registered.engine, OnnxEngine)


def test_with_int8_on_the_release_records_the_comparison_and_serves_what_passed(project):
    select.run(project_params({**PARAMS, "select": {"register": False, "int8": True}}))
    release = read_release(project / "models" / "selected")
    int8 = release.onnx["int8"]
    assert int8["calibration"]["split"] == "train"
    assert int8["images"] == 9
    assert release.onnx["served"] == (INT8_FILE if int8["served"] else ONNX_FILE)
    assert (release.folder / INT8_FILE).is_file() == int8["served"]
    assert release.served_onnx == release.folder / release.onnx["served"]


def test_an_experiment_logs_its_release_but_moves_no_alias(project, monkeypatch):
    select.run(project_params(PARAMS))
    monkeypatch.setenv("DVC_EXP_NAME", "weaker-wren")
    (project / paths.evaluate_dir("resnet50") / "metrics.json").write_text(
        json.dumps(metrics(0.3, 0.5))
    )
    selection = select.run(project_params(PARAMS))
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("tumor-classifier", "challenger").version) == "1"
    assert len(client.search_model_versions("name='tumor-classifier'")) == 1
    assert selection["version"] is None
    assert selection["alias"] is None
    release = read_release(project / "models" / "selected")
    assert release.provenance["dvc_experiment"] == "weaker-wren"
    assert release.identity()["version"] == "unregistered"
    logged = mlflow.search_logged_models(filter_string="name = 'release'", output_format="list")
    assert any(m.tags.get("dvc_experiment") == "weaker-wren" for m in logged)


def test_registration_can_be_turned_off(project):
    selection = select.run(project_params({**PARAMS, "select": {"register": False}}))
    assert selection["version"] is None
    assert mlflow.MlflowClient().search_registered_models() == []


def test_the_written_version_matches_the_registry_after_a_deleted_version(project):
    select.run(project_params(PARAMS))
    select.run(project_params(PARAMS))
    mlflow.MlflowClient().delete_model_version("tumor-classifier", "2")
    selection = select.run(project_params(PARAMS))  # the registry skips the deleted number
    alias = mlflow.MlflowClient().get_model_version_by_alias("tumor-classifier", "challenger")
    assert selection["version"] == str(alias.version) != "2"
    assert (
        read_release(project / "models" / "selected").provenance["version"] == selection["version"]
    )


def test_a_rule_that_is_not_one_is_refused_naming_its_file(project):
    path = project / "reports/evaluate/models/resnet50/rule.json"
    path.write_text(json.dumps({"classes": list(CLASSES), "threshold": 3.0}))
    with pytest.raises(UserError, match=r"resnet50/rule.json: not a decision rule.*evaluate"):
        select.run(project_params(PARAMS))
    path.write_text(json.dumps({"classes": ["cyst", "malignant"]}))
    with pytest.raises(UserError, match=r"rule.json: the rule's classes \['cyst', 'malignant'\]"):
        select.run(project_params(PARAMS))


def test_missing_evaluation_says_to_run_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert select.main([]) == 2


def test_a_third_backbone_in_params_is_a_candidate(project):
    """Backbones are data: its params entry (and what train and evaluate wrote) makes it one."""
    evaluated(project, "tinynet", 0.9, 0.25)
    schedule = dict(vars(project_params().train.backbones["resnet50"]))
    params = project_params(PARAMS | {"train": {"backbones": {"tinynet": schedule}}})
    selection = select.run(params)
    assert selection["winner"] == "tinynet"
    assert set(selection["validation"]) == {"densenet121", "resnet50", "tinynet"}
    assert "resnet50" in selection["reason"]  # the runner-up it beat
