"""Stage `evaluate`: both models on validation (what development sees) and test (counted looks).

Only `data/prepared` is read (augmented data never enters evaluation). Each model predicts each
split once; everything below reuses those probabilities. On validation: whether temperature
scaling earns its place (cross-validated gain over `evaluate.temperature_min_improvement`), then
the malignant threshold on the served probabilities with a stated guarantee and its bootstrap
interval. On both splits: headline metrics, the operating point (sensitivity, specificity, PPV,
NPV, also at `evaluate.prevalence`), benign vs malignant among lesions, calibration of
p(malignant) and subgroups, all with cluster-bootstrap intervals over prepare's groups.

What people see during development is validation: the terminal, `reports/evaluate/metrics.json`
(the DVC metrics file, a dozen validation numbers), `comparison.md`, the DVC plots and the training
runs in MLflow. Test numbers are in one place, `reports/evaluate/test.md` (and the `test` section
of each `<arch>/metrics.json`, `<arch>/test/`), and every computation of them is a run in the MLflow
test ledger (pipeline.ledger), counted in the report and the model card.

Out-of-distribution check (pipeline.serving.ood, the function that serves): the statistics of the
pooled backbone features are fitted on the train split of data/prepared (with its left-right
mirrors when augment.flip is on), the threshold is chosen
on validation (`evaluate.ood_accept` of the val images accepted) and written with them to
`<arch>/ood.npz` for select; the share of test images refused and the OOD AUROC against each
family of pipeline.ood_sets (test images vs `evaluate.ood_images` synthetic images per family)
go into the test report.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline import cam, ledger, metrics, ood_sets, plots, statistics, subgroups, tracking
from pipeline.cli import stage_main
from pipeline.config import ARCHS, Params
from pipeline.datasets import PREPARED_DIR, ImageSet, load_set, read_manifest
from pipeline.errors import UserError
from pipeline.files import staged_dir, write_json, write_text
from pipeline.model_card import LABELS, format_estimate
from pipeline.serving.ood import METHOD, OOD_FILE, OodStatistics, accept_threshold, fit, pool
from pipeline.threshold import choose_threshold

EVALUATE_DIR = Path("reports/evaluate")
HEADLINE_FILE = EVALUATE_DIR / "metrics.json"
MODELS_DIR = Path("models")
SPLITS = ("val", "test")
POSITIVE = "malignant"
LESION_NEGATIVE = "benign"
MIN_SUBGROUP = 10  # images; smaller subgroups are listed with their n but not estimated
PREDICT_BATCH = 64


@dataclasses.dataclass(frozen=True)
class SplitFacts:
    """What the manifest says about a split's images, in load order: groups and subgroups."""

    groups: np.ndarray | None = None
    subgroups: dict[str, tuple[np.ndarray, list[str]]] = dataclasses.field(default_factory=dict)
    image_hashes: tuple[str, ...] = ()
    subgroup_gaps: tuple[str, ...] = ()  # analyses the manifest cannot support, with the reason


