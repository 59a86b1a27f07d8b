"""pipeline.threshold: the malignant threshold keeps its stated guarantee on the served flag,
with duplicate groups counted once and refused images counted as missed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline import threshold


def test_the_threshold_rule_states_and_keeps_its_guarantee():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(120, int), np.zeros(200, int)]
    scores = np.r_[rng.beta(5, 2, 120), rng.beta(2, 5, 200)]
    argmax = scores > 0.9  # these are flagged by their class whatever the threshold
    rule = threshold.choose_threshold(
        y, scores, 1, argmax, target=0.85, confidence=0.95, n_bootstrap=200
    )
    assert rule["guaranteed"]
    hits = np.sum(scores[y == 1] >= rule["threshold"])
    lower = stats.beta.ppf(0.05, hits, 120 - hits + 1)  # Clopper-Pearson, one-sided 95%
    assert lower >= 0.85
    assert rule["sensitivity_lower_bound"] == pytest.approx(lower)
    assert rule["effective_positives"] == 120
    # the next higher threshold would not keep the guarantee
    positives = np.sort(scores[y == 1])
    chosen = positives[positives >= rule["threshold"]][0]  # the threshold sits just below it
    above = positives[positives > chosen][0]
    fewer = np.sum(scores[y == 1] >= above)
    assert stats.beta.ppf(0.05, fewer, 120 - fewer + 1) < 0.85
    assert "population sensitivity" in rule["guarantee"]
    low, high = rule["threshold_ci_low"], rule["threshold_ci_high"]
    assert low <= rule["threshold"] <= high
    assert low < high


def test_too_few_positives_flag_them_all_and_say_the_guarantee_is_not_met():
    y = np.r_[np.ones(17, int), np.zeros(40, int)]  # the demo's 17 malignant validation images
    scores = np.linspace(0, 1, 57)
    rule = threshold.choose_threshold(y, scores, 1, scores > 0.9, target=0.9, confidence=0.95)
    assert not rule["guaranteed"]  # 17/17 has a 95% lower bound of 0.838 < 0.9
    assert rule["threshold"] == scores[y == 1].min()  # no lower score to sit halfway to
    assert rule["sensitivity"] == 1.0


def test_the_threshold_sits_between_validation_scores_so_rounding_flips_no_decision():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30, int), np.zeros(60, int)]
    scores = np.r_[rng.beta(5, 2, 30), rng.beta(2, 5, 60)].astype(np.float32).astype(float)
    rule = threshold.choose_threshold(y, scores, 1, scores > 2, target=0.8, confidence=0.95)
    t = rule["threshold"]
    on = scores[y == 1][scores[y == 1] >= t].min()  # the positive score the rule chose
    assert np.array_equal(scores >= t, scores >= on)  # the same validation decisions
    for shift in (-1e-6, 1e-6):  # another engine's rounding moves no image across it
        assert np.array_equal(scores + shift >= t, scores >= t)


def test_a_malignant_class_answer_is_flagged_whatever_the_threshold():
    y = np.r_[np.ones(400, int), np.zeros(100, int)]
    scores = np.r_[np.linspace(0.2, 1, 400), np.linspace(0, 0.3, 100)]
    # some malignant images with a low p(malignant) still get the malignant class (three classes)
    malignant_class = (y == 1) & (scores < 0.5)
    alone = threshold.choose_threshold(y, scores, 1, scores > 2, target=0.5, confidence=0.95)
    helped = threshold.choose_threshold(y, scores, 1, malignant_class, target=0.5, confidence=0.95)
    # the positives the class already flags count as found: the threshold can sit higher
    assert helped["threshold"] > alone["threshold"]
    assert helped["sensitivity_lower_bound"] >= 0.5


def test_a_refused_malignant_image_counts_as_missed():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(100, int), np.zeros(100, int)]
    scores = np.r_[rng.beta(5, 2, 100), rng.beta(2, 5, 100)]
    refused = np.zeros(200, bool)
    refused[np.argsort(-scores[:100])[:5]] = True  # five of the surest malignant images
    kept = threshold.choose_threshold(y, scores, 1, scores > 2, target=0.8, confidence=0.95)
    served = threshold.choose_threshold(
        y, scores, 1, scores > 2, None, refused, target=0.8, confidence=0.95
    )
    assert served["refused_positives"] == 5
    assert served["threshold"] < kept["threshold"]  # more answered images must be flagged
    flagged = (scores >= served["threshold"]) & ~refused
    assert served["sensitivity"] == pytest.approx(flagged[:100].mean())
    hits = flagged[:100].sum()
    assert served["sensitivity_lower_bound"] == pytest.approx(
        stats.beta.ppf(0.05, hits, 101 - hits)
    )


def test_a_duplicate_pair_counts_once():
    y = np.ones(60, int)
    scores = np.linspace(0, 1, 60)
    pairs = np.repeat(np.arange(30), 2)  # 60 images, 30 pairs
    alone = threshold.choose_threshold(y, scores, 1, scores > 2, target=0.8, confidence=0.95)
    grouped = threshold.choose_threshold(
        y, scores, 1, scores > 2, pairs, target=0.8, confidence=0.95
    )
    assert grouped["effective_positives"] == 30
    assert grouped["threshold"] < alone["threshold"]


def guarantee_failures(seed: int, reps: int, pair_share: float, n_positives: int, grouped: bool):
    """Share of validation sets whose guaranteed threshold has population sensitivity < target.

    Each group of malignant images (a duplicate pair shares one score) draws its score from
    Beta(5, 2); the population sensitivity at t is then P(score >= t) = 1 - F(t), known exactly.
    """
    rng = np.random.default_rng(seed)
    pairs = round(n_positives * pair_share / 2)
    sizes = np.r_[np.full(pairs, 2), np.ones(n_positives - 2 * pairs, int)]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    y = np.ones(n_positives, int)
    never = np.zeros(n_positives, bool)
    met = failed = 0
    for _ in range(reps):
        scores = rng.beta(5, 2, len(sizes))[groups]
        rule = threshold.choose_threshold(
            y, scores, 1, never, groups if grouped else None, target=0.9, confidence=0.95
        )
        if rule["guaranteed"]:
            met += 1
            failed += stats.beta.sf(rule["threshold"], 5, 2) < 0.9
    return failed / max(met, 1), met / reps


@pytest.mark.parametrize("n_positives", [60, 120])
def test_the_guarantee_fails_at_most_5_percent_with_40_percent_duplicate_pairs(n_positives):
    # 1200 validation sets: a standard error of 0.6 points at 5%. Measured with 1500 (seeds 0-2):
    # at 120 positives the grouped rule fails 3.3-3.8%, the image-counting rule it replaced
    # 6.3-6.5%; at 60 both choose the same threshold (59 of 60 found) and fail 3.5-3.7%.
    seed = int(np.random.default_rng().integers(1000))
    failed, met = guarantee_failures(seed, 1200, 0.4, n_positives, grouped=True)
    assert met > 0.9, f"seed {seed}: guarantee met in only {met:.2f} of the sets"
    assert failed <= 0.05, f"seed {seed}: the guarantee failed in {failed:.3f}"
