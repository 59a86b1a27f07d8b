"""Classification metrics from predicted probabilities, with group-level bootstrap intervals.

Pure functions: numpy arrays in, plain dicts of floats out (NaN becomes None so JSON stays valid).
`y` holds integer labels in `classes` order and `proba` is (n, K) with rows summing to one.

Why the bootstrap is written by hand: a resample is a vector of multiplicities (how often each
original prediction was drawn), so every metric here is computed from a weight matrix W (B, n)
with a few matrix products. 500 resamples of ~120 predictions then take milliseconds, where
calling scikit-learn 500 times for each of eleven metrics takes tens of seconds. The point
estimate is the same code with a single row of ones, and the tests check it against scikit-learn.

Conventions (scikit-learn's unless said otherwise):
- precision / recall / F1 of a class with a zero denominator are 0 (`zero_division=0`); macro
  averages run over the classes that occur in the labels or the predictions (scikit-learn's
  default `labels=None`); balanced accuracy averages recall over the classes present in `y`.
- ROC-AUC is one-vs-rest (Mann-Whitney, ties count one half); undefined (None) for a class that
  is absent or is everything; the macro average runs over the defined classes.
- Brier score is the multi-class one: mean over images of sum_k (p_k - onehot_k)^2, in [0, 2].
- ECE uses the top-label confidence and `n_bins` equal-width bins (0, 1/M], ..., ((M-1)/M, 1]:
  sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|.
- Malignant sensitivity / specificity treat `positive` vs the rest, with the argmax decision.

Intervals (pipeline.intervals): the proportions of the headline (accuracy, malignant sensitivity
and specificity) get the exact interval on the effective number of images; the other metrics a
cluster bootstrap. Either way the unit is the group (`groups`, prepare's duplicate group and later
the patient group), not the image: near-identical images in one split are one piece of evidence;
resampling them one by one made nominal 95% intervals cover 88.5% when 40% of test images were
duplicate pairs (tests/unit/test_statistics.py simulates it). Without `groups` every image is its
own group.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import average_precision_score, roc_curve

from pipeline.intervals import bootstrap_weights, count_groups, percentile_interval, proportion

HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "weighted_f1",
    "roc_auc_macro",
    "malignant_sensitivity",
    "malignant_specificity",
    "brier",
    "ece",
)
# Those of HEADLINE that score probabilities, not answers: a refused image has no place in them.
PROBABILITY_METRICS = ("roc_auc_macro", "brier", "ece")
EPS = 1e-12  # probabilities are clipped to [EPS, 1] before taking logs


def classification_report(
    y: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    positive: str = "malignant",
    n_bootstrap: int = 500,
    seed: int = 0,
    n_bins: int = 10,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Headline metrics with 95% CIs, per-class metrics and the confusion matrix of one split.

    Returns `{headline: {"value", "ci_low", "ci_high"}, "n", "groups", "per_class",
    "confusion_matrix"}`. Accuracy and malignant sensitivity / specificity are proportions: their
    CI is exact on the effective number of images (`intervals.proportion`). The others' CI is the
    2.5-97.5 percentile interval of `n_bootstrap` cluster resamples stratified by class (see
    `intervals.bootstrap_weights`) seeded by `seed`; with `n_bootstrap=0` it collapses to the
    point estimate.
    """
    y, proba = _check(y, proba, classes)
    pos = list(classes).index(positive) if positive in classes else None
    shares = proportions(y, proba.argmax(1), pos, groups)
    point, per_class = _weighted_metrics(np.ones((1, len(y))), y, proba, pos, n_bins)
    if n_bootstrap > 0 and len(y) > 0:
        weights = bootstrap_weights(y, n_bootstrap, seed, groups)
        resampled, _ = _weighted_metrics(weights, y, proba, pos, n_bins)
    else:
        resampled = None
    report = _headline_estimates(point, resampled, shares)
    report["n"] = int(len(y))
    report["groups"] = count_groups(groups, len(y))
    report["per_class"] = _per_class_report(per_class, y, proba, classes)
    report["confusion_matrix"] = confusion_matrix(y, proba.argmax(1), len(classes)).tolist()
    return report


