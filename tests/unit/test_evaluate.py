"""The evaluate stage: every model on val and test; numbers, plots, MLflow, clear failures."""

from __future__ import annotations

import json
import re

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from pipeline import evaluate, evaluate_report, ledger, metrics, paths, tracking
from pipeline.datasets import ImageSet
from pipeline.errors import UserError
from pipeline.serving.rule import DecisionRule, calibrate
from tests.factories import enter_project, mini_classifier, project_params

CLASSES = ("benign", "malignant", "normal")
SIZE = 32
ARCHS = tuple(project_params().train.backbones)


def write_prepared_set(root, per_split=(("train", 2), ("val", 3), ("test", 4))):
    """data/prepared: PNGs whose brightness and colour depend on the label, and the manifest."""
    rows = []
    rng = np.random.default_rng(0)
    for split, per_class in per_split:
        for k, label in enumerate(CLASSES):
            for i in range(per_class):
                image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
                image[..., k] += np.uint8(120)
                path = f"{split}/{label}/{label}_{i}.png"
                (root / "data/prepared" / path).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "data/prepared" / path), image)
                rows.append({"path": path, "label": label, "split": split, "group": path})
    pd.DataFrame(rows).to_csv(root / "data/prepared/manifest.csv", index=False)
    return pd.DataFrame(rows)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A tiny project: prepared set and two saved models (run.json not yet pointing at a run)."""
    enter_project(monkeypatch, tmp_path)
    manifest = write_prepared_set(tmp_path)
    # augmented data must never be read: make it unreadable
    (tmp_path / "data/augmented").mkdir(parents=True)
    (tmp_path / "data/augmented/manifest.csv").write_text("not,a\nmanifest\n")
    params = project_params(
        {"evaluate": {"bootstrap": 100, "samples_per_class": 2, "gradcam_per_class": 1}}
    )
    for seed, arch in enumerate(ARCHS):
        (tmp_path / paths.model_dir(arch)).mkdir(parents=True)
        mini_classifier(seed).save(tmp_path / paths.model_dir(arch) / "model.keras")
        (tmp_path / paths.model_dir(arch) / "run.json").write_text('{"run_id": "none"}')
        write_history(tmp_path / paths.training_history(arch), epochs=3 + seed)
    return tmp_path, params, manifest


def write_history(path, epochs: int) -> None:
    """train@<arch>'s history.csv as training writes it: one row per epoch from 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rising = np.linspace(0.4, 0.9, epochs)
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "accuracy": rising, "loss": 1 - rising,
                            "val_loss": 1.1 - rising, "val_accuracy": rising - 0.05,
                            "val_macro_f1": rising - 0.1, "learning_rate": 1e-3})  # fmt: skip
    history.to_csv(path, index=False)


@pytest.fixture
def project(inputs):
    """`inputs` plus each model's training run in a private MLflow store."""
    root, params, manifest = inputs
    tracking.setup(params.mlflow.experiment)
    for arch in ARCHS:
        log_training_run(root, arch)
    return root, params, manifest


def log_training_run(root, arch: str) -> None:
    """What training leaves for evaluate: a run with per-epoch metrics, named in run.json."""
    with mlflow.start_run(run_name=arch) as active:
        for epoch in range(3):
            mlflow.log_metric("val_accuracy", 0.3 + 0.1 * epoch, step=epoch)
    run_json = {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id}
    (root / paths.model_dir(arch) / "run.json").write_text(json.dumps(run_json))


