"""How sure we are: group-level intervals for the malignant decision, paired comparisons of two
models on the same images, the non-inferiority gate, the operating point and the calibration of
p(malignant).

pipeline.metrics says what a classifier scores; this module says whether the number can be trusted
and whether a difference is real. Both rest on one device: a bootstrap resample is a row of
multiplicities W (B, n) from `metrics.bootstrap_weights`, which draws whole groups (duplicate
group, patient group) stratified by class, so every statistic is computed for all resamples at
once. Row 0 of the matrices below is all ones: the point estimate goes through the same code.

Conventions: `y` holds integer labels and `positive` the index of the malignant class; `groups`
holds any ids (None: each image alone); intervals are percentile intervals of the resamples;
undefined values (no positives, a class missing) are None. Estimates are
`{"value", "ci_low", "ci_high"}` like pipeline.metrics'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from pipeline import metrics

Estimate = dict[str, float | None]
# A statistic of per-image outputs under multiplicities: (w (B, n), y, out, positive) -> (B,)
PairedMetric = Callable[[np.ndarray, np.ndarray, np.ndarray, int | None], np.ndarray]


# --- resampling --------------------------------------------------------------------------------


def resamples(y: np.ndarray, groups: Any, n_bootstrap: int, seed: int) -> np.ndarray:
    """(1 + n_bootstrap, n) multiplicities: a row of ones (the point estimate), then resamples."""
    ones = np.ones((1, len(y)))
    if n_bootstrap <= 0 or len(y) == 0:
        return ones
    return np.vstack([ones, metrics.bootstrap_weights(y, n_bootstrap, seed, groups)])


def summarise(values: np.ndarray, level: float = 0.95) -> Estimate:
    """Estimate from a statistic over `resamples` rows: row 0 the value, the rest the interval."""
    values = np.asarray(values, dtype=np.float64)
    value = _float(values[0])
    if value is None or len(values) == 1:
        return {"value": value, "ci_low": value, "ci_high": value}
    low, high = metrics.percentile_interval(values[1:], level)
    return {"value": value, "ci_low": low, "ci_high": high}


def _float(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


# --- the malignant decision at a threshold -----------------------------------------------------


def binary_rates(
    w: np.ndarray, is_positive: np.ndarray, flagged: np.ndarray, prevalence: float | None = None
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV of `flagged` per row of w; PPV/NPV also at `prevalence`.

    PPV and NPV in the sample depend on its share of positives (BUSI's is not a clinic's); Bayes'
    rule moves them to a named prevalence: PPV = se p / (se p + (1 - sp)(1 - p)).
    """
    pos, hit = np.asarray(is_positive, bool), np.asarray(flagged, bool)
    tp, fn = w @ (pos & hit), w @ (pos & ~hit)
    fp, tn = w @ (~pos & hit), w @ (~pos & ~hit)
    rates = {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }
    if prevalence is not None:
        se, sp, p = rates["sensitivity"], rates["specificity"], prevalence
        rates["ppv_at_prevalence"] = _ratio(se * p, se * p + (1 - sp) * (1 - p))
        rates["npv_at_prevalence"] = _ratio(sp * (1 - p), sp * (1 - p) + (1 - se) * p)
    return rates


