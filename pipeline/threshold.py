"""The malignant threshold of the served rule, chosen on validation with a stated guarantee.

What the guarantee says: with probability at least `confidence` over the draw of the validation
set, the *population* sensitivity of the served referral flag (refer = p(malignant) >= t or class
malignant, and never for an image refused as out of scope) is at least `target`, for malignant
images like the validation ones (same site, scanner mix, case mix). It rests on two things the
rule does here and did not before:

- **Groups.** The lower bound is an exact Clopper-Pearson bound on the effective number of
  malignant images, n^2 / sum(m^2) over their duplicate or patient groups (pipeline.intervals): a
  duplicate pair is one piece of evidence. Counting images made the guarantee fail 8.6-9% of the
  time with 40% of images in duplicate pairs (issue 23); tests/unit/test_threshold.py simulates it.
- **Served outcomes.** A validation malignant image the out-of-scope check refuses is a miss
  whatever its p(malignant): it never reaches the flag.

It assumes validation and future malignant cases are exchangeable (the same population): it says
nothing about another site or scanner.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import intervals


def _rule(
    scores: np.ndarray,
    always: np.ndarray,
    answered: np.ndarray,
    weights: np.ndarray,
    size: np.ndarray,
    target: float,
    confidence: float,
) -> tuple[float | None, bool, float | None]:
    """(threshold, guaranteed, lower bound) for the positives of one (re)sample.

    Per positive image: its score, whether the rule flags it whatever the threshold (`always`:
    its class is malignant), whether it is answered (not refused), its multiplicity (`weights`)
    and its group's number of positives (`size`). The threshold is the highest positive score at
    which the lower bound of the flag's sensitivity reaches `target`; when none does, the lowest
    answered positive score (every answered positive flagged) and not guaranteed.
    """
    keep = weights > 0
    scores, always, answered = scores[keep], always[keep], answered[keep]
    weights, size = weights[keep], size[keep]
    n = weights.sum()
    candidates = answered & ~always
    if n == 0 or not answered.any():
        return None, False, None
    n_eff = n * n / float((weights * size).sum())
    base = float(weights[answered & always].sum())  # flagged at any threshold
    order = np.argsort(-scores[candidates], kind="stable")
    s, m = scores[candidates][order], weights[candidates][order]
    if s.size == 0:  # every answered positive is flagged by its class
        low = float(intervals.lower_bound(base / n * n_eff, n_eff, confidence))
        return 1.0, low >= target - 1e-12, low
    hits = base + np.cumsum(m)
    lower = intervals.lower_bound(hits / n * n_eff, n_eff, confidence)
    reach = np.flatnonzero(lower >= target - 1e-12)
    i = int(reach[0]) if reach.size else s.size - 1
    return float(s[i]), bool(reach.size), float(lower[i])


def _between(threshold: float | None, scores: np.ndarray) -> float | None:
    """`threshold` moved halfway down to the next lower validation score (any class).

    `_rule` picks an observed score, so the flag on that very image (p >= t) would hang on float
    rounding (Keras vs ONNX vs INT8 differ by ~1e-7). Every validation decision, and so the
    reported operating point, is the same anywhere in (next lower score, t]; the midpoint is
    the robust choice, as a decision tree's split is.
    """
    if threshold is None:
        return None
    below = scores[scores < threshold]
    return float((threshold + below.max()) / 2) if below.size else threshold


def _positives(
    is_positive: np.ndarray, argmax_flagged: Any, groups: Any, refused: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per positive image: flagged by its class, answered (not refused), and how many positives
    its group holds."""
    always = np.asarray(argmax_flagged, bool)[is_positive]
    n = len(is_positive)
    answered = ~np.asarray(refused, bool) if refused is not None else np.ones(n, bool)
    codes = intervals.group_codes(groups, n)[is_positive]
    return always, answered[is_positive], np.bincount(codes)[codes].astype(np.float64)


def _wording(target: float, confidence: float) -> dict[str, str]:
    """The rule and what it guarantees, in words, for the rule's record and the card."""
    return {
        "rule": (
            f"highest threshold whose one-sided {confidence:.0%} lower confidence bound of "
            f"validation sensitivity of the referral flag reaches {target:.2f}, on the "
            "effective number of malignant images (duplicate groups count once), a refused "
            "image counted as missed"
        ),
        "guarantee": (
            f"with {confidence:.0%} confidence, population sensitivity of the referral flag >= "
            f"{target:.2f} for malignant images like the validation ones (same sites, scanners "
            "and case mix); refusals count as misses"
        ),
    }


def _spread(thresholds: list[float | None]) -> tuple[float | None, float | None]:
    """The 95% percentile interval of the thresholds chosen on resamples (None: not defined)."""
    again = np.array([np.nan if t is None else t for t in thresholds], dtype=np.float64)
    return intervals.percentile_interval(again) if again.size else (None, None)


def choose_threshold(
    y: np.ndarray,
    scores: np.ndarray,
    positive: int,
    argmax_flagged: np.ndarray,
    groups: Any = None,
    refused: np.ndarray | None = None,
    *,
    target: float,
    confidence: float,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The malignant threshold on validation, with the guarantee it gives and whether it gives it.

    Rule: the highest threshold at which the one-sided `confidence` lower bound of validation
    sensitivity of the served flag reaches `target` (module docstring: groups, refusals). A point
    estimate at the target is optimistic on ~30 positives (a 0.90 target gave 0.74 on real test
    data). When validation has too few positives for any threshold to meet it, every answered
    validation positive is flagged and `guaranteed` is False. `argmax_flagged`: images whose class
    answer is malignant (flagged at any threshold); `refused`: images the out-of-scope check
    refuses (never flagged). `threshold_ci_low/high` (`n_bootstrap` > 0): the thresholds the rule
    picks on cluster-resampled validation sets. Each sits halfway below its score (`_between`).
    """
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    is_positive = y == positive
    always, answered, size = _positives(is_positive, argmax_flagged, groups, refused)
    w = intervals.resamples(y, groups, n_bootstrap, seed)[:, is_positive]
    chosen = [_rule(scores[is_positive], always, answered, r, size, target, confidence) for r in w]
    found = [(_between(t, scores), ok, bound) for t, ok, bound in chosen]
    threshold, guaranteed, lower = found[0]
    low, high = _spread([t for t, _, _ in found[1:]])
    flagged = answered & (
        always | (scores[is_positive] >= (np.inf if threshold is None else threshold))
    )
    return {
        **_wording(target, confidence),
        "threshold": threshold,
        "threshold_ci_low": low,
        "threshold_ci_high": high,
        "target": target,
        "confidence": confidence,
        "guaranteed": guaranteed,
        "sensitivity_lower_bound": lower,
        "sensitivity": intervals.finite(flagged.mean()) if flagged.size else None,
        "positives": int(is_positive.sum()),
        "effective_positives": round(intervals.effective_size(is_positive, groups), 2),
        "refused_positives": int((~answered).sum()),
    }
