"""How sure a figure is: the resampling and the intervals every report uses, in one place.

Two devices, each where it holds:

- **Proportions** (sensitivity, specificity, PPV, NPV, accuracy, the refused share, coverage) get
  an exact Clopper-Pearson interval on the *effective* number of images. A duplicate group is one
  piece of evidence: when the m images of a group are right or wrong together, the variance of a
  proportion over n images is sum(m^2) / n times the independent one (the cluster design effect at
  an intra-group correlation of 1), so the interval is computed as if there were
  n_eff = n^2 / sum(m^2) independent images with the same proportion. That is exact for
  near-duplicates (the BUSI case) and conservative for patient groups whose images disagree. The
  interval never collapses at 0 or 1 (17/17 gives [0.805, 1], not the percentile bootstrap's
  [1, 1]). Chosen by simulation (`bench/proportion_intervals.py`): at 17 and 31 positives, true
  sensitivity 0.90 and 0.95, with and without 40% of images in duplicate pairs, it covered
  97.6-99.1% (2000 repetitions, seed 0), where Wilson on the same n_eff dropped to 91.8% and the
  percentile cluster bootstrap to 50-91%; tests/unit/test_intervals.py keeps it >= 93%.
- **Everything else** (macro-F1, AUC, ECE, Brier, differences between two models) gets a cluster
  bootstrap: a resample is a row of multiplicities W (B, n) that draws whole groups (duplicate
  group, patient group) with replacement within their class, so every statistic is computed for all
  resamples at once with a few matrix products; row 0 of `resamples` is all ones, so the point
  estimate goes through the same code. Its intervals are percentile intervals.

Estimates are `{"value", "ci_low", "ci_high"}`; undefined values (no images to divide by) are
None. `groups` holds any ids per image (None: each image alone).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

Estimate = dict[str, float | None]
LEVEL = 0.95


# --- groups --------------------------------------------------------------------------------------


def group_codes(groups: Any, n: int) -> np.ndarray:
    """Integer group ids 0..G-1 for `groups` (any values); every image alone when None."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups: expected {n} ids, got {len(groups)}")
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


def count_groups(groups: Any, n: int) -> int:
    """Distinct groups among n images (n when there are no group ids)."""
    return int(len(np.unique(group_codes(groups, n))))


def effective_size(
    among: np.ndarray, groups: Any = None, weights: np.ndarray | None = None
) -> float:
    """n^2 / sum over groups of m^2, for the images in `among` (m: a group's images among them).

    `weights` (per image, e.g. a bootstrap row's multiplicities) count an image that many times,
    a group drawn twice being two groups. Equal to n without groups, to the number of groups when
    they are all the same size.
    """
    among = np.asarray(among, dtype=bool)
    w = np.ones(len(among)) if weights is None else np.asarray(weights, dtype=np.float64)
    codes = group_codes(groups, len(among))
    size = np.bincount(codes[among], minlength=int(codes.max(initial=-1)) + 1)
    n = float(w[among].sum())
    squares = float((w[among] * size[codes[among]]).sum())
    return n * n / squares if squares > 0 else 0.0


# --- proportions ---------------------------------------------------------------------------------


def clopper_pearson(hits: Any, total: Any, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided exact interval of hits/total, element-wise; real-valued counts allowed (the
    effective counts of `proportion`). NaN where total is 0."""
    x, n = np.asarray(hits, dtype=np.float64), np.asarray(total, dtype=np.float64)
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(x > 0, stats.beta.ppf(tail, x, n - x + 1), 0.0)
        high = np.where(x < n, stats.beta.ppf(1 - tail, x + 1, n - x), 1.0)
    empty = n <= 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def lower_bound(hits: Any, total: Any, confidence: float) -> np.ndarray:
    """One-sided `confidence` lower bound of hits/total (exact, Clopper-Pearson), element-wise;
    real-valued counts allowed. 0 where hits is 0."""
    x, n = np.asarray(hits, dtype=np.float64), np.asarray(total, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(1 - confidence, x, n - x + 1)
    return np.where(x > 0, bound, 0.0)


def proportion(hits: Any, among: Any, groups: Any = None, level: float = LEVEL) -> Estimate:
    """The share of `among` images that are `hits`, with its interval on the effective n.

    hits, among: booleans per image (hits outside `among` are ignored); groups: ids per image.
    """
    hits, among = np.asarray(hits, dtype=bool), np.asarray(among, dtype=bool)
    n = int(among.sum())
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None}
    value = float((hits & among).sum() / n)
    n_eff = effective_size(among, groups)
    low, high = clopper_pearson(value * n_eff, n_eff, level)
    return {"value": value, "ci_low": float(low), "ci_high": float(high)}


# --- the cluster bootstrap -----------------------------------------------------------------------


def bootstrap_weights(y: np.ndarray, n_resamples: int, seed: int, groups: Any = None) -> np.ndarray:
    """(n_resamples, n) multiplicities of a cluster bootstrap stratified by class.

    Whole groups are drawn with replacement, within the class of each group (its most frequent
    label; ties go to the lower label), each class drawing as many groups as it has; an image's
    multiplicity is how often its group was drawn. Stratifying keeps every class in every
    resample, so per-class recall and one-vs-rest AUC stay defined. `groups=None` makes every
    image its own group: the ordinary stratified bootstrap.
    """
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    codes = group_codes(groups, n)
    n_groups = int(codes.max()) + 1 if n else 0
    votes = np.zeros((n_groups, int(y.max()) + 1 if n else 0))
    np.add.at(votes, (codes, y), 1)
    stratum = votes.argmax(1) if n else np.zeros(0, dtype=int)
    rng = np.random.default_rng(seed)
    draws = []
    for k in np.unique(stratum):
        members = np.flatnonzero(stratum == k)
        draws.append(members[rng.integers(0, len(members), size=(n_resamples, len(members)))])
    idx = np.concatenate(draws, axis=1) if draws else np.zeros((n_resamples, 0), dtype=int)
    offsets = np.arange(n_resamples)[:, None] * n_groups
    counts = np.bincount((idx + offsets).ravel(), minlength=n_resamples * n_groups)
    return counts.reshape(n_resamples, n_groups)[:, codes].astype(np.float64)


def resamples(y: np.ndarray, groups: Any, n_bootstrap: int, seed: int) -> np.ndarray:
    """(1 + n_bootstrap, n) multiplicities: a row of ones (the point estimate), then resamples."""
    ones = np.ones((1, len(y)))
    if n_bootstrap <= 0 or len(y) == 0:
        return ones
    return np.vstack([ones, bootstrap_weights(y, n_bootstrap, seed, groups)])


def percentile_interval(
    samples: np.ndarray, level: float = LEVEL
) -> tuple[float | None, float | None]:
    """The central `level` percentile interval, ignoring undefined (NaN) resamples."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def summarise(values: np.ndarray, level: float = LEVEL) -> Estimate:
    """Estimate from a statistic over `resamples` rows: row 0 the value, the rest the interval."""
    values = np.asarray(values, dtype=np.float64)
    value = finite(values[0])
    if value is None or len(values) == 1:
        return {"value": value, "ci_low": value, "ci_high": value}
    low, high = percentile_interval(values[1:], level)
    return {"value": value, "ci_low": low, "ci_high": high}


def finite(value: Any) -> float | None:
    """A float, or None for NaN and infinities (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None
