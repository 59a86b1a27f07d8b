"""pipeline.metrics: values agree with scikit-learn, intervals behave, decisions reach targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline import intervals, metrics

CLASSES = ("benign", "malignant", "normal")


def predictions(n: int, seed: int, skill: float = 1.5, decimals: int | None = None):
    """Labels in BUSI-like proportions and softmax probabilities that favour the true class."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.55, 0.27, 0.18])
    y[:3] = [0, 1, 2]  # every class present
    logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if decimals is not None:  # coarse probabilities: many tied scores
        proba = np.round(proba, decimals)
        proba /= proba.sum(1, keepdims=True)
    return y, proba


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_point_estimates_agree_with_scikit_learn(seed, decimals):
    y, p = predictions(117, seed, decimals=decimals)
    pred = p.argmax(1)
    r = metrics.classification_report(y, p, CLASSES, n_bootstrap=0)

    assert r["n"] == 117
    assert r["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for name, fn in (("f1", skm.f1_score), ("precision", skm.precision_score)):
        expected = fn(y, pred, average="macro", zero_division=0)
        assert r[f"macro_{name}"]["value"] == pytest.approx(expected)
    assert r["macro_recall"]["value"] == pytest.approx(
        skm.recall_score(y, pred, average="macro", zero_division=0)
    )
    assert r["weighted_f1"]["value"] == pytest.approx(
        skm.f1_score(y, pred, average="weighted", zero_division=0)
    )
    assert r["roc_auc_macro"]["value"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert r["brier"]["value"] == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1, 2]))
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=[0, 1, 2], zero_division=0
    )
    for k, name in enumerate(CLASSES):
        row = r["per_class"][name]
        assert row["precision"] == pytest.approx(precision[k])
        assert row["recall"] == pytest.approx(recall[k])
        assert row["f1"] == pytest.approx(f1[k])
        assert row["support"] == support[k]
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
        assert row["average_precision"] == pytest.approx(
            skm.average_precision_score(y == k, p[:, k])
        )
    m = CLASSES.index("malignant")
    assert r["malignant_sensitivity"]["value"] == pytest.approx(recall[m])


def test_a_class_never_predicted_scores_zero_like_scikit_learn():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1]] * 2 + [[0.2, 0.7, 0.1]] * 2 + [[0.6, 0.3, 0.1]] * 2)
    r = metrics.classification_report(y, p, CLASSES, n_bootstrap=0)
    pred = p.argmax(1)
    assert r["per_class"]["normal"]["precision"] == 0.0
    assert r["per_class"]["normal"]["recall"] == 0.0
    assert r["macro_f1"]["value"] == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_specificity_and_malignant_rates_match_a_hand_count():
    # true:  B B B M M N ; predicted: B M B M B N
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 0, 2])
    p = np.eye(3)[pred] * 0.7 + 0.1
    r = metrics.classification_report(y, p, CLASSES, n_bootstrap=0)
    # malignant vs rest: TP 1, FN 1, FP 1 (a benign), TN 3
    assert r["malignant_sensitivity"]["value"] == pytest.approx(1 / 2)
    assert r["malignant_specificity"]["value"] == pytest.approx(3 / 4)
    assert r["per_class"]["malignant"]["specificity"] == pytest.approx(3 / 4)
    # benign vs rest: FP 1 (a malignant) among 3 negatives
    assert r["per_class"]["benign"]["specificity"] == pytest.approx(2 / 3)
    assert r["per_class"]["normal"]["specificity"] == pytest.approx(1.0)


def test_expected_calibration_error_matches_a_hand_computation():
    # top-label confidences 0.95 (right), 0.95 (wrong), 0.65 (right), 0.45 (right), 10 bins
    p = np.array([[0.95, 0.03, 0.02], [0.95, 0.03, 0.02], [0.2, 0.65, 0.15], [0.3, 0.25, 0.45]])
    y = np.array([0, 1, 1, 2])
    # bin (0.9, 1]: 2 images, accuracy 0.5, confidence 0.95 -> |0.5 - 0.95| * 2/4
    # bin (0.6, 0.7]: accuracy 1 vs 0.65 -> 0.35 / 4; bin (0.4, 0.5]: 0.55 / 4
    expected = 0.45 * 2 / 4 + 0.35 / 4 + 0.55 / 4
    assert metrics.expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected)
    rows = metrics.reliability_bins(y, p, n_bins=10)
    assert [r["count"] for r in rows] == [0, 0, 0, 0, 1, 0, 1, 0, 0, 2]
    assert rows[9]["accuracy"] == 0.5
    assert rows[9]["confidence"] == pytest.approx(0.95)


def test_a_perfectly_confident_correct_model_has_zero_brier_and_ece():
    y = np.array([0, 1, 2, 1])
    p = np.eye(3)[y]
    assert metrics.brier_score(y, p) == 0.0
    assert metrics.expected_calibration_error(y, p) == 0.0


def test_confidence_intervals_contain_the_estimate_and_narrow_with_more_images():
    widths = []
    for n in (60, 600):
        y, p = predictions(n, seed=3)
        r = metrics.classification_report(y, p, CLASSES, n_bootstrap=300, seed=0)
        for name in metrics.HEADLINE:
            entry = r[name]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
        widths.append({k: r[k]["ci_high"] - r[k]["ci_low"] for k in metrics.HEADLINE})
    for name in ("accuracy", "macro_f1", "roc_auc_macro", "malignant_sensitivity", "brier"):
        assert widths[1][name] < widths[0][name], name


