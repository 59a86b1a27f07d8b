"""Stage `evaluate`: both models on the val and test splits, with confidence intervals and plots.

Only `data/prepared` is read (val and test; augmented data never enters evaluation). Each model
predicts each split once; every metric, the malignant operating point (threshold chosen on val,
applied to test), temperature scaling (fitted on val) and the plots reuse those probabilities.
Writes `reports/evaluate/<arch>/` (metrics.json, predictions, DVC plot data, plots/) and
`reports/evaluate/comparison.md`, and logs them to each model's training run in MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline import cam, metrics, plots, tracking
from pipeline.cli import stage_main
from pipeline.config import ARCHS, Params
from pipeline.datasets import PREPARED_DIR, ImageSet, load_set
from pipeline.errors import UserError
from pipeline.files import staged_dir, write_json, write_text
from pipeline.model_card import LABELS, format_estimate

EVALUATE_DIR = Path("reports/evaluate")
MODELS_DIR = Path("models")
SPLITS = ("val", "test")
POSITIVE = "malignant"
PREDICT_BATCH = 64


def run(params: Params) -> dict:
    classes = params.classes
    inputs = {arch: _require_inputs(arch) for arch in ARCHS}
    data = {split: _load_split(split, classes) for split in SPLITS}
    tracking.setup(params.mlflow.experiment)
    for arch in ARCHS:  # fail before the work, not after it
        _require_run(inputs[arch])
    results = {}
    for arch in ARCHS:
        model = keras.saving.load_model(inputs[arch]["model"], compile=False)
        net = cam.feature_model(model)  # one pass gives probabilities and maps for Grad-CAM
        outputs = {split: predict(net, data[split].images) for split in SPLITS}
        proba = {split: probabilities for split, (_, probabilities) in outputs.items()}
        results[arch] = evaluate_probabilities(data, proba, params)
        with staged_dir(EVALUATE_DIR / arch) as out:
            write_json(out / "metrics.json", results[arch])
            write_reports(out, model, outputs["test"][0], data, proba, results[arch], params)
    comparison = comparison_markdown(results)
    write_text(EVALUATE_DIR / "comparison.md", comparison)
    _log_to_mlflow(params, inputs, results)
    for arch, result in results.items():
        test = result["test"]
        print(
            f"evaluate {arch}: test macro-F1 {format_estimate(test['macro_f1'])}, "
            f"malignant sensitivity {format_estimate(test['malignant_sensitivity'])}"
        )
    return results


def predict(net: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(backbone feature maps, class probabilities (N, K)) of uint8 RGB images, one batched pass.

    `net` is `cam.feature_model(model)`: the model's own layers, also returning the feature map.
    Called eagerly batch by batch rather than with `predict`: for two passes per model, tracing a
    DenseNet121 graph costs more than it saves (about 10 s vs 2 s for 117 images at 64 px, CPU).
    """
    features, proba = [], []
    for start in range(0, len(images), PREDICT_BATCH):
        batch = images[start : start + PREDICT_BATCH].astype("float32")
        f, p = net(batch, training=False)
        features.append(keras.ops.convert_to_numpy(f))
        proba.append(keras.ops.convert_to_numpy(p))
    return np.concatenate(features), np.concatenate(proba).astype(np.float64)


def evaluate_probabilities(
    data: dict[str, ImageSet], proba: dict[str, np.ndarray], params: Params
) -> dict:
    """`{"val": M, "test": M}` from each split's probabilities (see pipeline.metrics for M)."""
    e, classes = params.evaluate, params.classes
    m = classes.index(POSITIVE)
    val_y, val_p = data["val"].labels, proba["val"]
    threshold = metrics.sensitivity_threshold(val_y == m, val_p[:, m], e.target_sensitivity)
    temperature = metrics.fit_temperature(val_y, val_p) if e.temperature_scaling else None
    result = {}
    for split in SPLITS:
        y, p = data[split].labels, proba[split]
        report = metrics.classification_report(
            y, p, classes, positive=POSITIVE, n_bootstrap=e.bootstrap, seed=params.seed,
            n_bins=e.ece_bins,
        )  # fmt: skip
        report["operating_point"] = metrics.threshold_rates(y == m, p[:, m], threshold)
        calibrated = metrics.apply_temperature(p, temperature) if temperature else None
        report["calibration"] = {
            "temperature": temperature,
            "ece_before": metrics.expected_calibration_error(y, p, e.ece_bins),
            "ece_after": metrics.expected_calibration_error(y, calibrated, e.ece_bins)
            if temperature
            else None,
            "brier_before": metrics.brier_score(y, p),
            "brier_after": metrics.brier_score(y, calibrated) if temperature else None,
        }
        result[split] = report
    return metrics.jsonable(result)


