"""Stage `evaluate`: every model of train.backbones on validation (what development sees) and test
(counted looks).

Only `data/prepared` is read (augmented data never enters evaluation). Each model predicts each
split once; everything below reuses those probabilities and features. On validation, once per
model, the served decision rule is fitted (`fit_rule`): the out-of-distribution threshold,
whether temperature scaling earns its place (cross-validated gain over
`evaluate.temperature_min_improvement`), then the malignant referral threshold on the served
probabilities with a stated guarantee and its bootstrap interval. The rule is written as
`<arch>/rule.json` (DecisionRule.to_dict); select copies the winner's into the release, so what
is reported is what is served.

Every figure is then computed from the served answers (`rule.serve`, pipeline.served_metrics):
refusals per class, class metrics on the class answer, the operating point on the referral flag,
calibration on the served probabilities, subgroups and the paired comparison of the two models.
Figures, tables and markdown are drawn by pipeline.evaluate_report.

What people see during development is validation: the terminal, `reports/evaluate/metrics.json`
(the DVC metrics file, a dozen validation numbers), `comparison.md`, the DVC plots and the training
runs in MLflow. Test numbers are in one place, `reports/evaluate/test.md` (and the `test` section
of each `<arch>/metrics.json`, `<arch>/test/`), and every computation of them is a run in the MLflow
test ledger (pipeline.ledger), counted in the report and the model card.

Out-of-distribution check (pipeline.serving.ood, the function that serves): the statistics of the
pooled backbone features are fitted on the train split of data/prepared (with its left-right
mirrors when augment.flip is on), the threshold is chosen on validation (`evaluate.ood_accept` of
the val images accepted) and written with them to `<arch>/ood.npz` for select; the OOD AUROC
against each family of pipeline.ood_sets (test images vs `evaluate.ood_images` synthetic images
per family) goes into the test report.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline import (
    cam,
    comparison_plots,
    ledger,
    metrics,
    ood_sets,
    paths,
    served_metrics,
    subgroups,
    tracking,
)
from pipeline import evaluate_report as report
from pipeline.calibration import temperature_decision
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.datasets import ImageSet, load_set, read_manifest
from pipeline.errors import UserError
from pipeline.failures import worst_errors
from pipeline.files import staged_dir, write_json, write_text
from pipeline.serving.ood import METHOD, OOD_FILE, OodStatistics, accept_threshold, fit, pool
from pipeline.serving.rule import DecisionRule, Served, calibrate, serve
from pipeline.threshold import choose_threshold

EVALUATE_DIR = paths.EVALUATE_REPORTS
HEADLINE_FILE = EVALUATE_DIR / "metrics.json"
RULE_FILE = "rule.json"  # per model: models/<arch>/rule.json, the DecisionRule select releases
SPLITS = ("val", "test")
PREDICT_BATCH = 64


@dataclasses.dataclass(frozen=True)
class SplitFacts:
    """What the manifest says about a split's images, in load order: groups and subgroups."""

    groups: np.ndarray | None = None
    subgroups: dict[str, tuple[np.ndarray, list[str]]] = dataclasses.field(default_factory=dict)
    image_hashes: tuple[str, ...] = ()
    subgroup_gaps: tuple[str, ...] = ()  # analyses the manifest cannot support, with the reason


@dataclasses.dataclass(frozen=True)
class OodCheck:
    """The fitted out-of-distribution check of one model: its threshold (chosen on val), how it
    was chosen, and the scores of each split's images."""

    threshold: float
    method: str
    scores: dict[str, np.ndarray]