def test_stage_writes_every_report_and_logs_to_each_training_run(project):
    root, params, manifest = project
    results = evaluate.run(params)

    for arch in ARCHS:
        out = root / paths.evaluate_dir(arch)
        text = (out / "metrics.json").read_text()
        saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
        assert saved == results[arch]
        for split, n in (("val", 9), ("test", 12)):
            m = saved[split]
            assert m["n"] == n
            for name in metrics.HEADLINE:
                assert set(m[name]) == {"value", "ci_low", "ci_high"}
            assert set(m["per_class"]) == set(CLASSES)
            assert sum(map(sum, m["confusion_matrix"])) == n  # classes x (classes + refused)
            assert [len(row) for row in m["confusion_matrix"]] == [4, 4, 4]
            refused = sum(r["n"] for r in m["refused_by_class"].values())
            assert m["coverage"]["n"] == n - refused
            assert m["answered"]["n"] == n - refused
            assert m["groups"] == n  # the fixture's groups are one image each
            op_keys = {"threshold", "sensitivity", "specificity", "ppv", "npv", "auc", "groups"}
            assert op_keys | {"ppv_at_prevalence", "npv_at_prevalence"} <= set(m["operating_point"])
            assert m["lesions"]["images"] == 2 * n // 3  # benign and malignant, normal left out
            assert {"temperature", "applied", "ece_before", "ece_after", "brier_before",
                    "brier_after", "malignant"} <= set(m["calibration"])  # fmt: skip
            predictions = pd.read_csv(out / f"predictions_{split}.csv")
            expected = manifest[manifest["split"] == split]
            assert predictions["path"].tolist() == expected["path"].tolist()  # never augmented
            assert list(predictions.columns[:4]) == ["path", "label", "predicted", "refer"]
            at = {  # val is what `dvc plots` draws, one file per model; test stays out of it
                plot: root / paths.evaluate_plot(f"{plot}_val", arch)
                if split == "val"
                else out / "test" / f"{plot}_test.csv"
                for plot in ("roc", "reliability")
            }
            roc = pd.read_csv(at["roc"])
            assert list(roc.columns) == ["class", "fpr", "tpr"]
            assert set(roc["class"]) == set(CLASSES)  # one series per class for DVC's template
            reliability = pd.read_csv(at["reliability"])
            series = set(reliability["probabilities"])  # before / after, the served one marked
            t = m["calibration"]["temperature"]
            assert len(series) == (2 if t else 1)
            assert sum(name.endswith("(served)") for name in series) == 1
            answered = m["coverage"]["n"]
            assert reliability.groupby("probabilities")["count"].sum().eq(answered).all()
        # where the count is kept, not the count, which a rerun would change (select's card has it)
        use = saved["test"]["test_use"]
        assert set(use) == {"file", "ledger", "split_sha256", "look"}
        (row,) = [
            r for r in ledger.read_looks() if r["model_sha256"] == use["look"]["model_sha256"]
        ]
        assert row["time_utc"] == use["look"]["time_utc"]  # the look these figures are
        assert saved["test"]["failure_cases"] == saved["test"]["failure_cases"][:5]
        assert saved["val"]["operating_point"]["threshold_ci_low"] is not None
        # threshold chosen on val, the same one applied to test
        threshold = saved["val"]["operating_point"]["threshold"]
        assert saved["test"]["operating_point"]["threshold"] == threshold
        assert saved["val"]["operating_point"]["sensitivity"]["value"] >= 0.9  # target_sensitivity
        # probabilities are the saved model's own, served through the rule evaluate wrote
        rule = DecisionRule.from_dict(json.loads((out / "rule.json").read_text()))
        assert rule.threshold == threshold
        assert rule.ood_threshold == saved["val"]["ood"]["threshold"]
        model = keras.saving.load_model(root / paths.model_dir(arch) / "model.keras")
        test_paths = manifest[manifest["split"] == "test"]["path"]
        images = np.stack([cv2.imread(f"data/prepared/{p}")[..., ::-1] for p in test_paths])
        probabilities = pd.read_csv(out / "predictions_test.csv")[[f"p_{c}" for c in CLASSES]]
        raw = model.predict(images, verbose=0)
        np.testing.assert_allclose(probabilities, calibrate(raw, rule.temperature), atol=1e-5)
        assert {"confusion_counts_val.png", "roc_val.png", "reliability_val.png"} <= {
            p.name for p in (out / "figures").glob("*.png")
        }
        assert {
            "confusion_normalized_test.png",
            "roc_test.png",
            "reliability_test.png",
            "samples_test.png",
            "gradcam_test.png",
        } <= {p.name for p in (out / "test").glob("*.png")}
        assert not list((out / "figures").glob("*test*"))

    # every model in one table per chart: its confusion (rows sum to 1) and its training curves
    confusion = pd.read_csv(root / paths.CONFUSION_SHARES)
    for arch in ARCHS:
        cells = confusion[confusion["model"] == arch]
        matrix = cells["images"].to_numpy().reshape(len(CLASSES), len(CLASSES) + 1)
        assert matrix.tolist() == results[arch]["val"]["confusion_matrix"]
        assert cells.groupby("actual")["share"].sum().round(5).eq(1).all()
    curves = pd.read_csv(root / paths.TRAINING_CURVES)
    assert curves.groupby("model")["epoch"].max().to_dict() == {
        a: 3 + k for k, a in enumerate(ARCHS)
    }
    assert not list((root / paths.EVALUATE_PLOTS).glob("confusion_val/*"))  # no per-model copy
    assert not list(root.glob("reports/evaluate/models/*/test/confusion*.csv"))  # predictions'
    comparison = (root / "reports/evaluate/comparison.md").read_text()
    assert all(arch in comparison for arch in ARCHS)
    assert re.search(r"^\| Macro F1 +\| \d", comparison, re.MULTILINE)
    table = [line for line in comparison.splitlines() if line.startswith("|")]
    assert len({len(line) for line in table}) == 1  # aligned: printed raw by make demo
    assert max(len(line) for line in table) <= 120  # a terminal's width
    assert max(len(line) for line in comparison.splitlines() if not line.startswith("|")) <= 100
    assert "Paired difference" in comparison
    assert "distinguishable" in comparison
    assert "Test" not in comparison.split("\n")[0]  # the development view is validation
    test_report = (root / "reports/evaluate/test.md").read_text()
    assert "Every look at this test split is counted" in test_report
    assert "reports/test_looks.csv" in test_report
    (paired,) = json.loads((root / "reports/evaluate/comparison.json").read_text())["pairs"]
    assert (paired["a"], paired["b"]) == ARCHS
    assert paired["val"]["macro_f1"]["images"] == 9
    assert "p_value" in paired["test"]["mcnemar"]
    headline = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert set(headline) == set(ARCHS)
    for arch in ARCHS:  # four validation numbers per model, nothing of test
        val = results[arch]["val"]
        assert headline[arch] == {
            "f1": val["macro_f1"]["value"],
            "sens": val["operating_point"]["sensitivity"]["value"],
            "spec": val["operating_point"]["specificity"]["value"],
            "auc": val["operating_point"]["auc"]["value"],
        }

    client = mlflow.MlflowClient()
    for arch in ARCHS:
        run_id = json.loads((root / paths.model_dir(arch) / "run.json").read_text())["run_id"]
        logged = client.get_run(run_id).data.metrics
        assert logged["val_macro_f1"] == pytest.approx(results[arch]["val"]["macro_f1"]["value"])
        assert not [k for k in logged if k.startswith("test")]  # test lives in the ledger
        # the evaluated value is the latest, after training's per-epoch history
        assert logged["val_accuracy"] == pytest.approx(results[arch]["val"]["accuracy"]["value"])
        assert max(m.step for m in client.get_metric_history(run_id, "val_accuracy")) == 3
        run = client.get_run(run_id)
        assert run.data.params["evaluate.bootstrap"] == "100"  # settings are params, not tags
        assert not [k for k in run.data.tags if k.startswith("evaluate.")]
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluate")}
        assert {
            "evaluate/val_metrics.json",
            "evaluate/comparison.md",
            "evaluate/plots",
        } <= artifacts
    looks = mlflow.search_runs(
        experiment_names=[ledger.ledger_experiment("busi-tumor-classification")]
    )
    assert len(looks) == 2
    assert set(looks["tags.purpose"]) == {"evaluate: test report"}
    assert sorted(looks["metrics.test_macro_f1"]) == sorted(
        results[a]["test"]["macro_f1"]["value"] for a in ARCHS
    )


