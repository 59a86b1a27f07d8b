"""External validation figures and their write-up, from the answers the release served.

Every figure comes from the served answers (`class`, `decision.refer`, the calibrated
probabilities), never from the raw model output beside them. Conventions, as everywhere in the
project: refused images (out of scope) are counted per class; class metrics are given on the
answered images and with a refusal counted wrong; the referral flag counts a refused image as not
flagged (a refused malignant is a missed referral). Intervals are pipeline.intervals' over the
site's groups (duplicates, patients where known): exact intervals on the effective n for the
proportions (accuracy, recall, the flag's sensitivity, specificity, PPV, NPV), a cluster bootstrap
stratified by class for macro-F1 and the calibration line.

Calibration of the served probability of the positive class (`positive_class`, the one the
referral flag is about: malignant) on the answered images, in TRIPOD+AI's terms:
calibration-in-the-large (the intercept with the slope fixed at 1; 0 is ideal, below 0 the model
over-predicts malignancy at this site) and the calibration slope (1 is ideal; below 1 the
predictions are too extreme here), each with a bootstrap interval, and observed vs expected share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import intervals, statistics
from pipeline.calibration import calibration_line, reliability_curve

MIN_FOR_CALIBRATION = 10  # answered images with both outcomes; fewer: calibration not estimated


def served(answers: list[dict], classes: tuple[str, ...], positive: str) -> dict[str, np.ndarray]:
    """Per image: class index (len(classes) = refused), refer flag (refused: False) and the
    served probability of the `positive` class, from the answers as every surface returns them."""
    index = {name: i for i, name in enumerate(classes)}
    decided = np.array([index.get(a["class"], len(classes)) for a in answers], np.int64)
    refer = np.array([bool(_refer(a["decision"])) for a in answers], bool)
    p = np.array([a["probabilities"][positive] for a in answers], np.float64)
    return {"decided": decided, "refer": refer, "p_positive": p}


def _refer(decision: dict) -> bool | None:
    """The answer's referral flag (None when refused)."""
    return decision["refer"]


def site_figures(
    y: np.ndarray,
    out: dict[str, np.ndarray],
    groups: np.ndarray,
    classes: tuple[str, ...],
    *,
    positive: str,
    n_bootstrap: int,
    seed: int,
    prevalence: float,
    n_bins: int,
) -> dict[str, Any]:
    """Every figure of one site (module doc) from `served`'s arrays and the true labels;
    `positive`: the class the referral flag and the calibration are about."""
    w = intervals.resamples(y, groups, n_bootstrap, seed)
    k, m = len(classes), classes.index(positive)
    answered = out["decided"] < k
    on = {"w": w, "y": y, "decided": out["decided"], "groups": groups}
    only = {key: (v[:, answered] if key == "w" else v[answered]) for key, v in on.items()}
    referral = statistics.decision_rates(y == m, out["refer"], groups, prevalence)
    return {
        "images": int(len(y)),
        "groups": int(len(set(groups.tolist()))),
        "refusals": _refusals(y, answered, classes),
        "class_metrics": {
            "refusal_counted_wrong": _class_metrics(**on, k=k),
            "answered": _class_metrics(**only, k=k),
        },
        "referral": referral
        | {"prevalence": prevalence, f"refused_{positive}_counted_as": "not referred"},
        "calibration": _calibration(
            w[:, answered], y[answered] == m, out["p_positive"][answered], n_bins
        ),
    }


