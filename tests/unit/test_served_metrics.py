"""pipeline.served_metrics: the shares of the class answer have exact intervals on the effective
n, a refusal counted wrong, so a perfect answer on 17 images is not reported as [1, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import intervals, served_metrics

CLASSES = ("benign", "malignant", "normal")


def test_shares_of_the_class_answer_hold_at_the_edges_and_count_a_refusal_wrong():
    y = np.repeat([0, 1, 2], [20, 17, 10])
    groups = np.arange(len(y)) // 2  # duplicate pairs
    perfect = served_metrics.class_metrics(y, y.copy(), CLASSES, 1, groups, n_bootstrap=50)
    sensitivity = perfect["malignant_sensitivity"]
    assert sensitivity["value"] == 1.0
    assert sensitivity["ci_low"] < 0.85  # 17/17 in about 9 pairs: far from certain
    assert sensitivity == intervals.proportion(y == 1, y == 1, groups)
    refused = y.copy()
    refused[20] = 3  # one malignant image refused: a miss for the class answer
    found = served_metrics.class_metrics(y, refused, CLASSES, 1, groups, n_bootstrap=50)
    assert found["malignant_sensitivity"]["value"] == pytest.approx(16 / 17)
    assert found["accuracy"]["value"] == pytest.approx(46 / 47)
    assert found["malignant_specificity"]["value"] == 1.0
    assert found["per_class"]["malignant"]["refused"] == 1