def test_missing_model_names_the_file_and_dvc_repro(inputs, capsys):
    root, params, _ = inputs
    (root / "models/trained/resnet50/model.keras").unlink()
    with pytest.raises(UserError, match=r"models/trained/resnet50/model.keras.*dvc repro"):
        evaluate.run(params)
    assert evaluate.main([]) == 2  # params.yaml is missing in tmp_path: also a user error
    assert capsys.readouterr().err.startswith("error: ")


def test_missing_training_history_names_the_file_and_the_stage(inputs):
    root, params, _ = inputs
    (root / paths.training_history("resnet50")).unlink()
    with pytest.raises(UserError, match=r"reports/train/resnet50/history.csv.*train@resnet50"):
        evaluate.run(params)


def test_missing_manifest_names_it(inputs):
    root, params, _ = inputs
    (root / "data/prepared/manifest.csv").unlink()
    with pytest.raises(UserError, match=r"data/prepared/manifest.csv.*dvc repro"):
        evaluate.run(params)


def fake_split(y):
    return ImageSet(np.zeros((len(y), 2, 2, 3), np.uint8), np.asarray(y), [str(i) for i in y])


def overconfident(y, seed):
    rng = np.random.default_rng(seed)
    logits = 3.0 * (rng.normal(size=(len(y), 3)) + 1.0 * np.eye(3)[y])
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_threshold_and_temperature_come_from_val_only_and_results_are_deterministic():
    rng = np.random.default_rng(0)
    y_val, y_test = rng.integers(0, 3, 60), rng.integers(0, 3, 80)
    data = {"val": fake_split(y_val), "test": fake_split(y_test)}
    proba = {"val": overconfident(y_val, 1), "test": overconfident(y_test, 2)}
    params = project_params({"evaluate": {"bootstrap": 50, "target_sensitivity": 0.8}})

    rule, result = evaluate.evaluate_probabilities(data, proba, params)

    op = result["val"]["operating_point"]
    threshold = op["threshold"]
    assert result["test"]["operating_point"]["threshold"] == threshold
    assert op["selection"]["sensitivity"] >= 0.8  # the rule flags at least the target on val
    assert op["threshold_ci_low"] <= threshold <= op["threshold_ci_high"]
    calibration = result["val"]["calibration"]
    fitted = metrics.fit_temperature(y_val, proba["val"], params.evaluate.temperature_range)
    assert calibration["temperature"] == pytest.approx(fitted)
    assert result["test"]["calibration"]["temperature"] == calibration["temperature"]
    assert calibration["applied"] == (calibration["improvement"] >= 0.01)
    served = metrics.apply_temperature(proba["test"], calibration["temperature"])
    if not calibration["applied"]:
        served = proba["test"]
    assert rule.threshold == threshold
    assert rule.temperature == (calibration["temperature"] if calibration["applied"] else None)
    flagged = (served[:, 1] >= threshold) | (served.argmax(1) == 1)  # the referral flag
    expected = flagged[y_test == 1].mean()
    assert result["test"]["operating_point"]["sensitivity"]["value"] == pytest.approx(expected)
    assert (rule, result) == evaluate.evaluate_probabilities(data, proba, params)

    off = project_params({"evaluate": {"bootstrap": 0, "temperature_scaling": False}})
    calibration = evaluate.evaluate_probabilities(data, proba, off)[1]["test"]["calibration"]
    assert calibration["temperature"] is None
    assert calibration["ece_after"] is None
    assert calibration["applied"] is False