def write_reports(
    out: Path,
    model: keras.Model,
    test_features: np.ndarray,
    data: dict[str, ImageSet],
    proba: dict[str, np.ndarray],
    result: dict,
    params: Params,
) -> None:
    """Predictions, DVC plot data and PNGs of one model into its (staged) output folder."""
    classes, e = params.classes, params.evaluate
    for split in SPLITS:
        y, p = data[split].labels, proba[split]
        plots.save_csv(
            plots.predictions_table(data[split].paths, y, p, classes),
            out / f"predictions_{split}.csv",
        )
        plots.save_csv(
            plots.confusion_rows(y, p.argmax(1), classes), out / f"confusion_{split}.csv"
        )
        matrix = result[split]["confusion_matrix"]
        for normalize, kind in ((False, "counts"), (True, "normalized")):
            title = f"{split}: confusion ({'row-normalised' if normalize else 'counts'})"
            fig = plots.confusion_figure(matrix, classes, normalize, title)
            plots.save_png(fig, out / "plots" / f"confusion_{kind}_{split}.png")

    test, y, p = data["test"], data["test"].labels, proba["test"]
    roc = metrics.roc_points(y, p, classes)
    plots.save_csv(pd.DataFrame(roc, columns=["class", "fpr", "tpr"]), out / "roc_test.csv")
    auc = {c: v["roc_auc"] for c, v in result["test"]["per_class"].items()}
    plots.save_png(
        plots.roc_figure(roc, auc, "test: ROC, one-vs-rest"), out / "plots" / "roc_test.png"
    )

    curves = {"before": metrics.reliability_bins(y, p, e.ece_bins)}
    temperature = result["test"]["calibration"]["temperature"]
    if temperature:
        calibrated = metrics.apply_temperature(p, temperature)
        curves[f"after (T={temperature:.2f})"] = metrics.reliability_bins(y, calibrated, e.ece_bins)
    rows = [{"curve": name, **row} for name, bins in curves.items() for row in bins if row["count"]]
    plots.save_csv(pd.DataFrame(rows), out / "reliability_test.csv")
    fig = plots.reliability_figure(curves, "test: reliability (top-class confidence)")
    plots.save_png(fig, out / "plots" / "reliability_test.png")

    names = np.asarray(classes)
    captions = [
        f"true {names[t]}\npred {names[k]} {q[k]:.2f}"
        for t, k, q in zip(y, p.argmax(1), p, strict=True)
    ]
    if e.samples_per_class:
        picks = plots.choose_samples(y, p, classes, e.samples_per_class, params.seed)
        fig = plots.image_grid(test.images, picks, captions, "test: sample predictions")
        plots.save_png(fig, out / "plots" / "samples_test.png")
    if e.gradcam_per_class:
        picks = {
            f"true {name}": [int(i) for i in np.flatnonzero(y == k)[: e.gradcam_per_class]]
            for k, name in enumerate(classes)
        }
        chosen = sorted(i for idx in picks.values() for i in idx)
        if not chosen:
            return
        maps = cam.maps_from_features(model, test_features[chosen], p[chosen].argmax(1))
        tiles: dict[int, np.ndarray] = {}  # the image and its overlay side by side
        for i, heat in zip(chosen, maps, strict=True):
            gap = np.full((test.images.shape[1], 2, 3), 255, dtype=np.uint8)
            tiles[i] = np.hstack([test.images[i], gap, cam.overlay(test.images[i], heat)])
        title = "test: class activation maps (Grad-CAM) of the predicted class"
        fig = plots.image_grid(tiles, picks, captions, title)
        plots.save_png(fig, out / "plots" / "gradcam_test.png")


