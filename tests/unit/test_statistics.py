"""pipeline.statistics: intervals that cover the truth, a gate that refuses a worse model, and
every number checked against scikit-learn or scipy where one exists."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from pipeline import intervals, statistics

MALIGNANT = 1


def duplicate_test_set(n_images: int, pair_fraction: float, rng: np.random.Generator):
    """Labels and group ids of a test split where `pair_fraction` of images are duplicate pairs.

    Group classes are fixed in BUSI-like proportions (55/27/18), as prepare's stratified split
    fixes them, and both images of a pair share their class.
    """
    n_pairs = round(n_images * pair_fraction / 2)
    n_groups = n_images - n_pairs
    counts = [round(n_groups * 0.55), round(n_groups * 0.27)]
    group_class = np.repeat([0, 1, 2], [*counts, n_groups - sum(counts)])
    size = np.r_[np.full(n_pairs, 2), np.ones(n_groups - n_pairs, int)]
    rng.shuffle(size)
    groups = np.repeat(np.arange(n_groups), size)
    return group_class[groups], groups, group_class


def interval_coverage(seed: int, reps: int, grouped: bool, n_images: int = 200) -> float:
    """How often the 95% bootstrap interval of accuracy contains the true accuracy.

    A duplicate pair is one piece of evidence: both copies are right or wrong together.
    """
    rng = np.random.default_rng(seed)
    y, groups, group_class = duplicate_test_set(n_images, 0.4, rng)
    p_correct = np.array([0.85, 0.70, 0.90])  # per class, so the truth is known exactly
    truth = p_correct[y].mean()
    covered = 0
    for _ in range(reps):
        correct = (rng.random(len(group_class)) < p_correct[group_class])[groups]
        w = intervals.bootstrap_weights(
            y, 1000, int(rng.integers(2**31)), groups if grouped else None
        )
        low, high = intervals.percentile_interval((w @ correct) / w.sum(1))
        covered += low <= truth <= high
    return covered / reps


@pytest.mark.slow
def test_group_bootstrap_intervals_cover_95_percent_when_40_percent_are_duplicate_pairs():
    # 2000 repetitions: the coverage estimate has a standard error of 0.5 points, and each seed
    # also draws its own test set, so seeds spread further (seed 17 gave 92.9%: a random seed made
    # this test fail about once in twenty runs). Measured for seeds 0-3: 94.9, 95.3, 94.6, 94.0% at
    # 200 images (about 94% at 120 images, where the percentile interval of a proportion near 0.8
    # is slightly short whatever the resampling unit). The seed is fixed so the test is a
    # specification, not a lottery.
    seed = 0
    coverage = interval_coverage(seed, reps=2000, grouped=True)
    assert 0.93 <= coverage <= 0.97, f"seed {seed}: coverage {coverage:.3f}"
    # resampling images instead of groups is what this replaced: it covers about 90% here
    assert interval_coverage(seed, reps=1000, grouped=False) < 0.93


def test_group_bootstrap_draws_whole_groups_within_their_class():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    groups = np.array(["a", "a", "b", "c", "c", "d", "e", "e"])
    w = intervals.bootstrap_weights(y, 300, seed=1, groups=groups)
    assert np.all(w[:, 0] == w[:, 1])
    assert np.all(w[:, 3] == w[:, 4])
    assert np.all(w[:, 6] == w[:, 7])
    # every class draws as many groups as it has: benign a, b; malignant c; normal d, e
    assert np.all(w[:, 0] + w[:, 2] == 2)
    assert np.all(w[:, 3] == 1)
    assert np.all(w[:, 5] + w[:, 6] == 2)
    assert w[:, 0].std() > 0  # and which ones varies
    assert intervals.count_groups(groups, len(y)) == 5


def gate_cases(seed: int, n_images: int, deficit: float, reps: int, margin: float) -> float:
    """Share of simulated promotions the gate accepts when the challenger's true accuracy is
    `deficit` below the champion's (a duplicate-pair test set like BUSI's)."""
    rng = np.random.default_rng(seed)
    y, groups, group_class = duplicate_test_set(n_images, 0.3, rng)
    accepted = 0
    for _ in range(reps):
        champion_right = rng.random(len(group_class)) < 0.80
        # the challenger errs where the champion does, plus on `deficit / 0.8` of the rest
        lost = rng.random(len(group_class)) < deficit / 0.80
        challenger_right = champion_right & ~lost
        champion = np.where(champion_right[groups], y, (y + 1) % 3)
        challenger = np.where(challenger_right[groups], y, (y + 1) % 3)
        record = statistics.non_inferiority(
            y, challenger, champion, groups, margin=margin, metric="accuracy",
            n_bootstrap=400, seed=int(rng.integers(2**31)),
        )  # fmt: skip
        accepted += record.accepted
    return accepted / reps


@pytest.mark.parametrize("n_images", [63, 117])
def test_the_gate_refuses_a_challenger_truly_worse_by_twice_the_margin(n_images):
    seed = int(np.random.default_rng().integers(1000))
    accepted = gate_cases(seed, n_images, deficit=0.10, reps=300, margin=0.05)
    assert accepted <= 0.05, f"seed {seed}: accepted {accepted:.3f}"


def test_the_gate_accepts_an_identical_challenger_and_records_why():
    rng = np.random.default_rng(0)
    y, groups, _ = duplicate_test_set(117, 0.3, rng)
    same = np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 3)
    record = statistics.non_inferiority(y, same, same, groups, margin=0.05)
    assert record.accepted
    assert record.difference == 0
    assert record.lower_bound == 0
    assert record.images == 117
    assert record.groups == len(np.unique(groups))
    assert "accepted" in record.reason
    assert set(record.as_dict()) >= {"lower_bound", "margin"}
    worse = np.where(rng.random(len(y)) < 0.5, (y + 1) % 3, same)
    refused = statistics.non_inferiority(y, worse, same, groups, margin=0.05)
    assert not refused.accepted
    assert "refused" in refused.reason
    assert refused.difference == pytest.approx(
        skm.f1_score(y, worse, average="macro") - skm.f1_score(y, same, average="macro")
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 90)
    a, b = rng.integers(0, 3, 90), np.where(rng.random(90) < 0.7, y, rng.integers(0, 3, 90))
    pa, pb = rng.random(90), rng.random(90) + (y == MALIGNANT)
    cases = {
        "macro_f1": (a, b, lambda out: skm.f1_score(y, out, average="macro")),
        "accuracy": (a, b, lambda out: skm.accuracy_score(y, out)),
        "malignant_sensitivity": (a, b, lambda out: skm.recall_score(y == 1, out == 1)),
        "malignant_specificity": (a, b, lambda out: skm.recall_score(y != 1, out != 1)),
        "malignant_auc": (pa, pb, lambda out: skm.roc_auc_score(y == 1, out)),
    }
    for metric, (first, second, reference) in cases.items():
        d = statistics.paired_difference(
            y, first, second, metric=metric, positive=MALIGNANT, n_bootstrap=200
        )
        assert d["a"]["value"] == pytest.approx(reference(first)), metric
        assert d["difference"]["value"] == pytest.approx(reference(first) - reference(second))
        assert d["difference"]["ci_low"] <= d["difference"]["value"] <= d["difference"]["ci_high"]


def test_a_real_difference_is_distinguishable_and_an_equal_one_is_not():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.9, y, (y + 1) % 3)
    poor = np.where(rng.random(300) < 0.5, y, (y + 1) % 3)
    assert statistics.paired_difference(y, good, poor, metric="macro_f1")["distinguishable"]
    assert not statistics.paired_difference(y, good, good, metric="macro_f1")["distinguishable"]


def test_mcnemar_matches_the_exact_binomial_test_on_discordant_pairs():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 120)
    a = np.where(rng.random(120) < 0.8, y, (y + 1) % 3)
    b = np.where(rng.random(120) < 0.6, y, (y + 2) % 3)
    result = statistics.mcnemar(y, a, b)
    only_a = int(np.sum((a == y) & (b != y)))
    only_b = int(np.sum((a != y) & (b == y)))
    assert (result["only_a_correct"], result["only_b_correct"]) == (only_a, only_b)
    # two-sided exact p from the binomial tail, computed independently of scipy's binomtest
    k, n = min(only_a, only_b), only_a + only_b
    tail = sum(stats.binom.pmf(i, n, 0.5) for i in range(k + 1))
    assert result["p_value"] == pytest.approx(min(1.0, 2 * tail))
    assert statistics.mcnemar(y, a, a)["p_value"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_operating_point_rates_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, 117, p=[0.55, 0.27, 0.18])
    scores = np.clip(rng.normal(0.3 + 0.4 * (y == 1), 0.2), 0, 1)
    op = statistics.operating_point(y, scores, 0.5, MALIGNANT, prevalence=0.1, n_bootstrap=300)
    truth, flagged = y == 1, scores >= 0.5
    tn, fp, fn, tp = skm.confusion_matrix(truth, flagged).ravel()
    assert op["sensitivity"]["value"] == pytest.approx(skm.recall_score(truth, flagged))
    assert op["specificity"]["value"] == pytest.approx(tn / (tn + fp))
    assert op["ppv"]["value"] == pytest.approx(skm.precision_score(truth, flagged))
    assert op["npv"]["value"] == pytest.approx(tn / (tn + fn))
    assert op["auc"]["value"] == pytest.approx(skm.roc_auc_score(truth, scores))
    assert op["counts"] == {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
    se, sp = op["sensitivity"]["value"], op["specificity"]["value"]
    assert op["ppv_at_prevalence"]["value"] == pytest.approx(se * 0.1 / (se * 0.1 + (1 - sp) * 0.9))
    for name in ("sensitivity", "specificity", "ppv", "npv", "ppv_at_prevalence", "auc"):
        assert op[name]["ci_low"] <= op[name]["value"] <= op[name]["ci_high"], name

    lesions = statistics.lesion_operating_point(y, scores, 0.5, MALIGNANT, 0, n_bootstrap=0)
    keep = y != 2
    assert lesions["images"] == keep.sum()
    assert lesions["auc"]["value"] == pytest.approx(skm.roc_auc_score(y[keep] == 1, scores[keep]))
    assert lesions["specificity"]["value"] == pytest.approx((scores[y == 0] < 0.5).mean())


def test_subgroups_below_ten_images_show_n_but_no_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    labels = np.array(["large"] * 32 + ["small"] * 8, dtype=object)
    rows = statistics.subgroup_table(
        y, y, (y == 1).astype(float), 0.5, 1, labels, ["small", "large"]
    )
    small, large = rows
    assert small["images"] == 8
    assert "accuracy" not in small
    assert "fewer than 10" in small["note"]
    assert large["images"] == 32
    assert large["accuracy"]["value"] == 1.0
    assert large["malignant_sensitivity"]["value"] == 1.0
