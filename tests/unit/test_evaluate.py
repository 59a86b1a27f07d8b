"""The evaluate stage: both models on val and test; numbers, plots, MLflow, clear failures."""

from __future__ import annotations

import json

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import evaluate, metrics, tracking
from pipeline.config import ARCHS, parse_params
from pipeline.datasets import ImageSet
from pipeline.errors import UserError
from tests.factories import enter_project

CLASSES = ("benign", "malignant", "normal")
SIZE = 32


def tiny_classifier(seed: int) -> keras.Model:
    """pipeline.backbones' layer contract (nested `backbone`, pool, dropout, predictions), tiny."""
    keras.utils.set_random_seed(seed)
    inner = keras.Input(shape=(SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inner)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    backbone = keras.Model(inner, x, name="backbone")
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(SIZE, SIZE, name="resize")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


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
    params = parse_params(
        {"evaluate": {"bootstrap": 100, "samples_per_class": 2, "gradcam_per_class": 1}}
    )
    for seed, arch in enumerate(ARCHS):
        (tmp_path / "models" / arch).mkdir(parents=True)
        tiny_classifier(seed).save(tmp_path / "models" / arch / "model.keras")
        (tmp_path / "models" / arch / "run.json").write_text('{"run_id": "none"}')
    return tmp_path, params, manifest


@pytest.fixture
def project(inputs):
    """`inputs` plus each model's training run in a private MLflow store."""
    root, params, manifest = inputs
    tracking.setup(params.mlflow.experiment)
    for arch in ARCHS:
        with mlflow.start_run(run_name=arch) as active:
            for epoch in range(3):  # what training logs per epoch
                mlflow.log_metric("val_accuracy", 0.3 + 0.1 * epoch, step=epoch)
        run_json = {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id}
        (root / "models" / arch / "run.json").write_text(json.dumps(run_json))
    return root, params, manifest


def test_stage_writes_every_report_and_logs_to_each_training_run(project):
    root, params, manifest = project
    results = evaluate.run(params)

    for arch in ARCHS:
        out = root / "reports/evaluate" / arch
        text = (out / "metrics.json").read_text()
        saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
        assert saved == results[arch]
        for split, n in (("val", 9), ("test", 12)):
            m = saved[split]
            assert m["n"] == n
            for name in metrics.HEADLINE:
                assert set(m[name]) == {"value", "ci_low", "ci_high"}
            assert set(m["per_class"]) == set(CLASSES)
            assert sum(map(sum, m["confusion_matrix"])) == n
            assert set(m["operating_point"]) == {"threshold", "sensitivity", "specificity"}
            assert set(m["calibration"]) == {
                "temperature",
                "ece_before",
                "ece_after",
                "brier_before",
                "brier_after",
            }
            predictions = pd.read_csv(out / f"predictions_{split}.csv")
            expected = manifest[manifest["split"] == split]
            assert predictions["path"].tolist() == expected["path"].tolist()  # never augmented
            assert list(predictions.columns[:3]) == ["path", "label", "predicted"]
            confusion = pd.read_csv(out / f"confusion_{split}.csv")
            assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == n
        # threshold chosen on val, the same one applied to test
        threshold = saved["val"]["operating_point"]["threshold"]
        assert saved["test"]["operating_point"]["threshold"] == threshold
        assert saved["val"]["operating_point"]["sensitivity"] >= params.evaluate.target_sensitivity
        # probabilities are the saved model's own
        model = keras.saving.load_model(root / "models" / arch / "model.keras")
        test_paths = manifest[manifest["split"] == "test"]["path"]
        images = np.stack([cv2.imread(f"data/prepared/{p}")[..., ::-1] for p in test_paths])
        probabilities = pd.read_csv(out / "predictions_test.csv")[[f"p_{c}" for c in CLASSES]]
        np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)
        assert list(pd.read_csv(out / "roc_test.csv").columns) == ["class", "fpr", "tpr"]
        assert (out / "reliability_test.csv").is_file()
        pngs = {p.name for p in (out / "plots").glob("*.png")}
        assert {
            "confusion_counts_val.png",
            "confusion_normalized_test.png",
            "roc_test.png",
            "reliability_test.png",
            "samples_test.png",
            "gradcam_test.png",
        } <= pngs

    comparison = (root / "reports/evaluate/comparison.md").read_text()
    assert all(arch in comparison for arch in ARCHS) and "| Macro F1 |" in comparison

    client = mlflow.MlflowClient()
    for arch in ARCHS:
        run_id = json.loads((root / "models" / arch / "run.json").read_text())["run_id"]
        logged = client.get_run(run_id).data.metrics
        assert logged["test_macro_f1"] == pytest.approx(results[arch]["test"]["macro_f1"]["value"])
        # the evaluated value is the latest, after training's per-epoch history
        assert logged["val_accuracy"] == pytest.approx(results[arch]["val"]["accuracy"]["value"])
        assert max(m.step for m in client.get_metric_history(run_id, "val_accuracy")) == 3
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluate")}
        assert {"evaluate/metrics.json", "evaluate/comparison.md", "evaluate/plots"} <= artifacts


def test_missing_model_names_the_file_and_dvc_repro(inputs, capsys):
    root, params, _ = inputs
    (root / "models/resnet50/model.keras").unlink()
    with pytest.raises(UserError, match=r"models/resnet50/model.keras.*dvc repro"):
        evaluate.run(params)
    assert evaluate.main([]) == 2  # params.yaml is missing in tmp_path: also a user error
    assert capsys.readouterr().err.startswith("error: ")


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
    params = parse_params({"evaluate": {"bootstrap": 50, "target_sensitivity": 0.8}})

    result = evaluate.evaluate_probabilities(data, proba, params)

    threshold = metrics.sensitivity_threshold(y_val == 1, proba["val"][:, 1], 0.8)
    expected_test = metrics.threshold_rates(y_test == 1, proba["test"][:, 1], threshold)
    assert result["test"]["operating_point"] == expected_test
    temperature = metrics.fit_temperature(y_val, proba["val"])
    assert result["val"]["calibration"]["temperature"] == pytest.approx(temperature)
    assert result["test"]["calibration"]["temperature"] == pytest.approx(temperature)
    assert result["val"]["calibration"]["ece_after"] < result["val"]["calibration"]["ece_before"]
    assert result == evaluate.evaluate_probabilities(data, proba, params)

    off = parse_params({"evaluate": {"bootstrap": 0, "temperature_scaling": False}})
    calibration = evaluate.evaluate_probabilities(data, proba, off)["test"]["calibration"]
    assert calibration["temperature"] is None and calibration["ece_after"] is None


def test_flat_metric_names_carry_the_split():
    y = np.array([0, 1, 2, 1, 0, 2])
    data = {"val": fake_split(y), "test": fake_split(y)}
    proba = {"val": overconfident(y, 0), "test": overconfident(y, 1)}
    result = evaluate.evaluate_probabilities(data, proba, parse_params({}))
    flat = evaluate.flat_metrics(result)
    assert {"val_macro_f1", "test_macro_f1_ci_low", "test_recall_malignant"} <= set(flat)
    assert all(k.startswith(("val_", "test_")) for k in flat)


def test_a_run_missing_from_the_store_is_a_user_error(inputs):
    _, params, _ = inputs
    with pytest.raises(UserError, match=r"models/densenet121/run.json: MLflow run none not found"):
        evaluate.run(params)
