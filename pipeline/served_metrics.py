"""What the served answers score: every figure of one split, computed from `rule.serve`'s answers.

Why a module of its own: the reports used to score the raw argmax, and `p >= threshold` on every
image, while users got the rule's answers with an out-of-scope refusal in front; a model could
be reported at macro-F1 1.000 while its answers scored less. Here every figure comes from a
`Served` (pipeline.serving.rule.serve), the same function the page, the API and the batch
scorer answer with:

- refusal, stated once: coverage (the answered share) and refused n/N per true class;
- class metrics on the class answer, over every image with a refusal counted wrong (the
  headline: what someone sending these images gets) and on the answered images alone
  (`answered`). A refusal is never a class of its own: macro averages run over the K classes;
- the operating point on the referral flag (`refer`): a refused malignant image is not flagged;
- calibration (ECE, Brier, reliability of p(malignant)) on the served probabilities of the
  answered images: a refused image is shown no probability as an answer.

Decisions are coded as class indices with K (the number of classes) for a refusal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import intervals, metrics, statistics
from pipeline.calibration import calibration_line, reliability_curve
from pipeline.config import Params
from pipeline.serving.rule import DecisionRule, Served

LESION_NEGATIVE = "benign"
MIN_SUBGROUP = 10  # images; smaller subgroups are listed with their n but not estimated
# The class metrics counted over every image (a refusal wrong); the probability metrics of the
# answered images complete pipeline.metrics.HEADLINE.
DECISION_METRICS = tuple(
    name for name in metrics.HEADLINE if name not in metrics.PROBABILITY_METRICS
)


def decisions(served: Served) -> np.ndarray:
    """Class index per image, K (the number of classes) where the image was refused."""
    return served.labels_or(served.probabilities.shape[1])


def proportion(hits: np.ndarray, among: np.ndarray, groups: Any = None) -> dict[str, Any]:
    """n/N of `hits` among `among` (booleans per image) with its exact interval on the effective
    n (pipeline.intervals.proportion: duplicate groups count once)."""
    hits, among = np.asarray(hits, bool), np.asarray(among, bool)
    n, of = int((hits & among).sum()), int(among.sum())
    return {"n": n, "of": of, **intervals.proportion(hits, among, groups)}


def shares(y: np.ndarray, served: Served, positive: int, groups: Any = None) -> dict[str, Any]:
    """The promotion record's shares with their exact 95% intervals on the effective n: the
    referral flag's malignant sensitivity (a refused malignant image not flagged) and coverage.
    The gate's floors compare the values; these say how sure they are."""
    y = np.asarray(y)
    return {
        "malignant_sensitivity": intervals.proportion(served.refer, y == positive, groups),
        "coverage": intervals.proportion(served.answered, np.ones(len(y), bool), groups),
    }


def refusals(
    y: np.ndarray, served: Served, classes: tuple[str, ...], groups: Any = None
) -> dict[str, Any]:
    """Coverage (answered n/N) and refused n/N per true class: the refusal, stated once."""
    y = np.asarray(y)
    return {
        "coverage": proportion(served.answered, np.ones(len(y), bool), groups),
        "refused_by_class": {
            name: proportion(served.refused, y == k, groups) for k, name in enumerate(classes)
        },
    }


def class_metrics(
    y: np.ndarray,
    decided: np.ndarray,
    classes: tuple[str, ...],
    positive: int,
    groups: Any = None,
    *,
    n_bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """The class answer's metrics over every image, a refusal (`decided == K`) counted wrong.

    Per class: precision, recall, F1 and specificity, where a refused image is a miss for its
    true class and a prediction of no class. Macro averages run over the K classes (scikit-
    learn's `labels=range(K)`), balanced accuracy over those present. Intervals as
    pipeline.metrics': exact on the effective n for the shares (accuracy, malignant sensitivity
    and specificity), cluster-bootstrap for the rest. The confusion matrix is K x (K + 1): its
    last column counts the refusals of each true class.
    """
    y, decided, k = np.asarray(y), np.asarray(decided), len(classes)
    w = intervals.resamples(y, groups, n_bootstrap, seed)
    full = metrics.weighted_confusion(w, y, decided, k + 1)[:, :k, :]
    cm = full[:, :, :k]
    tp, support, predicted = np.diagonal(cm, axis1=1, axis2=2), full.sum(2), cm.sum(1)
    negatives = w.sum(1)[:, None] - support
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1e-300), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1e-300), 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1e-300), 0)
        specificity = np.where(negatives > 0, (negatives - predicted + tp) / negatives, np.nan)
        present = support > 0
        values = {
            "accuracy": tp.sum(1) / w.sum(1),
            "balanced_accuracy": (recall * present).sum(1) / present.sum(1),
            "macro_f1": f1.mean(1),
            "macro_precision": precision.mean(1),
            "macro_recall": recall.mean(1),
            "weighted_f1": (f1 * support).sum(1) / support.sum(1),
            "malignant_sensitivity": recall[:, positive],
            "malignant_specificity": specificity[:, positive],
        }
    out: dict[str, Any] = {name: intervals.summarise(values[name]) for name in DECISION_METRICS}
    out |= metrics.proportions(y, decided, positive, groups)  # shares: exact, not the bootstrap
    rates = {"precision": precision, "recall": recall, "f1": f1, "specificity": specificity}
    out["per_class"] = _per_class(rates, y, decided, classes)
    out["confusion_matrix"] = full[0].astype(int).tolist()
    return out