def run(params: Params) -> dict:
    """Score both models on val (what `select` uses) and test (reported once): reports/evaluate/."""
    inputs = {arch: _require_inputs(arch) for arch in ARCHS}
    data = {split: _load_split(split, params.classes) for split in SPLITS}
    manifest = read_manifest(PREPARED_DIR / "manifest.csv")
    facts = {split: split_facts(manifest, split) for split in SPLITS}
    tracking.setup(params.mlflow.experiment)
    for arch in ARCHS:  # fail before the work, not after it
        _require_run(inputs[arch])
    look = {
        "split_sha256": ledger.split_fingerprint(facts["test"].image_hashes),
        "manifest_sha256": ledger.file_sha256(str(PREPARED_DIR / "manifest.csv")),
    }
    train = _load_split("train", params.classes)  # only for the OOD statistics
    size = data["test"].images.shape[1]
    shown = ood_sets.ood_sets(params.evaluate.ood_images, size, params.seed)
    results, proba, kept, fitted = {}, {}, {}, {}
    for arch in ARCHS:
        model = keras.saving.load_model(inputs[arch]["model"], compile=False)
        net = cam.feature_model(model)  # one pass gives probabilities and maps for Grad-CAM
        outputs = {split: predict(net, data[split].images) for split in SPLITS}
        proba[arch] = {split: probabilities for split, (_, probabilities) in outputs.items()}
        results[arch] = evaluate_probabilities(data, proba[arch], params, facts)
        kept[arch] = (model, outputs["test"][0])
        fitted[arch], found = _model_ood(net, outputs, shown, _ood_reference(train, params))
        for split in SPLITS:
            results[arch][split]["ood"] = found[split]
    for arch in ARCHS:  # every computation of test metrics is a look, counted before reporting
        _record_test_look(params, arch, inputs[arch], results[arch]["test"], look)
    use = ledger.split_use(params.mlflow.experiment, look["split_sha256"])
    # Where the count is kept, not the count: it grows with every look, so a rerun on the same data
    # would change the committed reports (select's card for the registry carries it).
    where = {k: use[k] for k in ("ledger", "split_sha256")}
    for arch in ARCHS:
        results[arch]["test"]["test_use"] = where
        with staged_dir(EVALUATE_DIR / arch) as out:
            write_json(out / "metrics.json", results[arch])
            fitted[arch].save(out / OOD_FILE)
            model, features = kept[arch]
            write_reports(out, model, features, data, proba[arch], results[arch], params, arch)
    comparison = compare_models(data, proba, facts, params)
    write_json(EVALUATE_DIR / "comparison.json", comparison)
    write_text(EVALUATE_DIR / "comparison.md", comparison_markdown(results, comparison, "val"))
    write_text(EVALUATE_DIR / "test.md", comparison_markdown(results, comparison, "test"))
    write_json(HEADLINE_FILE, headline(results))
    _log_to_mlflow(params, inputs, results)
    _print_summary(results, use)
    return results


def _ood_reference(train: ImageSet, params: Params) -> tuple[np.ndarray, np.ndarray, float]:
    """(images, labels, accept) the OOD statistics are fitted on: the train split, plus its
    left-right mirrors when training flips images (augment.flip). A flipped scan is then in
    distribution for the classifier, and must be for the detector too: fitted on unmirrored scans
    alone, one demo model refused 4 of 72 scans only once mirrored."""
    images, labels = train.images, train.labels
    if params.augment.flip:
        images = np.concatenate([images, images[:, :, ::-1]])
        labels = np.concatenate([labels, labels])
    return images, labels, params.evaluate.ood_accept


def _model_ood(
    net: keras.Model,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
    shown: dict[str, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray, float],
) -> tuple[OodStatistics, dict[str, dict[str, Any]]]:
    """`ood_evaluation` of one model: the pooled features of the fitting `reference`
    (`_ood_reference`), of both splits (`outputs`, already predicted) and of each OOD family
    (`shown`)."""
    images, labels, accept = reference
    pooled = {name: pool(predict(net, x)[0]) for name, x in shown.items()}
    pooled |= {split: pool(f) for split, (f, _) in outputs.items()}
    pooled["train"] = pool(predict(net, images)[0])
    return ood_evaluation(pooled, labels, accept)


def ood_evaluation(
    pooled: dict[str, np.ndarray], train_labels: np.ndarray, accept: float
) -> tuple[OodStatistics, dict[str, dict[str, Any]]]:
    """Fit the OOD statistics on train, choose the threshold on val, measure both splits.

    `pooled`: pooled features of "train", "val", "test" and of each OOD family. Per split: the
    share of its (in-distribution) images refused, with a Clopper-Pearson interval, and the
    AUROC of the OOD score separating the split's images from each family (1 = always apart).
    """
    from scipy.stats import binomtest

    fitted = fit(pooled["train"], train_labels)
    scores = {name: fitted.scores(x) for name, x in pooled.items() if name != "train"}
    threshold = accept_threshold(scores["val"], accept)
    families = [name for name in scores if name not in (*SPLITS, "train")]
    found = {}
    for split in SPLITS:
        inside = scores[split]
        refused = int((inside > threshold).sum())
        ci = binomtest(refused, len(inside)).proportion_ci(0.95, method="exact")
        outside = {f: scores[f] for f in families}
        found[split] = {
            "method": METHOD,
            "accept": accept,
            "threshold": threshold,
            "images": len(inside),
            "refused": {"value": refused / len(inside), "ci_low": ci.low, "ci_high": ci.high},
            "auroc": {f: _auroc(inside, s) for f, s in outside.items()},
            "auroc_all": _auroc(inside, np.concatenate(list(outside.values()))),
            "ood_refused": {f: float((s > threshold).mean()) for f, s in outside.items()},
            "ood_images": {f: len(s) for f, s in outside.items()},
        }
    return fitted, found


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    """P(an OOD image scores above an in-distribution one), ties counted half."""
    from sklearn.metrics import roc_auc_score

    if not len(inside) or not len(outside):
        return None
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


