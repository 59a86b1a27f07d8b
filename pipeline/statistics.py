"""How sure we are: the malignant decision's rates, refusals by class, paired comparisons of two
models on the same images, the non-inferiority gate and subgroups (the calibration of
p(malignant) is pipeline.calibration's).

pipeline.metrics says what a classifier scores; this module says whether the number can be trusted
and whether a difference is real. The intervals come from pipeline.intervals: exact intervals on
the effective number of images for proportions (rates, shares), a cluster bootstrap (whole groups
drawn within their class, all resamples at once as a multiplicity matrix) for the rest.

Conventions: `y` holds integer labels and `positive` the index of the malignant class; `groups`
holds any ids (None: each image alone); undefined values (no positives, a class missing) are
None. Estimates are `{"value", "ci_low", "ci_high"}` like pipeline.metrics'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from pipeline import intervals, metrics
from pipeline.intervals import count_groups, finite, group_codes, resamples, summarise

Estimate = dict[str, float | None]
# A statistic of per-image outputs under multiplicities: (w (B, n), y, out, positive) -> (B,)
PairedMetric = Callable[[np.ndarray, np.ndarray, np.ndarray, int | None], np.ndarray]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


# --- the malignant decision at a threshold -----------------------------------------------------


def ppv_at(se: float, sp: float, prevalence: float) -> float | None:
    """PPV where a share `prevalence` is malignant (Bayes): se p / (se p + (1 - sp)(1 - p))."""
    num, rest = se * prevalence, (1 - sp) * (1 - prevalence)
    return num / (num + rest) if num + rest > 0 else None


def npv_at(se: float, sp: float, prevalence: float) -> float | None:
    """NPV where a share `prevalence` is malignant: sp (1 - p) / (sp (1 - p) + (1 - se) p)."""
    num, rest = sp * (1 - prevalence), (1 - se) * prevalence
    return num / (num + rest) if num + rest > 0 else None


def decision_rates(
    is_positive: np.ndarray,
    flagged: np.ndarray,
    groups: Any = None,
    prevalence: float | None = None,
    level: float = intervals.LEVEL,
) -> dict[str, Estimate]:
    """Sensitivity, specificity, PPV, NPV of `flagged`, each a proportion with its exact interval
    on the effective n (pipeline.intervals); PPV/NPV also at `prevalence`.

    PPV and NPV in the sample depend on its share of positives (BUSI's is not a clinic's); Bayes'
    rule moves them to a named prevalence. Both rise with sensitivity and with specificity, so
    their interval runs between the values at the two ends of sensitivity's and specificity's
    intervals, each taken at level 1 - (1 - level) / 2: both hold together with >= `level`.
    """
    pos, hit = np.asarray(is_positive, bool), np.asarray(flagged, bool)
    rates = {
        "sensitivity": intervals.proportion(hit, pos, groups, level),
        "specificity": intervals.proportion(~hit, ~pos, groups, level),
        "ppv": intervals.proportion(pos, hit, groups, level),
        "npv": intervals.proportion(~pos, ~hit, groups, level),
    }
    if prevalence is None:
        return rates
    se, sp = rates["sensitivity"]["value"], rates["specificity"]["value"]
    wide = 1 - (1 - level) / 2
    se_box = intervals.proportion(hit, pos, groups, wide)
    sp_box = intervals.proportion(~hit, ~pos, groups, wide)
    for name, at in (("ppv_at_prevalence", ppv_at), ("npv_at_prevalence", npv_at)):
        if se is None or sp is None:
            rates[name] = {"value": None, "ci_low": None, "ci_high": None}
            continue
        ends = [
            at(box_se, box_sp, prevalence)  # type: ignore[arg-type]
            for box_se, box_sp in ((se_box["ci_low"], sp_box["ci_low"]),
                                   (se_box["ci_high"], sp_box["ci_high"]))
        ]  # fmt: skip
        rates[name] = {"value": at(se, sp, prevalence), "ci_low": ends[0], "ci_high": ends[1]}
    return rates


def operating_point(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    positive: int,
    groups: Any = None,
    *,
    flagged: np.ndarray | None = None,
    prevalence: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The decision `scores >= threshold` (malignant vs the rest) with its intervals; `flagged`,
    when given, is the decision instead (the served rule's referral flag, which also refers a
    malignant class answer and never a refused image).

    Returns sensitivity, specificity, PPV, NPV (and at `prevalence`) with exact intervals on the
    effective n (`decision_rates`) and the AUC of `scores` with a cluster-bootstrap interval, each
    an Estimate, with the counts, images and groups the numbers rest on.
    """
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    is_positive = y == positive
    out: dict[str, Any] = {"threshold": threshold, "prevalence": prevalence}
    if threshold is not None or flagged is not None:
        flagged = scores >= threshold if flagged is None else np.asarray(flagged, bool)
        out.update(decision_rates(is_positive, flagged, groups, prevalence))
        out["counts"] = {
            "tp": int(np.sum(is_positive & flagged)),
            "fn": int(np.sum(is_positive & ~flagged)),
            "fp": int(np.sum(~is_positive & flagged)),
            "tn": int(np.sum(~is_positive & ~flagged)),
        }
    w = resamples(y, groups, n_bootstrap, seed)
    out["auc"] = summarise(metrics.weighted_auc(w, is_positive, scores))
    out["images"] = int(len(y))
    out["groups"] = count_groups(groups, len(y))
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
    if options.get("flagged") is not None:
        options["flagged"] = np.asarray(options["flagged"])[keep]
    return operating_point(
        y[keep], np.asarray(scores)[keep], threshold, positive, kept_groups, **options
    )


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
    return fn(w, y, a, positive), fn(w, y, b, positive), count_groups(groups, len(y))


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
    point, rest = finite(d[0]), d[1:][np.isfinite(d[1:])]
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
        metric, margin, alpha, finite(va[0]), finite(vb[0]), point, lower, accepted, reason,
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
    flagged: np.ndarray | None = None,
    min_images: int = 10,
) -> list[dict[str, Any]]:
    """One row per subgroup in `order`: images, groups, and where there are at least `min_images`,
    accuracy of `pred` and malignant sensitivity / specificity of `scores >= threshold` (of
    `flagged` when given, as in `operating_point`).

    Smaller subgroups keep their row (n is always shown) but no estimate: an interval on a handful
    of images says nothing and invites reading noise.
    """
    y, pred, scores = np.asarray(y), np.asarray(pred), np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    ids = group_codes(groups, len(y))
    hit = scores >= (threshold or 0.0) if flagged is None else np.asarray(flagged, bool)
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
            yy, gg = y[inside], ids[inside]
            row["accuracy"] = intervals.proportion(pred[inside] == yy, np.ones(len(yy), bool), gg)
            if threshold is not None or flagged is not None:
                rates = decision_rates(yy == positive, hit[inside], gg)
                row["malignant_sensitivity"] = rates["sensitivity"]
                row["malignant_specificity"] = rates["specificity"]
        rows.append(row)
    return rows