def _per_class(
    rates: dict[str, np.ndarray], y: np.ndarray, decided: np.ndarray, classes: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """Point values per class (row 0 of the resampled rates), support and refusals."""
    k = len(classes)
    return {
        name: {
            **{rate: intervals.finite(values[0, c]) for rate, values in rates.items()},
            "support": int(np.sum(y == c)),
            "refused": int(np.sum((y == c) & (decided == k))),
        }
        for c, name in enumerate(classes)
    }


def split_report(
    y: np.ndarray,
    served: Served,
    rule: DecisionRule,
    params: Params,
    groups: np.ndarray | None = None,
    subgroups: dict[str, tuple[np.ndarray, list[str]]] | None = None,
) -> dict[str, Any]:
    """Every figure of one split from its served answers (see the module doc)."""
    e, classes = params.evaluate, rule.classes
    m = classes.index(rule.positive_class)
    boot = {"n_bootstrap": e.bootstrap, "seed": params.seed}
    y, ans = np.asarray(y), served.answered
    report: dict[str, Any] = {"n": int(len(y)), "groups": intervals.count_groups(groups, len(y))}
    report |= refusals(y, served, classes, groups)
    report |= class_metrics(y, decisions(served), classes, m, groups, **boot)
    answered = metrics.classification_report(
        y[ans], served.probabilities[ans], classes, positive=rule.positive_class,
        n_bins=e.ece_bins, groups=_subset(groups, ans), **boot,
    )  # fmt: skip
    report["answered"] = answered
    report |= {name: answered[name] for name in metrics.PROBABILITY_METRICS}
    p = served.probabilities[:, m]
    report["operating_point"] = statistics.operating_point(
        y, p, rule.threshold, m, groups, flagged=served.refer, prevalence=e.prevalence, **boot
    )
    if LESION_NEGATIVE in classes:
        report["lesions"] = statistics.lesion_operating_point(
            y, p, rule.threshold, m, classes.index(LESION_NEGATIVE), groups,
            flagged=served.refer, prevalence=e.prevalence, **boot,
        )  # fmt: skip
    report["subgroups"] = {
        name: statistics.subgroup_table(
            y,
            decisions(served),
            p,
            rule.threshold,
            m,
            labels,
            order,
            groups,
            flagged=served.refer,
            min_images=MIN_SUBGROUP,
        )  # fmt: skip
        for name, (labels, order) in (subgroups or {}).items()
    }
    return report


def calibration_report(
    y: np.ndarray, raw: np.ndarray, served: Served, calibration: dict[str, Any], m: int, bins: int
) -> dict[str, Any]:
    """The val decision about temperature, and how the raw and the temperature-scaled
    probabilities fare on this split's answered images; the reliability of the served
    p(malignant) there."""
    ans = served.answered
    y, raw = np.asarray(y)[ans], np.asarray(raw)[ans]
    t = calibration.get("temperature")
    scaled = metrics.apply_temperature(raw, t) if t else None
    p = served.probabilities[ans, m]
    ece, brier = metrics.expected_calibration_error, metrics.brier_score
    return {
        **calibration,
        "images": int(ans.sum()),
        "ece_before": ece(y, raw, bins),
        "ece_after": None if scaled is None else ece(y, scaled, bins),
        "brier_before": brier(y, raw),
        "brier_after": None if scaled is None else brier(y, scaled),
        "malignant": {
            "probabilities": "temperature-scaled" if calibration["applied"] else "raw",
            **calibration_line(y == m, p),
            "reliability": reliability_curve(y == m, p, bins),
        },
    }


def paired(
    y: np.ndarray, a: Served, b: Served, positive: int, groups: Any, *, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """Model a minus model b on the same images, from their served answers: macro-F1 of the
    class answer (a refusal wrong, never a class), the AUC of served p(malignant), and McNemar
    on the class answers."""
    boot = {"n_bootstrap": max(n_bootstrap, 1), "seed": seed}
    da, db = decisions(a), decisions(b)
    pa, pb = a.probabilities[:, positive], b.probabilities[:, positive]
    return {
        "macro_f1": statistics.paired_difference(y, da, db, groups, metric="macro_f1", **boot),
        "malignant_auc": statistics.paired_difference(
            y, pa, pb, groups, metric="malignant_auc", positive=positive, **boot
        ),
        "mcnemar": statistics.mcnemar(y, da, db),
    }


def _subset(groups: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    return None if groups is None else np.asarray(groups)[keep]