def _headline_estimates(
    point: dict[str, np.ndarray], resampled: dict[str, np.ndarray] | None, shares: dict
) -> dict[str, Any]:
    """Each headline metric as an estimate: the shares' exact ones, the bootstrap for the rest."""
    report: dict[str, Any] = {}
    for name in HEADLINE:
        value = _float(point[name][0])
        if name in shares:
            report[name] = shares[name]
        elif resampled is None or value is None:
            report[name] = {"value": value, "ci_low": value, "ci_high": value}
        else:
            low, high = percentile_interval(resampled[name])
            report[name] = {"value": value, "ci_low": low, "ci_high": high}
    return report


def _per_class_report(
    per_class: dict[str, np.ndarray], y: np.ndarray, proba: np.ndarray, classes: Any
) -> dict[str, dict[str, Any]]:
    """Point values per class (row 0 of `_weighted_metrics`' per-class arrays) and support."""
    return {
        name: {
            "precision": _float(per_class["precision"][0, k]),
            "recall": _float(per_class["recall"][0, k]),
            "f1": _float(per_class["f1"][0, k]),
            "specificity": _float(per_class["specificity"][0, k]),
            "roc_auc": _float(per_class["roc_auc"][0, k]),
            "average_precision": average_precision(y == k, proba[:, k]),
            "support": int(np.sum(y == k)),
        }
        for k, name in enumerate(classes)
    }


def proportions(
    y: np.ndarray, pred: np.ndarray, pos: int | None, groups: Any
) -> dict[str, dict[str, float | None]]:
    """The headline metrics that are shares of images (accuracy, malignant sensitivity and
    specificity of the class decisions `pred`), each with its exact interval on the effective n.
    A decision that is no class (a refusal coded K) is wrong, and not malignant."""
    everyone = np.ones(len(y), bool)
    out = {"accuracy": proportion(pred == y, everyone, groups)}
    if pos is not None:
        out["malignant_sensitivity"] = proportion(pred == pos, y == pos, groups)
        out["malignant_specificity"] = proportion(pred != pos, y != pos, groups)
    return out


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes), rows = true class, columns = predicted class."""
    flat = np.asarray(y) * n_classes + np.asarray(pred)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def brier_score(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean of sum_k (p_k - onehot_k)^2 (0 is perfect, 2 the worst)."""
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    return float(np.mean(np.sum((proba - np.eye(proba.shape[1])[y]) ** 2, axis=1)))


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE with equal-width bins: sum_b (n_b / n) |accuracy_b - confidence_b|."""
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    headline, _ = _weighted_metrics(np.ones((1, len(y))), y, proba, None, n_bins)
    return float(headline["ece"][0])


def reliability_bins(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """One row per equal-width bin: edges, count, mean confidence, accuracy (None when empty)."""
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    return binned_means(proba.max(1), proba.argmax(1) == y, n_bins, ("confidence", "accuracy"))


def binned_means(
    scores: np.ndarray, outcome: np.ndarray, n_bins: int, names: tuple[str, str]
) -> list[dict[str, Any]]:
    """Equal-width bins (0, 1/M], ...: edges, count, and the mean score and mean outcome in each
    (None when empty), under `names`: the rows of any reliability diagram."""
    scores, outcome = np.asarray(scores, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    which = _bin_index(scores, n_bins)
    rows = []
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        rows.append(
            {
                "bin_low": b / n_bins,
                "bin_high": (b + 1) / n_bins,
                "count": count,
                names[0]: float(scores[inside].mean()) if count else None,
                names[1]: float(outcome[inside].mean()) if count else None,
            }
        )
    return rows


def average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """scikit-learn's average precision (step-wise, no interpolation); None without positives."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if not is_positive.any():
        return None
    return float(average_precision_score(is_positive, scores))