def comparison_markdown(results: dict[str, dict]) -> str:
    """Side-by-side table of the models: headline metrics with 95% CIs, val then test."""
    archs = list(results)
    lines = [
        "# Model comparison",
        "",
        "Point estimates with 95% stratified bootstrap confidence intervals. Selection uses the "
        "validation columns only; test is reported, never used to choose.",
        "",
    ]
    for split, title in (("val", "Validation"), ("test", "Test")):
        ns = ", ".join(f"{a} n={results[a][split].get('n')}" for a in archs)
        lines += [f"## {title} ({ns})", ""]
        lines += ["| metric | " + " | ".join(archs) + " |", "|---" * (len(archs) + 1) + "|"]
        for key, label in LABELS.items():
            cells = [format_estimate(results[a][split].get(key)) for a in archs]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        op = [results[a][split].get("operating_point") or {} for a in archs]
        for key in ("threshold", "sensitivity", "specificity"):
            cells = [_number(o.get(key)) for o in op]
            lines.append(f"| Operating point {key} | " + " | ".join(cells) + " |")
        cal = [results[a][split].get("calibration") or {} for a in archs]
        for key in ("temperature", "ece_after", "brier_after"):
            lines.append(
                f"| Calibrated {key} | " + " | ".join(_number(c.get(key)) for c in cal) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def flat_metrics(result: dict) -> dict[str, float]:
    """MLflow metric names: `<split>_<metric>` (+ `_ci_low`, `_ci_high`), per class and more."""
    flat: dict[str, float] = {}
    for split, report in result.items():
        for key in metrics.HEADLINE:
            for part, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                flat[f"{split}_{key}{suffix}"] = report[key][part]
        for cls, row in report["per_class"].items():
            for key in ("precision", "recall", "f1", "specificity", "roc_auc", "average_precision"):
                flat[f"{split}_{key}_{_safe_name(cls)}"] = row[key]
        for key, value in report["operating_point"].items():
            flat[f"{split}_operating_{key}"] = value
        for key, value in report["calibration"].items():
            flat[f"{split}_calibration_{key}"] = value
    return {k: float(v) for k, v in flat.items() if v is not None}


def _log_to_mlflow(params: Params, inputs: dict[str, dict], results: dict[str, dict]) -> None:
    client = mlflow.MlflowClient()
    for arch, result in results.items():
        run_id = inputs[arch]["run_id"]
        flat = flat_metrics(result)
        # Training logs val_accuracy / val_macro_f1 per epoch; log after its last step so the
        # run's latest value is the one of the saved model, evaluated here.
        clashes = [k for k in flat if k in client.get_run(run_id).data.metrics]
        step = 1 + max(
            (m.step for k in clashes for m in client.get_metric_history(run_id, k)), default=-1
        )
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(flat, step=step)
            mlflow.set_tags(
                {f"evaluate.{k}": str(v) for k, v in dataclasses.asdict(params.evaluate).items()}
            )
            mlflow.log_artifacts(str(EVALUATE_DIR / arch), artifact_path="evaluate")
            mlflow.log_artifact(str(EVALUATE_DIR / "comparison.md"), artifact_path="evaluate")


def _require_run(found: dict) -> None:
    try:
        mlflow.MlflowClient().get_run(found["run_id"])
    except mlflow.exceptions.MlflowException:
        raise UserError(
            f"{found['run_file']}: MLflow run {found['run_id']} not found in "
            f"{tracking.tracking_uri()}; retrain with `dvc repro` or point MLFLOW_TRACKING_URI "
            "at the store the training run was logged to"
        ) from None


def _require_inputs(arch: str) -> dict:
    model_file = MODELS_DIR / arch / "model.keras"
    run_file = MODELS_DIR / arch / "run.json"
    for path in (model_file, run_file):
        if not path.is_file():
            raise UserError(f"{path}: not found; train the models first (dvc repro)")
    try:
        run_id = json.loads(run_file.read_text())["run_id"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{run_file}: expected JSON with a run_id; retrain (dvc repro)") from None
    return {"model": str(model_file), "run_file": str(run_file), "run_id": run_id}


def _load_split(split: str, classes: tuple[str, ...]) -> ImageSet:
    images = load_set(PREPARED_DIR, classes, split=split)
    if len(images) == 0:
        raise UserError(
            f"{PREPARED_DIR / 'manifest.csv'}: no {split!r} images; check prepare's fractions "
            "and rerun `dvc repro`"
        )
    return images


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", name)


def main(argv: list[str] | None = None) -> int:
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