def test_bootstrap_is_deterministic_for_a_seed():
    y, p = predictions(117, seed=4)
    a = metrics.classification_report(y, p, CLASSES, n_bootstrap=200, seed=7)
    b = metrics.classification_report(y, p, CLASSES, n_bootstrap=200, seed=7)
    c = metrics.classification_report(y, p, CLASSES, n_bootstrap=200, seed=8)
    assert a == b
    assert any(a[k]["ci_low"] != c[k]["ci_low"] for k in metrics.HEADLINE)


def test_no_bootstrap_leaves_only_the_proportions_their_exact_intervals():
    y, p = predictions(50, seed=5)
    groups = np.arange(50) // 2
    r = metrics.classification_report(y, p, CLASSES, n_bootstrap=0, groups=groups)
    shares = {
        "accuracy": (p.argmax(1) == y, np.ones(50, bool)),
        "malignant_sensitivity": (p.argmax(1) == 1, y == 1),
        "malignant_specificity": (p.argmax(1) != 1, y != 1),
    }
    for name in metrics.HEADLINE:
        if name in shares:
            assert r[name] == intervals.proportion(*shares[name], groups)
            assert r[name]["ci_low"] < r[name]["value"] < r[name]["ci_high"]
        else:
            assert r[name]["ci_low"] == r[name]["value"] == r[name]["ci_high"]


def test_bootstrap_resamples_keep_every_class_at_its_size():
    y = np.array([0] * 7 + [1] * 3 + [2] * 1)
    w = intervals.bootstrap_weights(y, 100, seed=0)
    assert w.shape == (100, 11)
    for k, size in ((0, 7), (1, 3), (2, 1)):
        assert np.all(w[:, y == k].sum(1) == size)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_class_missing_from_the_labels_leaves_its_auc_undefined_not_a_crash():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)  # no `normal` image
    p = rng.dirichlet([1, 1, 1], size=20)
    r = metrics.classification_report(y, p, CLASSES, n_bootstrap=100, seed=0)
    assert r["per_class"]["normal"]["roc_auc"] is None
    assert r["per_class"]["normal"]["average_precision"] is None
    expected = np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in (0, 1)])
    assert r["roc_auc_macro"]["value"] == pytest.approx(expected)
    assert r["balanced_accuracy"]["value"] == pytest.approx(
        skm.balanced_accuracy_score(y, p.argmax(1))
    )
    assert all(r[k]["ci_low"] is not None for k in metrics.HEADLINE)


def test_no_malignant_image_gives_null_sensitivity_and_valid_json():
    y = np.array([0, 2, 0, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.3, 0.5, 0.2], [0.2, 0.1, 0.7]])
    r = metrics.jsonable(metrics.classification_report(y, p, CLASSES, n_bootstrap=50))
    assert r["malignant_sensitivity"] == {"value": None, "ci_low": None, "ci_high": None}
    assert metrics.jsonable({"a": [math.nan, np.float32(1.5)]}) == {"a": [None, 1.5]}


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_operating_point_reaches_the_target_sensitivity_with_the_highest_threshold(target):
    rng = np.random.default_rng(int(target * 100))
    positive = rng.random(40) < 0.3
    scores = np.clip(rng.normal(0.3 + 0.4 * positive, 0.2), 0, 1)
    threshold = metrics.sensitivity_threshold(positive, scores, target)
    rates = metrics.threshold_rates(positive, scores, threshold)
    assert rates["sensitivity"] >= target
    higher = scores[positive & (scores > threshold)]
    if higher.size:  # any stricter threshold misses the target
        stricter = metrics.threshold_rates(positive, scores, higher.min())
        assert stricter["sensitivity"] < target
    manual_spec = np.mean(scores[~positive] < threshold)
    assert rates["specificity"] == pytest.approx(manual_spec)


def test_operating_point_is_undefined_without_positives():
    assert metrics.sensitivity_threshold(np.zeros(5, bool), np.linspace(0, 1, 5), 0.9) is None
    assert metrics.threshold_rates(np.zeros(5, bool), np.ones(5), None)["sensitivity"] is None


def test_temperature_scaling_lowers_validation_nll_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = 4.0 * (rng.normal(size=(300, 3)) + 1.2 * np.eye(3)[y])  # sharpened: over-confident
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = metrics.fit_temperature(y, p)
    calibrated = metrics.apply_temperature(p, t)
    assert t > 1.5
    assert metrics.negative_log_likelihood(y, calibrated) < metrics.negative_log_likelihood(y, p)
    assert metrics.expected_calibration_error(y, calibrated) < metrics.expected_calibration_error(
        y, p
    )
    assert np.array_equal(calibrated.argmax(1), p.argmax(1))
    np.testing.assert_allclose(calibrated.sum(1), 1.0)


def test_temperature_of_an_already_calibrated_model_is_near_one():
    rng = np.random.default_rng(1)
    p = rng.dirichlet([2, 2, 2], size=4000)
    y = np.array([rng.choice(3, p=row) for row in p])  # labels drawn from the probabilities
    assert 0.85 < metrics.fit_temperature(y, p) < 1.15