def split_facts(manifest: pd.DataFrame, split: str) -> SplitFacts:
    """Groups, subgroup labels and image hashes of `split`, in the order load_set reads it."""
    rows = manifest[manifest["split"] == split]
    groups = rows["group"].to_numpy() if "group" in rows else None
    hashes = rows["sha256"] if "sha256" in rows else rows["path"]
    found = subgroups.define(manifest, rows)
    return SplitFacts(groups, found, tuple(hashes), tuple(subgroups.missing(manifest)))


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
    data: dict[str, ImageSet],
    proba: dict[str, np.ndarray],
    params: Params,
    facts: dict[str, SplitFacts] | None = None,
) -> dict:
    """`{"val": M, "test": M}` from each split's probabilities; decisions are fixed on val only.

    Order matters: calibration is decided first, because temperature scaling changes p(malignant)
    image by image (not monotonically), so the threshold is chosen on the probabilities served.
    """
    e, m = params.evaluate, params.classes.index(POSITIVE)
    facts = facts or {split: SplitFacts() for split in SPLITS}
    y, groups = data["val"].labels, facts["val"].groups
    calibration = _calibration_choice(y, proba["val"], groups, params)
    served = {split: _served(proba[split], calibration) for split in SPLITS}
    flagged = served["val"].argmax(1) == m
    choice = choose_threshold(
        y, served["val"][:, m], m, flagged, groups, target=e.target_sensitivity,
        confidence=e.threshold_confidence, n_bootstrap=e.bootstrap, seed=params.seed,
    )  # fmt: skip
    result = {
        split: _split_report(
            data[split].labels,
            proba[split],
            served[split],
            choice["threshold"],
            calibration,
            facts[split],
            params,
        )  # fmt: skip
        for split in SPLITS
    }
    result["val"]["operating_point"].update(
        rule=choice["rule"], selection=choice, threshold_ci_low=choice["threshold_ci_low"],
        threshold_ci_high=choice["threshold_ci_high"],
    )  # fmt: skip
    return metrics.jsonable(result)


def _calibration_choice(
    y: np.ndarray, proba: np.ndarray, groups: np.ndarray | None, params: Params
) -> dict[str, Any]:
    e = params.evaluate
    if not e.temperature_scaling:
        return {"temperature": None, "applied": False, "reason": "evaluate.temperature_scaling off"}
    return statistics.temperature_decision(
        y,
        proba,
        groups,
        min_improvement=e.temperature_min_improvement,
        bounds=(e.temperature_range[0], e.temperature_range[1]),
        seed=params.seed,
    )