def test_temperature_is_served_only_when_it_beats_the_margin():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 150)
    data = {"val": fake_split(y), "test": fake_split(y)}
    proba = {"val": overconfident(y, 4), "test": overconfident(y, 5)}
    strict = project_params({"evaluate": {"bootstrap": 0, "temperature_min_improvement": 5.0}})
    loose = project_params({"evaluate": {"bootstrap": 0, "temperature_min_improvement": 0.0}})
    assert (
        evaluate.evaluate_probabilities(data, proba, strict)[1]["val"]["calibration"]["applied"]
        is False
    )
    assert (
        evaluate.evaluate_probabilities(data, proba, loose)[1]["val"]["calibration"]["applied"]
        is True
    )


def test_a_separated_validation_set_is_served_raw_probabilities_and_the_reason_says_why():
    """The demo's case: every validation image right, so NLL falls for every smaller T."""
    rng = np.random.default_rng(6)
    y_val, y_test = rng.integers(0, 3, 90), rng.integers(0, 3, 60)
    val = np.full((90, 3), 0.15)
    val[np.arange(90), y_val] = 0.7  # right and modestly sure: sharpening lowers val NLL a lot
    data = {"val": fake_split(y_val), "test": fake_split(y_test)}
    proba = {"val": val, "test": overconfident(y_test, 7)}
    params = project_params({"evaluate": {"bootstrap": 0}})
    _, result = evaluate.evaluate_probabilities(data, proba, params)
    calibration = result["val"]["calibration"]
    assert calibration["applied"] is False
    assert calibration["temperature"] == 0.5
    assert "lower bound" in calibration["reason"]
    assert result["test"]["calibration"]["malignant"]["probabilities"] == "raw"
    narrow = project_params({"evaluate": {"bootstrap": 0, "temperature_range": [0.9, 1.5]}})
    proba["val"] = overconfident(y_val, 8)  # needs T near 3: softened only as far as allowed
    calibration = evaluate.evaluate_probabilities(data, proba, narrow)[1]["val"]["calibration"]
    assert calibration["temperature"] == pytest.approx(1.5, rel=1e-3)
    assert calibration["bounds"] == [0.9, 1.5]


