"""pipeline.failures: the card's failure cases are the worst error of each group, missed cancers
first."""

from __future__ import annotations

import numpy as np

from pipeline.failures import worst_errors
from pipeline.serving.rule import DecisionRule, serve

CLASSES = ("benign", "malignant", "normal")


def test_missed_cancers_come_first_then_refusals_then_confident_wrong_answers_one_per_group():
    rule = DecisionRule(CLASSES, threshold=0.3, ood_threshold=1.0)
    proba = np.array(
        [
            [0.80, 0.15, 0.05],  # 0 malignant, not referred: missed (p 0.15)
            [0.85, 0.05, 0.10],  # 1 malignant, missed worse (p 0.05) ...
            [0.85, 0.05, 0.10],  # 2 ... its duplicate: the same group, shown once
            [0.10, 0.10, 0.80],  # 3 benign refused as out of scope
            [0.05, 0.05, 0.90],  # 4 benign answered normal, confident
            [0.30, 0.10, 0.60],  # 5 benign answered normal, less sure
            [0.90, 0.05, 0.05],  # 6 benign, right
            [0.10, 0.80, 0.10],  # 7 malignant, right and referred
        ]
    )
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    ood = np.array([0, 0, 0, 2.0, 0, 0, 0, 0])
    groups = np.array([10, 11, 11, 12, 13, 14, 15, 16])
    paths = [f"img{i}.png" for i in range(8)]
    cases = worst_errors(y, serve(rule, proba, ood), CLASSES, 1, paths, groups)
    assert [c["image"] for c in cases] == [
        "img1.png",
        "img0.png",
        "img3.png",
        "img4.png",
        "img5.png",
    ]
    assert [c["kind"] for c in cases] == [
        "missed malignant",
        "missed malignant",
        "refused as out of scope",
        "wrong class",
        "wrong class",
    ]
    assert cases[0]["group_images"] == 2
    assert cases[0] | {"p_answer": round(cases[0]["p_answer"], 2)} == {
        "image": "img1.png",
        "group_images": 2,
        "true": "malignant",
        "answer": "benign",
        "p_answer": 0.85,
        "p_malignant": 0.05,
        "refer": False,
        "kind": "missed malignant",
    }
    assert cases[2]["answer"] == "out of scope"
    assert cases[2]["refer"] is None
    assert len(worst_errors(y, serve(rule, proba, ood), CLASSES, 1, paths, groups, limit=2)) == 2


def test_no_error_no_failure_case():
    rule = DecisionRule(CLASSES, threshold=0.5)
    proba = np.eye(3)[[0, 1, 2]] * 0.9 + 0.1 / 3
    assert worst_errors(np.array([0, 1, 2]), serve(rule, proba), CLASSES, 1, ["a", "b", "c"]) == []
