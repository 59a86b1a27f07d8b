"""How far to believe p(malignant) and the class probabilities: the reliability curve, the
calibration slope and intercept, and whether a temperature fitted on validation earns its place in
the served rule.

Apart from pipeline.statistics (how sure a rate or a difference is) because calibration asks
another question: not whether a figure can be trusted, but whether the probabilities themselves
mean what they say. The temperature's fit and its scaling live in pipeline.metrics (the served
rule applies them); this module decides whether to serve it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import metrics
from pipeline.intervals import group_codes


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
        mu = 1 / (1 + np.exp(-np.clip(eta, -500, 500)))  # exp(500) is finite in float64
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


def temperature_decision(
    y: np.ndarray,
    proba: np.ndarray,
    groups: Any = None,
    *,
    min_improvement: float,
    bounds: tuple[float, float],
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
    codes = group_codes(groups, len(y))
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