def test_flat_metric_names_carry_the_split():
    y = np.array([0, 1, 2, 1, 0, 2])
    data = {"val": fake_split(y), "test": fake_split(y)}
    proba = {"val": overconfident(y, 0), "test": overconfident(y, 1)}
    _, result = evaluate.evaluate_probabilities(data, proba, project_params({}))
    flat = evaluate_report.flat_metrics(result["val"], "val")
    assert {"val_macro_f1", "val_macro_f1_ci_low", "val_per_class_malignant_recall"} <= set(flat)
    assert {"val_operating_point_ppv_at_prevalence_ci_high", "val_lesions_auc"} <= set(flat)
    assert all(k.startswith("val_") for k in flat)


def test_a_run_missing_from_the_store_is_a_user_error(inputs):
    _, params, _ = inputs
    missing = r"models/trained/densenet121/run.json: MLflow run none not found"
    with pytest.raises(UserError, match=missing):
        evaluate.run(params)


@pytest.mark.parametrize("flip", [True, False])
def test_the_ood_statistics_see_the_mirrored_scans_exactly_when_training_flips(flip):
    rng = np.random.default_rng(0)
    train = ImageSet(
        rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), np.array([0, 1, 2, 1]), list("abcd")
    )
    params = project_params({"augment": {"flip": flip}, "evaluate": {"ood_accept": 0.9}})
    val_labels = np.array([2, 0, 1])
    images, labels, scaled_on, accept = evaluate._ood_reference(train, val_labels, params)
    np.testing.assert_array_equal(scaled_on, val_labels)  # the class scales: validation
    expected = [train.images, train.images[:, :, ::-1]] if flip else [train.images]
    np.testing.assert_array_equal(images, np.concatenate(expected))
    np.testing.assert_array_equal(labels, np.tile(train.labels, len(expected)))
    assert accept == 0.9


def test_a_sensitive_operating_point_moves_the_flag_and_leaves_the_class_answer_alone():
    """A model whose p(malignant) runs low (as DenseNet121's on real BUSI, threshold 0.04): the
    threshold for 90% sensitivity sits far below 0.5 (0.048 here). The class answer stays the
    argmax (served macro-F1 within 0.01 of it), and the referral flag keeps the target
    sensitivity on new data, where the class answer alone finds a fifth of the malignant
    images."""
    rng = np.random.default_rng(11)

    def split(n):
        y = rng.choice(3, n, p=(0.55, 0.27, 0.18))
        logits = 2.0 * np.eye(3)[y] + rng.normal(size=(n, 3))
        logits[:, 1] -= 2.5  # p(malignant) shifted down
        p = np.exp(logits)
        return fake_split(y), p / p.sum(1, keepdims=True)

    (val, p_val), (test, p_test) = split(900), split(900)
    params = project_params({"evaluate": {"bootstrap": 0, "target_sensitivity": 0.9}})
    rule, result = evaluate.evaluate_probabilities(
        {"val": val, "test": test}, {"val": p_val, "test": p_test}, params
    )
    assert rule.threshold < 0.2
    argmax = f1_score(test.labels, p_test.argmax(1), average="macro")
    assert abs(result["test"]["macro_f1"]["value"] - argmax) <= 0.01
    assert result["test"]["operating_point"]["sensitivity"]["value"] >= 0.9 - 0.03
    assert result["test"]["malignant_sensitivity"]["value"] < 0.6  # the class alone misses most


def test_a_third_backbone_in_params_is_evaluated_and_compared_with_each_other_model(project):
    """Backbones are data: a params entry (and its trained model) is all evaluate needs."""
    root, params, _ = project
    schedule = dict(vars(params.train.backbones[ARCHS[0]]))
    raw = {"evaluate": {"bootstrap": 50}}
    params = project_params(raw | {"train": {"backbones": {"tinynet": schedule}}})
    (root / paths.model_dir("tinynet")).mkdir(parents=True)
    mini_classifier(7).save(root / paths.model_dir("tinynet") / "model.keras")
    log_training_run(root, "tinynet")
    write_history(root / paths.training_history("tinynet"), epochs=2)
    results = evaluate.run(params)
    assert set(results) == {*ARCHS, "tinynet"}
    for table in (paths.TRAINING_CURVES, paths.CONFUSION_SHARES):  # one chart of every model
        assert set(pd.read_csv(root / table)["model"]) == {*ARCHS, "tinynet"}
    pairs = json.loads((root / "reports/evaluate/comparison.json").read_text())["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [
        (ARCHS[0], ARCHS[1]), (ARCHS[0], "tinynet"), (ARCHS[1], "tinynet")
    ]  # fmt: skip
    assert (root / "reports/evaluate/comparison.md").read_text().count("## Paired difference") == 3