def roc_points(
    y: np.ndarray, proba: np.ndarray, classes: tuple[str, ...] | list[str]
) -> list[dict]:
    """One-vs-rest ROC curve points: rows `{class, fpr, tpr}` for classes with both outcomes."""
    rows = []
    for k, name in enumerate(classes):
        positive = np.asarray(y) == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, k])
        rows += [
            {"class": name, "fpr": float(f), "tpr": float(t)} for f, t in zip(fpr, tpr, strict=True)
        ]
    return rows


def sensitivity_threshold(
    is_positive: np.ndarray, scores: np.ndarray, target: float
) -> float | None:
    """The highest threshold t with sensitivity(scores >= t) >= target (so the best specificity).

    With P positives that is the k-th highest positive score, k = ceil(target * P). None when
    there are no positives to choose on.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    positives = np.sort(np.asarray(scores, dtype=np.float64)[is_positive])[::-1]
    if positives.size == 0:
        return None
    k = max(1, math.ceil(target * positives.size - 1e-9))
    return float(positives[k - 1])


def threshold_rates(is_positive: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict:
    """Sensitivity and specificity of the decision `scores >= threshold` (None when undefined)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if threshold is None:
        return {"threshold": None, "sensitivity": None, "specificity": None}
    flagged = np.asarray(scores) >= threshold
    sens = flagged[is_positive].mean() if is_positive.any() else math.nan
    spec = (~flagged[~is_positive]).mean() if (~is_positive).any() else math.nan
    return {"threshold": float(threshold), "sensitivity": _float(sens), "specificity": _float(spec)}


def negative_log_likelihood(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean -log p(true class), with probabilities clipped at 1e-12."""
    p = np.clip(np.asarray(proba, dtype=np.float64)[np.arange(len(y)), np.asarray(y)], EPS, 1.0)
    return float(-np.mean(np.log(p)))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens over-confident probabilities; the argmax is unchanged."""
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(
    y: np.ndarray, proba: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The temperature that minimises NLL on (y, proba): a bounded 1-D search over log T.

    The model's output is softmax, so log-probabilities stand in for logits (they differ by a
    per-image constant, which softmax ignores).
    """
    y = np.asarray(y)
    if len(y) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        return negative_log_likelihood(y, apply_temperature(proba, math.exp(log_t)))

    low, high = math.log(bounds[0]), math.log(bounds[1])
    found = minimize_scalar(loss, bounds=(low, high), method="bounded")
    best = math.exp(found.x)
    return best if loss(found.x) <= loss(0.0) else 1.0


def jsonable(value: Any) -> Any:
    """Replace NaN / inf with None and numpy scalars with Python ones, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _float(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _check(y: Any, proba: Any, classes: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y), len(classes)):
        raise ValueError(f"proba: expected shape ({len(y)}, {len(classes)}), got {proba.shape}")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"y: labels must be in [0, {len(classes)})")
    return y, proba


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # bins (0, 1/M], ..., ((M-1)/M, 1]; a confidence of exactly 0 (impossible for a top label)
    # would land in the first bin.
    return np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)