def _refusals(y: np.ndarray, answered: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    per_class = {
        c: {"refused": int((~answered & (y == i)).sum()), "images": int((y == i).sum())}
        for i, c in enumerate(classes)
    }
    return {"refused": int((~answered).sum()), "answered": int(answered.sum()), **per_class}


def _class_metrics(
    w: np.ndarray, y: np.ndarray, decided: np.ndarray, groups: np.ndarray, k: int
) -> dict[str, Any]:
    """Accuracy and per-class recall (proportions, exact intervals) and macro-F1 over the k
    classes (cluster bootstrap) of the served classes; a decision k (refused) is wrong for its
    image and belongs to no class's column."""
    if not len(y):
        return {"images": 0}
    right = decided == y
    found: dict[str, Any] = {
        "images": int(len(y)),
        "accuracy": intervals.proportion(right, np.ones(len(y), bool), groups),
    }
    found |= {f"recall_{c}": intervals.proportion(right, y == c, groups) for c in range(k)}
    cells = np.eye(k * (k + 1))[y * (k + 1) + decided]  # rows: true class, columns: + refused
    confusion = (w @ cells).reshape(-1, k, k + 1)
    tp = np.diagonal(confusion[:, :, :k], axis1=1, axis2=2)
    truth, called = confusion.sum(2), confusion[:, :, :k].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(truth + called > 0, 2 * tp / (truth + called), np.nan)
    present = (np.bincount(y, minlength=k) > 0)[None, :]
    found["macro_f1"] = intervals.summarise(np.nanmean(np.where(present, f1, np.nan), axis=1))
    return found


def _calibration(w: np.ndarray, positive: np.ndarray, p: np.ndarray, n_bins: int) -> dict:
    """Calibration-in-the-large, slope (bootstrapped), observed vs expected, reliability bins."""
    found: dict[str, Any] = {
        "images": int(len(p)),
        "observed_share": float(positive.mean()) if len(p) else None,
        "expected_share": float(p.mean()) if len(p) else None,
        "reliability": reliability_curve(positive, p, n_bins),
    }
    if len(p) < MIN_FOR_CALIBRATION or positive.all() or not positive.any():
        return found | {"note": "too few answered images of both outcomes to fit"}
    lines = [_line(positive, p, row) for row in w.astype(np.int64)]
    for key, name in (("intercept", "calibration_in_the_large"), ("slope", "slope")):
        v = np.array([np.nan if line[key] is None else line[key] for line in lines])
        found[name] = intervals.summarise(v)
    return found


def _line(positive: np.ndarray, p: np.ndarray, counts: np.ndarray) -> dict:
    """calibration_line on one resample (images repeated by their multiplicity)."""
    rows = np.repeat(np.arange(len(p)), counts)
    return calibration_line(positive[rows], p[rows])


# --- case mix and the internal test figures -----------------------------------------------------


def case_mix(
    labels: np.ndarray, classes: tuple[str, ...], sizes: list[tuple[int, int]], images: np.ndarray
) -> dict[str, Any]:
    """Class shares, original image sizes and the prepared images' grey level (mean and spread
    per image): what TRIPOD+AI asks to compare between development and validation data."""
    n = max(len(labels), 1)
    grey = images.astype(np.float32).mean(axis=3) if len(images) else np.zeros((0, 1, 1))
    return {
        "images": int(len(labels)),
        "class_share": {c: float((labels == i).sum() / n) for i, c in enumerate(classes)},
        "width": _quartiles([w for w, _ in sizes]),
        "height": _quartiles([h for _, h in sizes]),
        "intensity_mean": _quartiles(grey.mean(axis=(1, 2))),
        "intensity_sd": _quartiles(grey.std(axis=(1, 2))),
    }


def _quartiles(values: Any) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"median": None, "q1": None, "q3": None}
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


# (name, path in the site's figures, path in evaluate's test report): the figures compared;
# POSITIVE in a path stands for the positive class's name (evaluate keys its calibration line so)
POSITIVE = "<positive class>"
COMPARED = (
    ("macro-F1 (refusal counted wrong)", ("class_metrics", "refusal_counted_wrong", "macro_f1"),
     ("macro_f1",)),
    ("accuracy (refusal counted wrong)", ("class_metrics", "refusal_counted_wrong", "accuracy"),
     ("accuracy",)),
    ("referral sensitivity", ("referral", "sensitivity"), ("operating_point", "sensitivity")),
    ("referral specificity", ("referral", "specificity"), ("operating_point", "specificity")),
    ("referral PPV", ("referral", "ppv"), ("operating_point", "ppv")),
    ("referral NPV", ("referral", "npv"), ("operating_point", "npv")),
    ("calibration-in-the-large", ("calibration", "calibration_in_the_large"),
     ("calibration", POSITIVE, "intercept")),
    ("calibration slope", ("calibration", "slope"), ("calibration", POSITIVE, "slope")),
)  # fmt: skip


def differences(
    figures: dict[str, Any], internal_test: dict[str, Any], positive: str
) -> list[dict[str, Any]]:
    """External minus internal test, figure by figure (None where either is undefined)."""
    rows = []
    for name, ours, path in COMPARED:
        theirs = tuple(positive if key == POSITIVE else key for key in path)
        a, b = value_at(figures, ours), value_at(internal_test, theirs)
        diff = None if a is None or b is None else a - b
        entry = _at(figures, ours)
        rows.append(
            {
                "figure": name,
                "external": a,
                "external_estimate": entry if isinstance(entry, dict) else None,
                "internal_test": b,
                "difference": diff,
            }
        )
    return rows


def _at(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def value_at(node: Any, path: tuple[str, ...]) -> float | None:
    """The number at `path` in a report (an Estimate's value), or None."""
    node = _at(node, path)
    if isinstance(node, dict):
        node = node.get("value")
    return None if node is None else float(node)


# --- what the promotion record names ------------------------------------------------------------

HEADLINE = {
    "images": ("images",),
    "macro_f1": ("class_metrics", "refusal_counted_wrong", "macro_f1"),
    "malignant_sensitivity": ("referral", "sensitivity"),
    "referral_specificity": ("referral", "specificity"),
    "calibration_in_the_large": ("calibration", "calibration_in_the_large"),
    "calibration_slope": ("calibration", "slope"),
}


def promotion_figures(summary: dict[str, Any], model_sha256: str) -> dict[str, dict] | None:
    """Each site's headline figures from the external stage's summary, when it scored this very
    model (same file hash); None when it scored another one or none. `malignant_sensitivity`
    is the referral flag's, so promote.py's floors read it as they read the test figure."""
    if summary.get("model_sha256") != model_sha256:
        return None
    found = {}
    for site in summary.get("sites") or []:
        figures = {k: value_at(site.get("figures") or {}, p) for k, p in HEADLINE.items()}
        figures["images"] = int(figures["images"] or 0)
        found[site["name"]] = figures
    return found