def _served(proba: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """The probabilities the released rule uses: temperature-scaled only when it was applied."""
    if calibration["applied"]:
        return metrics.apply_temperature(proba, calibration["temperature"])
    return proba


def _split_report(
    y: np.ndarray,
    proba: np.ndarray,
    served: np.ndarray,
    threshold: float | None,
    calibration: dict[str, Any],
    facts: SplitFacts,
    params: Params,
) -> dict[str, Any]:
    """Every number of one split: headline (argmax of the raw output) and the served decision."""
    e, classes, g = params.evaluate, params.classes, facts.groups
    m = classes.index(POSITIVE)
    boot = {"n_bootstrap": e.bootstrap, "seed": params.seed}
    report = metrics.classification_report(
        y, proba, classes, positive=POSITIVE, n_bins=e.ece_bins, groups=g, **boot
    )
    report["operating_point"] = statistics.operating_point(
        y, served[:, m], threshold, m, g, prevalence=e.prevalence, **boot
    )
    if LESION_NEGATIVE in classes:
        report["lesions"] = statistics.lesion_operating_point(
            y, served[:, m], threshold, m, classes.index(LESION_NEGATIVE), g,
            prevalence=e.prevalence, **boot,
        )  # fmt: skip
    report["calibration"] = _calibration_report(y, proba, served, calibration, m, e.ece_bins)
    report["subgroups"] = {
        name: statistics.subgroup_table(
            y,
            served.argmax(1),
            served[:, m],
            threshold,
            m,
            labels,
            order,
            g,
            min_images=MIN_SUBGROUP,
        )  # fmt: skip
        for name, (labels, order) in facts.subgroups.items()
    }
    report["subgroups_not_evaluated"] = list(facts.subgroup_gaps)
    return report


def _calibration_report(
    y: np.ndarray,
    proba: np.ndarray,
    served: np.ndarray,
    calibration: dict[str, Any],
    m: int,
    n_bins: int,
) -> dict[str, Any]:
    """The val decision about temperature, and how both probability sets fare on this split."""
    t = calibration.get("temperature")
    ece_after: float | None = None
    brier_after: float | None = None
    if t:
        scaled = metrics.apply_temperature(proba, t)
        ece_after = metrics.expected_calibration_error(y, scaled, n_bins)
        brier_after = metrics.brier_score(y, scaled)
    return {
        **calibration,
        "ece_before": metrics.expected_calibration_error(y, proba, n_bins),
        "ece_after": ece_after,
        "brier_before": metrics.brier_score(y, proba),
        "brier_after": brier_after,
        "malignant": {
            "probabilities": "temperature-scaled" if calibration["applied"] else "raw",
            **statistics.calibration_line(y == m, served[:, m]),
            "reliability": statistics.reliability_curve(y == m, served[:, m], n_bins),
        },
    }


def compare_models(
    data: dict[str, ImageSet],
    proba: dict[str, dict[str, np.ndarray]],
    facts: dict[str, SplitFacts],
    params: Params,
) -> dict[str, Any]:
    """First model minus second on the same images: macro-F1 and malignant AUC with paired
    cluster-bootstrap intervals, and McNemar's test on the argmax decisions."""
    a, b = ARCHS[:2]
    m = params.classes.index(POSITIVE)
    boot = {"n_bootstrap": max(params.evaluate.bootstrap, 1), "seed": params.seed}
    out: dict[str, Any] = {"a": a, "b": b}
    for split in SPLITS:
        y, g = data[split].labels, facts[split].groups
        pa, pb = proba[a][split], proba[b][split]
        out[split] = {
            "macro_f1": statistics.paired_difference(
                y, pa.argmax(1), pb.argmax(1), g, metric="macro_f1", **boot
            ),
            "malignant_auc": statistics.paired_difference(
                y, pa[:, m], pb[:, m], g, metric="malignant_auc", positive=m, **boot
            ),
            "mcnemar": statistics.mcnemar(y, pa.argmax(1), pb.argmax(1)),
        }
    return metrics.jsonable(out)


def headline(results: dict[str, dict]) -> dict[str, dict]:
    """The DVC metrics file: four validation numbers per model, what `dvc exp show` lays out.

    Keys, all on validation: `f1` macro-F1; for malignant at the chosen operating point `sens`
    sensitivity and `spec` specificity; `auc` its one-vs-rest AUC. Short on purpose: DVC makes
    `<arch>.<key>` a column of `dvc exp show`, whose width is set by these names (it must fit in
    200 columns with `--only-changed`; the long names took 492). Everything else (intervals,
    lesions-only AUC, threshold, OOD, test) is in `<arch>/metrics.json`.
    """
    out = {}
    for arch, result in results.items():
        val = result["val"]
        op = val["operating_point"]
        out[arch] = {
            "f1": val["macro_f1"]["value"],
            "sens": (op.get("sensitivity") or {}).get("value"),
            "spec": (op.get("specificity") or {}).get("value"),
            "auc": (op.get("auc") or {}).get("value"),
        }
    return out


def write_reports(
    out: Path,
    model: keras.Model,
    test_features: np.ndarray,
    data: dict[str, ImageSet],
    proba: dict[str, np.ndarray],
    result: dict,
    params: Params,
    arch: str = "model",
) -> None:
    """Predictions, plot data and figures of one model into its (staged) output folder.

    Validation goes where development looks (`plots/` and the CSVs `dvc plots` reads); test goes
    to `test/`, which nothing in the development loop shows.
    """
    classes = params.classes
    for split in SPLITS:
        y, p = data[split].labels, proba[split]
        table = plots.predictions_table(data[split].paths, y, p, classes)
        plots.save_csv(table, out / f"predictions_{split}.csv")
    test = out / "test"
    for split, csv_dir, png_dir in (("val", out, out / "plots"), ("test", test, test)):
        y, p = data[split].labels, proba[split]
        _split_figures(csv_dir, png_dir, split, y, p, result=result, params=params, arch=arch)
    _test_images(test, model, test_features, data["test"], proba["test"], params, arch)


def _split_figures(
    csv_dir: Path, png_dir: Path, split: str, y: np.ndarray, p: np.ndarray, *, result: dict,
    params: Params, arch: str,
) -> None:  # fmt: skip
    """Confusion, ROC and the reliability of p(malignant) of one split: CSV data and PNGs.

    The ROC and reliability CSVs are long tables with a series column (`class`, `probabilities`)
    that the project's DVC templates (.dvc/plots/) draw as one line per series.
    """
    classes, report = params.classes, result[split]
    plots.save_csv(
        plots.confusion_rows(y, p.argmax(1), classes), csv_dir / f"confusion_{split}.csv"
    )
    n = f"{len(y)} images"
    for normalize, kind in ((False, "counts"), (True, "normalized")):
        title = f"{arch}, {split}: confusion ({'row-normalised' if normalize else 'counts'}), {n}"
        fig = plots.confusion_figure(report["confusion_matrix"], classes, normalize, title)
        plots.save_png(fig, png_dir / f"confusion_{kind}_{split}.png")
    roc = metrics.roc_points(y, p, classes)
    plots.save_csv(pd.DataFrame(roc, columns=["class", "fpr", "tpr"]), csv_dir / f"roc_{split}.csv")
    auc = {c: v["roc_auc"] for c, v in report["per_class"].items()}
    fig = plots.roc_figure(roc, auc, f"{arch}, {split}: ROC, one-vs-rest, {n}")
    plots.save_png(fig, png_dir / f"roc_{split}.png")
    curves = _reliability_curves(y, p, report["calibration"], params)
    rows = [{"probabilities": name, **r} for name, bins in curves.items() for r in bins]
    plots.save_csv(pd.DataFrame(rows), csv_dir / f"reliability_{split}.csv")
    shown = {
        name: [{**r, "confidence": r["predicted"], "accuracy": r["observed"]} for r in bins]
        for name, bins in curves.items()
    }
    fig = plots.reliability_figure(
        shown,
        f"{arch}, {split}: reliability of p(malignant), {n}",
        axes=("mean predicted p(malignant)", "observed fraction malignant"),
    )
    plots.save_png(fig, png_dir / f"reliability_{split}.png")


def _reliability_curves(
    y: np.ndarray, p: np.ndarray, calibration: dict, params: Params
) -> dict[str, list[dict]]:
    """Non-empty reliability bins of p(malignant): raw, and temperature-scaled when a temperature
    was fitted (before / after), the one served marked as such."""
    m, n_bins = params.classes.index(POSITIVE), params.evaluate.ece_bins
    t, applied = calibration.get("temperature"), calibration.get("applied")
    probabilities = {"raw": p}
    if t:
        probabilities[f"temperature-scaled T={t:.2f}"] = metrics.apply_temperature(p, t)
    curves = {}
    for name, q in probabilities.items():
        served = (name == "raw") != bool(applied and t)
        label = f"{name} (served)" if served else name
        bins = statistics.reliability_curve(y == m, q[:, m], n_bins)
        curves[label] = [r for r in bins if r["count"]]
    return curves


def _test_images(
    out: Path,
    model: keras.Model,
    features: np.ndarray,
    test: ImageSet,
    p: np.ndarray,
    params: Params,
    arch: str,
) -> None:
    """Sample predictions and Grad-CAM maps of test images, per class."""
    e, classes, y = params.evaluate, params.classes, test.labels
    names = np.asarray(classes)
    captions = [
        f"true {names[t]}\npred {names[k]} {q[k]:.2f}"
        for t, k, q in zip(y, p.argmax(1), p, strict=True)
    ]
    if e.samples_per_class:
        picks = plots.choose_samples(y, p, classes, e.samples_per_class, params.seed)
        fig = plots.image_grid(test.images, picks, captions, f"{arch}, test: sample predictions")
        plots.save_png(fig, out / "samples_test.png")
    picks = {
        f"true {name}": [int(i) for i in np.flatnonzero(y == k)[: e.gradcam_per_class]]
        for k, name in enumerate(classes)
    }
    chosen = sorted(i for idx in picks.values() for i in idx)
    if not chosen:
        return
    maps = cam.maps_from_features(model, features[chosen], p[chosen].argmax(1))
    cells = cam.grid(model)  # each cell drawn where the backbone centres it, not spread evenly
    tiles: dict[int, np.ndarray] = {}  # the image and its overlay side by side
    for i, heat in zip(chosen, maps, strict=True):
        gap = np.full((test.images.shape[1], 2, 3), 255, dtype=np.uint8)
        tiles[i] = np.hstack([test.images[i], gap, cam.overlay(test.images[i], heat, cells=cells)])
    title = f"{arch}, test: class activation maps (Grad-CAM) of the predicted class"
    plots.save_png(plots.image_grid(tiles, picks, captions, title), out / "gradcam_test.png")


def comparison_markdown(results: dict[str, dict], comparison: dict, split: str) -> str:
    """The models side by side on one split, then their paired difference.

    `val` is the development view (`comparison.md`, printed by `make demo`); `test` is the test
    report (`test.md`), headed by how often this test split has been looked at.
    """
    archs = list(results)
    reports = {a: results[a][split] for a in archs}
    first = reports[archs[0]]
    title = "Validation" if split == "val" else "Test"
    lines = [f"# Model comparison: {title.lower()}", ""]
    if split == "test":
        lines += [_test_use_line(first.get("test_use")), ""]
    lines += [
        f"{title}: {first.get('n')} images in {first.get('groups')} groups. Point estimates with "
        "95% cluster-bootstrap intervals (groups resampled within class). Selection uses "
        "validation only.",
        "",
        "| metric | " + " | ".join(archs) + " |",
        "|---" * (len(archs) + 1) + "|",
    ]
    for key, label in LABELS.items():
        cells = [format_estimate(reports[a].get(key)) for a in archs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += _decision_rows(reports, archs)
    lines += ["", *_paired_lines(comparison, split)]
    return "\n".join(lines) + "\n"


def _decision_rows(reports: dict[str, dict], archs: list[str]) -> list[str]:
    """Rows for the served decision (threshold chosen on val) and the lesion-only question."""
    rows = []
    ops = {a: reports[a].get("operating_point") or {} for a in archs}
    lesions = {a: reports[a].get("lesions") or {} for a in archs}
    rows.append("| Malignant threshold (chosen on val) | "
                + " | ".join(_number(ops[a].get("threshold")) for a in archs) + " |")  # fmt: skip
    for key, label in (
        ("sensitivity", "Malignant sensitivity at threshold"),
        ("specificity", "Malignant specificity at threshold"),
        ("ppv", "PPV at threshold (this sample)"),
        ("npv", "NPV at threshold (this sample)"),
        ("ppv_at_prevalence", "PPV at the params prevalence"),
        ("npv_at_prevalence", "NPV at the params prevalence"),
        ("auc", "Malignant vs rest AUC"),
    ):
        rows.append(
            f"| {label} | " + " | ".join(format_estimate(ops[a].get(key)) for a in archs) + " |"
        )
    for key, label in (
        ("auc", "AUC"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
    ):
        cells = [format_estimate(lesions[a].get(key)) for a in archs]
        rows.append(f"| Lesions only (benign vs malignant): {label} | " + " | ".join(cells) + " |")
    return rows


def _paired_lines(comparison: dict, split: str) -> list[str]:
    a, b, paired = comparison["a"], comparison["b"], comparison[split]
    lines = [f"## Paired difference ({a} minus {b}, same images)", ""]
    for key in ("macro_f1", "malignant_auc"):
        d = paired[key]
        verdict = (
            "distinguishable from noise" if d["distinguishable"]
            else "not distinguishable from noise (the interval contains 0)"
        )  # fmt: skip
        lines.append(
            f"- {key}: {format_estimate(d['difference'])} over {d['images']} images in "
            f"{d['groups']} groups: {verdict}."
        )
    mc = paired["mcnemar"]
    lines.append(
        f"- McNemar (argmax decisions): {mc['only_a_correct']} images right only by {a}, "
        f"{mc['only_b_correct']} only by {b}; exact p = {mc['p_value']:.3f} (treats images as "
        "independent, so slightly optimistic with duplicate groups)."
    )
    return lines


def _test_use_line(use: dict | None) -> str:
    if not use:
        return "Test use: not recorded."
    return (
        "**Every look at this test split is counted**: one run per look in MLflow experiment "
        f"`{use['ledger']}` (split sha256 {use['split_sha256'][:12]}); `evaluate` prints the count "
        "and the model card attached to the registered version states it. Every look that informs "
        "a choice makes these numbers more optimistic."
    )


def flat_metrics(report: dict, prefix: str) -> dict[str, float]:
    """MLflow metric names for one split's report: `<prefix>_<path>` (+ `_ci_low`, `_ci_high`).

    Numbers and estimates at any depth; lists (tables, curves) and text are left to the JSON.
    """
    flat: dict[str, float] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict) and "value" in node and "ci_low" in node:
            for part, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                if node[part] is not None:
                    flat[f"{name}{suffix}"] = float(node[part])
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{name}_{_safe_name(str(key))}")
        elif isinstance(node, int | float) and not isinstance(node, bool):
            flat[name] = float(node)

    walk({k: v for k, v in report.items() if k != "subgroups"}, prefix)
    return flat


def _record_test_look(
    params: Params, arch: str, found: dict, test: dict, look: dict[str, str]
) -> None:
    """Log this computation of one model's test metrics in the test ledger (pipeline.ledger)."""
    ledger.record_look(
        params.mlflow.experiment,
        model=f"{arch} (run {found['run_id']})",
        model_sha256=ledger.file_sha256(found["model"]),
        purpose="evaluate: test report",
        metrics=flat_metrics(test, "test"),
        **look,
    )


def _log_to_mlflow(params: Params, inputs: dict[str, dict], results: dict[str, dict]) -> None:
    """Validation only on the training runs: test numbers live in the ledger, not beside them."""
    client = mlflow.MlflowClient()
    for arch, result in results.items():
        run_id = inputs[arch]["run_id"]
        flat = flat_metrics(result["val"], "val")
        # Training logs val_accuracy / val_macro_f1 per epoch; log after its last step so the
        # run's latest value is the one of the saved model, evaluated here.
        clashes = [k for k in flat if k in client.get_run(run_id).data.metrics]
        step = 1 + max(
            (m.step for k in clashes for m in client.get_metric_history(run_id, k)), default=-1
        )
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(flat, step=step)
            _log_settings(client, run_id, params)
            mlflow.log_dict(result["val"], "evaluate/val_metrics.json")
            mlflow.log_artifacts(str(EVALUATE_DIR / arch / "plots"), artifact_path="evaluate/plots")
            mlflow.log_artifact(str(EVALUATE_DIR / "comparison.md"), artifact_path="evaluate")


def _log_settings(client: mlflow.MlflowClient, run_id: str, params: Params) -> None:
    """The evaluate settings as the run's params (`evaluate.<key>`), comparable in the runs table.

    MLflow params are write-once: when the same trained model is evaluated again with other
    settings (only `evaluate` changed, so DVC kept the training), the new values become tags of
    the same name, which the runs table shows too.
    """
    settings = {f"evaluate.{k}": str(v) for k, v in dataclasses.asdict(params.evaluate).items()}
    logged = client.get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in settings.items() if k not in logged})
    mlflow.set_tags({k: v for k, v in settings.items() if k in logged and logged[k] != v})


def _print_summary(results: dict[str, dict], use: dict) -> None:
    """Validation on the terminal; test only as a pointer and a count."""
    for arch, result in results.items():
        val, op = result["val"], result["val"]["operating_point"]
        print(
            f"evaluate {arch}: val macro-F1 {format_estimate(val['macro_f1'])}, malignant "
            f"sensitivity at threshold {format_estimate(op.get('sensitivity'))}"
        )
    print(
        f"evaluate: test figures in {EVALUATE_DIR / 'test.md'} (this test split: "
        f"{use.get('looks', '?')} looks by {use.get('models', '?')} models, recorded in MLflow)"
    )


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
    """The `evaluate` stage's command line (dvc.yaml); a user error is one line and exit code 2."""
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