def operating_point(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    positive: int,
    groups: Any = None,
    *,
    prevalence: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The decision `scores >= threshold` (malignant vs the rest) with cluster-bootstrap intervals.

    Returns sensitivity, specificity, PPV, NPV (and at `prevalence`) and the AUC of `scores`, each
    an Estimate, with the counts, images and groups the numbers rest on.
    """
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    is_positive = y == positive
    w = resamples(y, groups, n_bootstrap, seed)
    out: dict[str, Any] = {"threshold": threshold, "prevalence": prevalence}
    if threshold is not None:
        flagged = scores >= threshold
        for name, values in binary_rates(w, is_positive, flagged, prevalence).items():
            out[name] = summarise(values)
        out["counts"] = {
            "tp": int(np.sum(is_positive & flagged)),
            "fn": int(np.sum(is_positive & ~flagged)),
            "fp": int(np.sum(~is_positive & flagged)),
            "tn": int(np.sum(~is_positive & ~flagged)),
        }
    out["auc"] = summarise(metrics.weighted_auc(w, is_positive, scores))
    out["images"] = int(len(y))
    out["groups"] = metrics.count_groups(groups, len(y))
    return out


def lesion_operating_point(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    positive: int,
    negative: int,
    groups: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """`operating_point` among lesions only: malignant vs benign, normal images left out.

    The clinical question is benign or malignant for a lesion someone found; counting normal scans
    as negatives flatters specificity and AUC with easy cases.
    """
    y = np.asarray(y)
    keep = (y == positive) | (y == negative)
    kept_groups = None if groups is None else np.asarray(groups)[keep]
    return operating_point(
        y[keep], np.asarray(scores)[keep], threshold, positive, kept_groups, **options
    )


# --- choosing the threshold on validation ------------------------------------------------------


def clopper_pearson_lower(hits: np.ndarray, total: float, confidence: float) -> np.ndarray:
    """One-sided lower confidence bound of a proportion hits/total (exact, Clopper-Pearson)."""
    hits = np.asarray(hits, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(1 - confidence, hits, total - hits + 1)
    return np.where(hits > 0, bound, 0.0)


def _rule(
    pos_scores: np.ndarray, pos_weights: np.ndarray, argmax_hits: float, target: float, conf: float
) -> tuple[float | None, bool, float | None, bool]:
    """(threshold, guaranteed, lower bound, raised to argmax) for positives with multiplicities.

    The threshold is the score of the k-th highest positive, k the fewest flagged positives whose
    lower bound reaches `target` (all of them when none does: then not guaranteed), raised to as
    many positives as the argmax decision flags when that is more.
    """
    order = np.argsort(-pos_scores, kind="stable")
    s, m = pos_scores[order], pos_weights[order]
    s, m = s[m > 0], m[m > 0]
    if s.size == 0:
        return None, False, None, False
    cum = np.cumsum(m)
    lower = clopper_pearson_lower(cum, cum[-1], conf)
    reach = np.flatnonzero(lower >= target - 1e-12)
    i = int(reach[0]) if reach.size else s.size - 1
    need = int(np.flatnonzero(cum >= argmax_hits - 1e-9)[0]) if argmax_hits > 0 else 0
    chosen = max(i, need)
    return float(s[chosen]), bool(reach.size), float(lower[chosen]), need > i


def choose_threshold(
    y: np.ndarray,
    scores: np.ndarray,
    positive: int,
    argmax_flagged: np.ndarray,
    *,
    target: float,
    confidence: float,
) -> dict[str, Any]:
    """The malignant threshold on validation, with the guarantee it gives and whether it gives it.

    Rule: the highest threshold at which the one-sided `confidence` Clopper-Pearson lower bound of
    validation sensitivity reaches `target`. A point estimate at the target is optimistic on ~30
    positives (a 0.90 target gave 0.74 on real test data). When validation has too few positives
    for any threshold to meet it, every validation positive is flagged and `guaranteed` is False.
    The threshold is never less sensitive on validation than the argmax decision; when the rule
    alone would have been, `raised_to_argmax` says so.
    """
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    is_positive, argmax_flagged = y == positive, np.asarray(argmax_flagged, bool)
    hits = float(np.sum(is_positive & argmax_flagged))
    threshold, guaranteed, lower, raised = _rule(
        scores[is_positive], np.ones(int(is_positive.sum())), hits, target, confidence
    )
    flagged = scores >= threshold if threshold is not None else np.zeros(len(y), bool)
    return {
        "rule": (
            f"highest threshold whose one-sided {confidence:.0%} lower confidence bound of "
            f"validation sensitivity reaches {target:.2f}; never less sensitive than argmax"
        ),
        "threshold": threshold,
        "target": target,
        "confidence": confidence,
        "guaranteed": guaranteed,
        "sensitivity_lower_bound": lower,
        "sensitivity": _float(flagged[is_positive].mean()) if is_positive.any() else None,
        "argmax_sensitivity": _float(hits / is_positive.sum()) if is_positive.any() else None,
        "raised_to_argmax": raised,
        "positives": int(is_positive.sum()),
    }


def threshold_interval(
    y: np.ndarray,
    scores: np.ndarray,
    positive: int,
    argmax_flagged: np.ndarray,
    groups: Any = None,
    *,
    target: float,
    confidence: float,
    n_bootstrap: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile interval of the threshold `choose_threshold` picks on resampled validation sets.

    How far the operating point would move with another validation set of the same size: the
    threshold itself is an estimate.
    """
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    is_positive = y == positive
    flagged_positive = (is_positive & np.asarray(argmax_flagged, bool)).astype(np.float64)
    w = resamples(y, groups, n_bootstrap, seed)[1:]
    found = [
        _rule(scores[is_positive], row[is_positive], row @ flagged_positive, target, confidence)[0]
        for row in w
    ]
    values = np.array([np.nan if t is None else t for t in found], dtype=np.float64)
    return metrics.percentile_interval(values, level) if len(values) else (None, None)


# --- calibration of p(malignant) ---------------------------------------------------------------


def reliability_curve(is_positive: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Equal-width bins of p: edges, count, mean predicted, observed frequency (None if empty)."""
    return metrics.binned_means(p, is_positive, n_bins, ("predicted", "observed"))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), metrics.EPS, 1 - metrics.EPS)
    return np.log(p) - np.log1p(-p)


def _logistic(design: np.ndarray, y: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """Maximum-likelihood coefficients of a logistic model (Newton); None when they diverge."""
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        eta = offset + design @ beta
        mu = 1 / (1 + np.exp(-eta))
        hessian = design.T @ (design * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, design.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.all(np.isfinite(beta)) or np.abs(beta).max() > 1e3:
            return None  # separation: the outcome is perfectly predicted, no finite fit
        if np.abs(step).max() < 1e-10:
            return beta
    return None


def calibration_line(is_positive: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """Calibration slope and intercept of p (logistic recalibration on logit p).

    slope: b in logit P(y) = a + b logit p (1 is ideal; below 1, predictions are too extreme).
    intercept: a with the slope fixed at 1, calibration-in-the-large (0 is ideal; below 0, risks
    are overestimated on average). Both None when the data separate perfectly or lack a class.
    """
    y = np.asarray(is_positive, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return {"slope": None, "intercept": None}
    x = _logit(p)
    joint = _logistic(np.column_stack([np.ones_like(x), x]), y, np.zeros_like(x))
    large = _logistic(np.ones((len(x), 1)), y, x)
    return {
        "slope": None if joint is None else float(joint[1]),
        "intercept": None if large is None else float(large[0]),
    }


TEMPERATURE_RANGE = (0.5, 5.0)  # evaluate.temperature_range's default; README "Calibration"


def temperature_decision(
    y: np.ndarray,
    proba: np.ndarray,
    groups: Any = None,
    *,
    min_improvement: float,
    bounds: tuple[float, float] = TEMPERATURE_RANGE,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit a temperature on validation and decide whether it earns its place in the served rule.

    The search is bounded to `bounds` (evaluate.temperature_range). A fit that ends on the lower
    bound is never served: validation NLL still falls as T shrinks, which is what a validation set
    the model already separates perfectly (every image's true class on top) does for every T,
    down to T -> 0, so the data say nothing about how sharp the probabilities should be, and
    sharpening there turns the first wrong answer on new data into a near-certain one. A fit on
    the upper bound is served if it passes the test below: softening errs towards doubt.

    A temperature fitted on validation always improves validation NLL in-sample, so the gain is
    measured out of fold: groups are split into `folds`, each fold scored with the temperature
    fitted on the others. `applied` is True only when that cross-validated NLL falls by at least
    `min_improvement` nats per image; otherwise the raw probabilities are served.
    """
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    codes = metrics.group_codes(groups, len(y))
    n_groups = int(codes.max()) + 1 if len(y) else 0
    temperature = metrics.fit_temperature(y, proba, bounds)
    record: dict[str, Any] = {
        "temperature": temperature,
        "min_improvement": min_improvement,
        "bounds": [float(b) for b in bounds],
    }
    if _runs_to_lower_bound(y, proba, temperature, bounds[0]):
        return {**record, **_lower_bound_refusal(y, proba, bounds[0])}
    if n_groups < 2:
        return {**record, "applied": False, "reason": "fewer than two groups to cross-validate"}
    before = metrics.negative_log_likelihood(y, proba)
    after = _out_of_fold_nll(y, proba, codes, bounds, folds, seed)
    applied = before - after >= min_improvement
    verdict = "applied" if applied else "not applied"
    return {
        **record,
        "applied": bool(applied),
        "cv_nll_before": before,
        "cv_nll_after": after,
        "improvement": before - after,
        "reason": f"{verdict}: cross-validated NLL {before:.4f} -> {after:.4f} "
        f"(gain {before - after:+.4f}, required {min_improvement:.4f})",
    }


def _lower_bound_refusal(y: np.ndarray, proba: np.ndarray, low: float) -> dict[str, Any]:
    """The record of a fit that ran to the lower bound: not served, and why."""
    right = int((proba.argmax(1) == y).sum())
    return {
        "temperature": float(low),
        "applied": False,
        "reason": f"not applied: the fit runs to the lower bound T={low:g} "
        f"(evaluate.temperature_range) and would sharpen further ({right} of {len(y)} "
        "validation images have their true class on top): validation cannot say how sharp "
        "the probabilities should be, so the raw ones are served",
    }


def _out_of_fold_nll(
    y: np.ndarray,
    proba: np.ndarray,
    codes: np.ndarray,
    bounds: tuple[float, float],
    folds: int,
    seed: int,
) -> float:
    """Mean NLL per image, each fold of groups (`codes`) scored with the temperature fitted on
    the other folds."""
    n_groups = int(codes.max()) + 1
    fold_of = np.random.default_rng(seed).permutation(n_groups)[codes] % min(folds, n_groups)
    total = 0.0
    for f in np.unique(fold_of):
        held = fold_of == f
        t = metrics.fit_temperature(y[~held], proba[~held], bounds)
        scored = metrics.apply_temperature(proba[held], t)
        total += metrics.negative_log_likelihood(y[held], scored) * held.sum()
    return float(total / len(y))


def _runs_to_lower_bound(y: np.ndarray, proba: np.ndarray, fitted: float, low: float) -> bool:
    """Whether the sharpest allowed temperature fits validation as well as the fitted one: then
    NLL is still falling at the bound (on a separated set it reaches 0 in floating point before
    it, so the optimiser may stop anywhere on that flat floor; comparing losses catches both)."""
    if not len(y) or fitted >= 1 or low >= 1:
        return False

    def nll(t: float) -> float:
        return metrics.negative_log_likelihood(y, metrics.apply_temperature(proba, t))

    return nll(low) <= nll(fitted) + 1e-9


# --- two models on the same images --------------------------------------------------------------


def _decisions_rate(
    w: np.ndarray, y: np.ndarray, out: np.ndarray, positive: int | None, of: bool
) -> np.ndarray:
    """Sensitivity (of=True) or specificity (of=False) of the decisions `out == positive`."""
    if positive is None:
        raise ValueError("positive: the index of the malignant class is needed for this metric")
    hit, among = (out == positive) == of, (y == positive) == of
    return _ratio(w @ (hit & among), w @ among)


PAIRED_METRICS: dict[str, PairedMetric] = {
    # `out` holds class decisions (ints) for these ...
    "accuracy": lambda w, y, out, pos: _ratio(w @ (out == y), w.sum(1)),
    "macro_f1": lambda w, y, out, pos: metrics.weighted_macro_f1(w, y, out),
    "malignant_sensitivity": lambda w, y, out, pos: _decisions_rate(w, y, out, pos, True),
    "malignant_specificity": lambda w, y, out, pos: _decisions_rate(w, y, out, pos, False),
    # ... and p(malignant) for this one
    "malignant_auc": lambda w, y, out, pos: metrics.weighted_auc(w, y == pos, out),
}


def _paired_values(
    y: Any, a: Any, b: Any, groups: Any, metric: str, positive: int | None, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    if metric not in PAIRED_METRICS:
        raise ValueError(f"metric: {metric!r} is not one of {sorted(PAIRED_METRICS)}")
    y, a, b = np.asarray(y), np.asarray(a), np.asarray(b)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"paired outputs need one value per image: {len(y)}, {len(a)}, {len(b)}")
    w = resamples(y, groups, n, seed)  # the same resamples for both models: that is the pairing
    fn = PAIRED_METRICS[metric]
    return fn(w, y, a, positive), fn(w, y, b, positive), metrics.count_groups(groups, len(y))


def paired_difference(
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    groups: Any = None,
    *,
    metric: str,
    positive: int | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """metric(a) - metric(b) on the same images, with a paired cluster-bootstrap interval.

    Pairing removes what both models share (which images are hard), so the interval of the
    difference is much narrower than two separate intervals suggest. `distinguishable` is False
    when the interval contains 0: the data cannot tell the models apart on this metric.
    """
    va, vb, n_groups = _paired_values(y, a, b, groups, metric, positive, n_bootstrap, seed)
    diff = summarise(va - vb, level)
    low, high = diff["ci_low"], diff["ci_high"]
    return {
        "metric": metric,
        "a": summarise(va, level),
        "b": summarise(vb, level),
        "difference": diff,
        "level": level,
        "distinguishable": low is not None and high is not None and (low > 0 or high < 0),
        "images": int(len(y)),
        "groups": n_groups,
    }


def mcnemar(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired decisions: do the models err on different images by chance?

    Only discordant images count (one model right, the other wrong); under no difference each is
    equally likely to favour either model, so the two-sided p-value is binomial(1/2). It treats
    images as independent: with duplicate groups the p-value is somewhat too small.
    """
    y = np.asarray(y)
    right_a, right_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    discordant = only_a + only_b
    p = stats.binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p)}


@dataclass(frozen=True)
class NonInferiority:
    """The promotion gate's record: the difference, its one-sided bound, and the decision."""

    metric: str
    margin: float
    alpha: float
    challenger: float | None
    champion: float | None
    difference: float | None
    lower_bound: float | None
    accepted: bool
    reason: str
    images: int
    groups: int
    n_bootstrap: int

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data, for reports/promotion.json and the version's tags."""
        return asdict(self)


def non_inferiority(
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    groups: Any = None,
    *,
    margin: float,
    metric: str = "macro_f1",
    positive: int | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> NonInferiority:
    """Accept the challenger when it is shown to be at most `margin` worse than the champion.

    d = metric(challenger) - metric(champion) on the same images; its one-sided (1 - alpha) lower
    bound is the alpha percentile of a paired cluster bootstrap. Accept iff that bound > -margin.
    The burden of proof is on the challenger: a small test set yields a wide interval and a
    refusal, never a promotion by default. `challenger`/`champion` hold class decisions of the
    served rule for decision metrics, p(malignant) for `malignant_auc` (see PAIRED_METRICS).
    """
    va, vb, n_groups = _paired_values(
        y, challenger, champion, groups, metric, positive, n_bootstrap, seed
    )
    d = va - vb
    point, rest = _float(d[0]), d[1:][np.isfinite(d[1:])]
    lower = float(np.percentile(rest, 100 * alpha)) if rest.size and point is not None else None
    accepted = lower is not None and lower > -margin
    if lower is None:
        reason = f"{metric} is undefined on these images: refused"
    else:
        verb = "accepted" if accepted else "refused"
        sign = ">" if accepted else "<="
        reason = (
            f"{verb}: {metric} difference {point:+.4f}, one-sided {1 - alpha:.0%} lower bound "
            f"{lower:+.4f} {sign} -{margin:.4f} (margin) on {len(np.asarray(y))} images in "
            f"{n_groups} groups"
        )
    return NonInferiority(
        metric, margin, alpha, _float(va[0]), _float(vb[0]), point, lower, accepted, reason,
        int(len(y)), n_groups, n_bootstrap,
    )  # fmt: skip


# --- subgroups ---------------------------------------------------------------------------------


def subgroup_table(
    y: np.ndarray,
    pred: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    positive: int,
    labels: np.ndarray,
    order: list[str],
    groups: Any = None,
    *,
    min_images: int = 10,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per subgroup in `order`: images, groups, and where there are at least `min_images`,
    accuracy of `pred` and malignant sensitivity / specificity of `scores >= threshold`.

    Smaller subgroups keep their row (n is always shown) but no estimate: an interval on a handful
    of images says nothing and invites reading noise.
    """
    y, pred, scores = np.asarray(y), np.asarray(pred), np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    ids = metrics.group_codes(groups, len(y))
    rows = []
    for name in order:
        inside = labels == name
        row: dict[str, Any] = {
            "subgroup": name,
            "images": int(inside.sum()),
            "groups": int(len(np.unique(ids[inside]))),
        }
        if row["images"] < min_images:
            row["note"] = f"fewer than {min_images} images: not estimated"
        else:
            yy = y[inside]
            w = resamples(yy, ids[inside], n_bootstrap, seed)
            row["accuracy"] = summarise(_ratio(w @ (pred[inside] == yy), w.sum(1)))
            if threshold is not None:
                rates = binary_rates(w, yy == positive, scores[inside] >= threshold)
                row["malignant_sensitivity"] = summarise(rates["sensitivity"])
                row["malignant_specificity"] = summarise(rates["specificity"])
        rows.append(row)
    return rows
