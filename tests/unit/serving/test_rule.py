"""pipeline.serving.rule: one answer per image, whose class and malignant flag always agree."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.serving.rule import DecisionRule, answer, calibrate, decide

CLASSES = ("benign", "malignant", "normal")
M = CLASSES.index("malignant")


def random_probabilities(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)) * 0.7, size=n)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [None, 0.0, 0.05, 0.3, 0.5, 0.92, 1.0])
def test_the_class_and_the_malignant_flag_never_contradict(seed, threshold):
    p = random_probabilities(500, seed)
    labels, positive = decide(DecisionRule(CLASSES, threshold=threshold), p)
    assert np.array_equal(positive, labels == M)


def test_malignant_at_the_threshold_else_the_most_probable_other_class():
    rule = DecisionRule(CLASSES, threshold=0.3)
    p = np.array([[0.6, 0.3, 0.1], [0.5, 0.29, 0.21], [0.2, 0.29, 0.51], [0.1, 0.8, 0.1]])
    labels, positive = decide(rule, p)
    assert [CLASSES[i] for i in labels] == ["malignant", "benign", "normal", "malignant"]
    assert positive.tolist() == [True, False, False, True]


def test_without_a_threshold_the_most_probable_class_decides():
    p = random_probabilities(200, 7)
    labels, positive = decide(DecisionRule(CLASSES), p)
    assert np.array_equal(labels, p.argmax(1))
    assert np.array_equal(positive, p.argmax(1) == M)


def test_a_lower_threshold_never_flags_fewer_images():
    p = random_probabilities(300, 3)
    flagged = [decide(DecisionRule(CLASSES, threshold=t), p)[1].sum() for t in (0.9, 0.5, 0.2)]
    assert flagged == sorted(flagged)


def test_temperature_keeps_rows_normalised_and_each_rows_ranking():
    p = random_probabilities(100, 1)
    for t in (0.5, 1.0, 2.5):
        q = calibrate(p, t)
        assert np.allclose(q.sum(1), 1.0)
        assert np.array_equal(np.argsort(q, 1), np.argsort(p, 1))
    assert np.allclose(calibrate(p, 1.0), p)
    assert np.array_equal(calibrate(p, None), p)  # no temperature: the probabilities as given


def test_the_answer_shows_the_probabilities_the_rule_compared():
    rule = DecisionRule(CLASSES, threshold=0.4, temperature=2.0)
    raw = np.array([0.5, 0.35, 0.15])
    result = answer(rule, raw)
    shown = result["probabilities"]
    assert shown["malignant"] == pytest.approx(calibrate(raw, 2.0)[M])
    assert result["decision"]["positive_probability"] == shown["malignant"]
    assert result["decision"]["positive"] == (shown["malignant"] >= 0.4)
    assert result["class"] == ("malignant" if result["decision"]["positive"] else "benign")
    assert "0.4000" in result["decision"]["rule"]
    assert "T=2.000" in result["decision"]["rule"]


def test_the_rule_survives_its_json_record_and_refuses_nonsense():
    rule = DecisionRule(CLASSES, "malignant", 0.25, 1.3, "lowest threshold ...", "val, 63 images")
    assert DecisionRule.from_dict(rule.to_dict()) == rule
    for bad, says in (
        ({"threshold": 1.5}, "not a probability"),
        ({"temperature": 0.0}, "must be positive"),
        ({"positive_class": "cyst"}, "not in"),
    ):
        with pytest.raises(ValueError, match=says):
            DecisionRule(CLASSES, **bad)