def run(params: Params) -> dict:
    """Score every model on val (what `select` uses) and test (reported once): reports/evaluate/."""
    archs = tuple(params.train.backbones)
    inputs = {arch: _require_inputs(arch) for arch in archs}
    histories = comparison_plots.read_histories(archs)  # the training curves plot's data
    data = {split: _load_split(split, params.classes) for split in SPLITS}
    manifest = read_manifest(paths.MANIFEST)
    facts = {split: split_facts(manifest, split) for split in SPLITS}
    tracking.setup(params.mlflow.experiment)
    for arch in archs:  # fail before the work, not after it
        _require_run(inputs[arch])
    look = {
        "split_sha256": ledger.split_fingerprint(facts["test"].image_hashes),
        "manifest_sha256": ledger.file_sha256(str(paths.MANIFEST)),
    }
    train = _load_split("train", params.classes)  # only for the OOD statistics
    size = data["test"].images.shape[1]
    shown = ood_sets.ood_sets(params.evaluate.ood_images, size, params.seed)
    results, served, rules, kept, fitted = {}, {}, {}, {}, {}
    for arch in archs:
        model = keras.saving.load_model(inputs[arch]["model"], compile=False)
        net = cam.feature_model(model)  # one pass gives probabilities and maps for Grad-CAM
        outputs = {split: predict(net, data[split].images) for split in SPLITS}
        proba = {split: probabilities for split, (_, probabilities) in outputs.items()}
        reference = _ood_reference(train, data["val"].labels, params)
        fitted[arch], found, check = _model_ood(net, outputs, shown, reference)
        rules[arch], results[arch] = evaluate_probabilities(
            data, proba, params, facts, check, look["manifest_sha256"]
        )
        served[arch] = {s: serve(rules[arch], proba[s], check.scores[s]) for s in SPLITS}
        kept[arch] = (model, outputs["test"][0], proba)
        for split in SPLITS:
            results[arch][split]["ood"] = found[split]
    use = _record_test_use(params, inputs, results, look)
    for arch in archs:
        with staged_dir(paths.evaluate_dir(arch)) as out:
            write_json(out / "metrics.json", results[arch])
            write_json(out / RULE_FILE, rules[arch].to_dict())
            fitted[arch].save(out / OOD_FILE)
            model, features, proba = kept[arch]
            report.write_reports(
                out, model, features, data, proba, served[arch], results[arch], params, arch
            )
    _write_comparison(compare_models(data, served, facts, params), results)
    comparison_plots.write(histories, results, params.classes)
    report.log_to_mlflow(params, inputs, results, EVALUATE_DIR)
    report.print_summary(results, use, EVALUATE_DIR)
    return results


def _record_test_use(
    params: Params, inputs: dict[str, dict], results: dict[str, dict], look: dict[str, str]
) -> dict[str, Any]:
    """Record every model's test figures as a look in the ledger, before any is reported, and
    put where the count is kept into each result; the split's use so far."""
    looks = {
        arch: _record_test_look(params, arch, inputs[arch], results[arch]["test"], look)
        for arch in results
    }
    use = ledger.split_use(params.mlflow.experiment, look["split_sha256"])
    # Where the count is kept and this look's row, not the count: it grows with every look, so a
    # rerun on the same data would change the committed reports (select's card for the registry
    # carries it). The row is the same on a rerun that computes the same figures.
    where = {k: use[k] for k in ("file", "ledger", "split_sha256")}
    for arch, found in looks.items():
        row = {k: found[k] for k in ("time_utc", "model_sha256", "purpose")}
        results[arch]["test"]["test_use"] = where | {"look": row}
    return use


def _write_comparison(comparison: dict[str, Any], results: dict[str, dict]) -> None:
    """Every pair's paired comparison, the validation and test tables, and the DVC metrics file."""
    write_json(EVALUATE_DIR / "comparison.json", comparison)
    write_text(
        EVALUATE_DIR / "comparison.md", report.comparison_markdown(results, comparison, "val")
    )
    write_text(EVALUATE_DIR / "test.md", report.comparison_markdown(results, comparison, "test"))
    write_json(HEADLINE_FILE, report.headline(results))