def _safe_div(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def _weighted_metrics(
    w: np.ndarray, y: np.ndarray, proba: np.ndarray, pos: int | None, n_bins: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every metric for each row of the multiplicity matrix w (B, n).

    Returns ({headline name: (B,)}, {per-class name: (B, K)}).
    """
    k = proba.shape[1]
    total = w.sum(1)
    cm = weighted_confusion(w, y, proba.argmax(1), k)
    per_class = _per_class_rates(cm, total)
    per_class["roc_auc"] = np.stack(
        [weighted_auc(w, y == c, proba[:, c]) for c in range(k)], axis=1
    )
    headline = _headline(cm, total, per_class, pos)
    headline["brier"] = (w @ np.sum((proba - np.eye(k)[y]) ** 2, axis=1)) / total
    headline["ece"] = _weighted_ece(w, y, proba, n_bins) / total
    return headline, per_class


def _per_class_rates(cm: np.ndarray, total: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and specificity (B, K) of confusion matrices cm (B, K, K); 0 where a
    class is never predicted or never present, specificity NaN when every image is of the class."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(2)
    predicted = cm.sum(1)
    negatives = total[:, None] - support
    return {
        "precision": _safe_div(tp, predicted, 0.0),
        "recall": _safe_div(tp, support, 0.0),
        "f1": _safe_div(2 * tp, support + predicted, 0.0),
        "specificity": _safe_div(negatives - (predicted - tp), negatives, np.nan),
    }


def _headline(
    cm: np.ndarray, total: np.ndarray, per_class: dict[str, np.ndarray], pos: int | None
) -> dict[str, np.ndarray]:
    """The (B,) headline metrics but the calibration ones. Macro averages run over the classes
    present or predicted (scikit-learn's `labels` of y and pred), balanced accuracy over those
    present; the malignant figures are NaN without a positive class."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(2)
    seen = (support + cm.sum(1)) > 0
    present = support > 0
    precision, recall, f1 = per_class["precision"], per_class["recall"], per_class["f1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no class defines an AUC
        auc_macro = np.nanmean(per_class["roc_auc"], axis=1)
    missing = np.full(len(cm), np.nan)
    return {
        "accuracy": tp.sum(1) / total,
        "balanced_accuracy": (recall * present).sum(1) / present.sum(1),
        "macro_f1": (f1 * seen).sum(1) / seen.sum(1),
        "macro_precision": (precision * seen).sum(1) / seen.sum(1),
        "macro_recall": (recall * seen).sum(1) / seen.sum(1),
        "weighted_f1": _safe_div((f1 * support).sum(1), support.sum(1), np.nan),
        "roc_auc_macro": auc_macro,
        "malignant_sensitivity": missing
        if pos is None
        else _safe_div(tp[:, pos], support[:, pos], np.nan),
        "malignant_specificity": missing if pos is None else per_class["specificity"][:, pos],
    }


def _weighted_ece(w: np.ndarray, y: np.ndarray, proba: np.ndarray, n_bins: int) -> np.ndarray:
    """Sum over confidence bins of |correct - confidence|, weighted by w (B, n); / total = ECE."""
    pred = proba.argmax(1)
    conf = proba.max(1)
    in_bin = np.eye(n_bins)[_bin_index(conf, n_bins)]
    gap = w @ (in_bin * (pred == y)[:, None]) - w @ (in_bin * conf[:, None])
    return np.abs(gap).sum(1)


def weighted_confusion(w: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices (B, k, k) of decisions `pred`, one per row of multiplicities w (B, n)."""
    return (w @ np.eye(k * k)[np.asarray(y) * k + np.asarray(pred)]).reshape(-1, k, k)


def weighted_macro_f1(w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Macro-F1 of decisions `pred` per row of w, over the classes of `y` (scikit-learn's
    `labels=np.unique(y)`): a decision that is no class of y, such as a refusal coded K, is a
    miss for its true class and never a class of its own."""
    k = int(max(np.max(y, initial=0), np.max(pred, initial=0))) + 1
    cm = weighted_confusion(w, y, pred, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    both = cm.sum(2) + cm.sum(1)
    labels = np.unique(y)
    return _safe_div(2 * tp[:, labels], both[:, labels], 0.0).mean(1)


def weighted_auc(w: np.ndarray, is_positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC per row of w, as the weighted Mann-Whitney statistic (ties = 1/2)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ws = w[:, order]
    pos_w = np.add.reduceat(ws * is_positive[order], starts, axis=1)
    neg_w = np.add.reduceat(ws * ~is_positive[order], starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    pairs = pos_w.sum(1) * neg_w.sum(1)
    return _safe_div((pos_w * (neg_below + 0.5 * neg_w)).sum(1), pairs, np.nan)