def _ood_reference(
    train: ImageSet, val_labels: np.ndarray, params: Params
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(images, labels, validation labels, accept) the OOD statistics are fitted on: the train
    split, plus its left-right mirrors when training flips images (augment.flip). A flipped scan
    is then in distribution for the classifier, and must be for the detector too: fitted on
    unmirrored scans alone, one demo model refused 4 of 72 scans only once mirrored. The class
    scales come from validation (pipeline.serving.ood)."""
    images, labels = train.images, train.labels
    if params.augment.flip:
        images = np.concatenate([images, images[:, :, ::-1]])
        labels = np.concatenate([labels, labels])
    return images, labels, val_labels, params.evaluate.ood_accept


def _model_ood(
    net: keras.Model,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
    shown: dict[str, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray, np.ndarray, float],
) -> tuple[OodStatistics, dict[str, dict[str, Any]], OodCheck]:
    """`ood_evaluation` of one model: the pooled features of the fitting `reference`
    (`_ood_reference`), of both splits (`outputs`, already predicted) and of each OOD family
    (`shown`)."""
    images, labels, val_labels, accept = reference
    pooled = {name: pool(predict(net, x)[0]) for name, x in shown.items()}
    pooled |= {split: pool(f) for split, (f, _) in outputs.items()}
    pooled["train"] = pool(predict(net, images)[0])
    return ood_evaluation(pooled, labels, accept, val_labels)


def ood_evaluation(
    pooled: dict[str, np.ndarray],
    train_labels: np.ndarray,
    accept: float,
    val_labels: np.ndarray | None = None,
) -> tuple[OodStatistics, dict[str, dict[str, Any]], OodCheck]:
    """Fit the OOD statistics on train, the class scales (`val_labels` given) and the threshold
    on val, measure both splits.

    `pooled`: pooled features of "train", "val", "test" and of each OOD family. Per split: the
    AUROC of the OOD score separating the split's images from each family (1 = always apart)
    and the share of each family refused. The split's own images refused are counted once, with
    the served answers (pipeline.served_metrics.refusals); the check carries their scores.
    """
    fitted = fit(pooled["train"], train_labels)
    if val_labels is not None:  # class-fair: every class's typical image scores about 1
        fitted = fitted.with_class_scales(pooled["val"], val_labels)
    scores = {name: fitted.scores(x) for name, x in pooled.items() if name != "train"}
    threshold = accept_threshold(scores["val"], accept)
    families = [name for name in scores if name not in (*SPLITS, "train")]
    found = {}
    for split in SPLITS:
        inside = scores[split]
        outside = {f: scores[f] for f in families}
        found[split] = {
            "method": METHOD,
            "accept": accept,
            "threshold": threshold,
            "auroc": {f: _auroc(inside, s) for f, s in outside.items()},
            "auroc_all": _auroc(inside, np.concatenate(list(outside.values()))),
            "ood_refused": {f: float((s > threshold).mean()) for f, s in outside.items()},
            "ood_images": {f: len(s) for f, s in outside.items()},
        }
    method = f"{METHOD}; threshold: {accept:.0%} of the validation images accepted"
    check = OodCheck(threshold, method, {split: scores[split] for split in SPLITS})
    return fitted, found, check


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
    """(backbone feature maps, class probabilities (N, K)) of uint8 RGB images, in batches.

    `net` is `cam.feature_model(model)`: the model's own layers, also returning the feature map,
    run as the served engine runs it (`predict_on_batch`, pipeline.serving.engine.KerasEngine),
    so the probabilities and OOD scores reported are bit for bit the ones a release answers with
    on the same batches (tests/integration/test_dvc_repro.py recomputes them through it).
    """
    features, proba = [], []
    for start in range(0, len(images), PREDICT_BATCH):
        batch = images[start : start + PREDICT_BATCH].astype("float32")
        f, p = net.predict_on_batch(batch)
        features.append(np.asarray(f))
        proba.append(np.asarray(p))
    return np.concatenate(features), np.concatenate(proba).astype(np.float64)


def evaluate_probabilities(
    data: dict[str, ImageSet],
    proba: dict[str, np.ndarray],
    params: Params,
    facts: dict[str, SplitFacts] | None = None,
    ood: OodCheck | None = None,
    manifest: str = "",
) -> tuple[DecisionRule, dict]:
    """(the served rule, `{"val": M, "test": M}`): the rule fitted on val only, then every figure
    of each split from its served answers (pipeline.served_metrics).

    `ood`: the fitted OOD check (None: no check, nothing refused); `manifest`: the prepared
    manifest's sha256, recorded in the rule's `chosen_on`.
    """
    facts = facts or {split: SplitFacts() for split in SPLITS}
    rule, calibration, selection = fit_rule(data["val"].labels, proba["val"], params,
                                            facts["val"].groups, ood, manifest)  # fmt: skip
    m = rule.classes.index(rule.positive_class)
    result = {}
    for split in SPLITS:
        y, scores = data[split].labels, None if ood is None else ood.scores[split]
        served = serve(rule, proba[split], scores)
        found = served_metrics.split_report(
            y, served, rule, params, facts[split].groups, facts[split].subgroups
        )
        found["calibration"] = served_metrics.calibration_report(
            y, proba[split], served, calibration, m, params.evaluate.ece_bins
        )
        found["subgroups_not_evaluated"] = list(facts[split].subgroup_gaps)
        ids = [h[:12] for h in facts[split].image_hashes] or data[split].paths
        found["failure_cases"] = worst_errors(y, served, rule.classes, m, ids, facts[split].groups)
        result[split] = found
    result["val"]["operating_point"].update(selection)
    return rule, metrics.jsonable(result)


def fit_rule(
    y: np.ndarray,
    proba: np.ndarray,
    params: Params,
    groups: np.ndarray | None = None,
    ood: OodCheck | None = None,
    manifest: str = "",
) -> tuple[DecisionRule, dict[str, Any], dict[str, Any]]:
    """(rule, calibration decision, threshold selection) from validation labels and probabilities.

    Order matters: calibration is decided first, because temperature scaling changes p(malignant)
    image by image (not monotonically), so the threshold is chosen on the probabilities served.
    """
    e, m = params.evaluate, params.classes.index(params.positive_class)
    calibration = _calibration_choice(y, proba, groups, params)
    temperature = calibration["temperature"] if calibration["applied"] else None
    served = calibrate(proba, temperature)
    flagged = served.argmax(1) == m  # the class answer refers by itself: the threshold adds to it
    refused = None if ood is None else ood.scores["val"] > ood.threshold  # missed, if malignant
    choice = choose_threshold(
        y, served[:, m], m, flagged, groups, refused, target=e.target_sensitivity,
        confidence=e.threshold_confidence, n_bootstrap=e.bootstrap, seed=params.seed,
    )  # fmt: skip
    threshold = choice["threshold"]
    rule = DecisionRule(
        classes=params.classes,
        positive_class=params.positive_class,
        threshold=None if threshold is None else float(threshold),
        temperature=None if temperature is None else float(temperature),
        method=choice["rule"] if threshold is not None else "argmax (no validation positives)",
        chosen_on=f"validation split ({len(y)} images), manifest sha256 {manifest[:12]}",
        ood_threshold=None if ood is None else float(ood.threshold),
        ood_method="" if ood is None else ood.method,
    )
    selection = {"rule": choice["rule"], "selection": choice,
                 "threshold_ci_low": choice["threshold_ci_low"],
                 "threshold_ci_high": choice["threshold_ci_high"]}  # fmt: skip
    return rule, calibration, selection


def _calibration_choice(
    y: np.ndarray, proba: np.ndarray, groups: np.ndarray | None, params: Params
) -> dict[str, Any]:
    e = params.evaluate
    if not e.temperature_scaling:
        return {"temperature": None, "applied": False, "reason": "evaluate.temperature_scaling off"}
    return temperature_decision(
        y,
        proba,
        groups,
        min_improvement=e.temperature_min_improvement,
        bounds=(e.temperature_range[0], e.temperature_range[1]),
        seed=params.seed,
    )


def compare_models(
    data: dict[str, ImageSet],
    served: dict[str, dict[str, Served]],
    facts: dict[str, SplitFacts],
    params: Params,
) -> dict[str, Any]:
    """Every pair of models (in train.backbones order, first minus second) on the same images,
    from their served answers: macro-F1 of the class answer and malignant AUC with paired
    cluster-bootstrap intervals, McNemar's test on the class answers
    (pipeline.served_metrics.paired). `{"pairs": [{"a", "b", "val", "test"}, ...]}`."""
    m = params.classes.index(params.positive_class)
    boot = {"n_bootstrap": params.evaluate.bootstrap, "seed": params.seed}
    pairs = []
    for a, b in itertools.combinations(served, 2):
        pair: dict[str, Any] = {"a": a, "b": b}
        for split in SPLITS:
            y, g = data[split].labels, facts[split].groups
            pair[split] = served_metrics.paired(y, served[a][split], served[b][split], m, g, **boot)
        pairs.append(pair)
    return metrics.jsonable({"pairs": pairs})


def _record_test_look(
    params: Params, arch: str, found: dict, test: dict, look: dict[str, str]
) -> dict[str, str]:
    """Record this computation of one model's test metrics in the test ledger (pipeline.ledger);
    return its row."""
    return ledger.record_look(
        params.mlflow.experiment,
        model=f"{arch} (run {found['run_id']})",
        model_sha256=ledger.file_sha256(found["model"]),
        purpose="evaluate: test report",
        metrics=report.flat_metrics(test, "test"),
        **look,
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
    model_file = paths.model_dir(arch) / "model.keras"
    run_file = paths.model_dir(arch) / "run.json"
    for path in (model_file, run_file):
        if not path.is_file():
            raise UserError(f"{path}: not found; train the models first (dvc repro)")
    try:
        run_id = json.loads(run_file.read_text())["run_id"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{run_file}: expected JSON with a run_id; retrain (dvc repro)") from None
    return {"model": str(model_file), "run_file": str(run_file), "run_id": run_id}


def _load_split(split: str, classes: tuple[str, ...]) -> ImageSet:
    images = load_set(paths.PREPARED, classes, split=split)
    if len(images) == 0:
        raise UserError(
            f"{paths.MANIFEST}: no {split!r} images; check prepare's fractions "
            "and rerun `dvc repro`"
        )
    return images


def main(argv: list[str] | None = None) -> int:
    """The `evaluate` stage's command line (dvc.yaml); a user error is one line and exit code 2."""
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
