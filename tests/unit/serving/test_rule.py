"""pipeline.serving.rule: the class is the most probable class; the referral flag carries the
threshold, and a malignant class always refers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.serving.rule import DecisionRule, answer, calibrate, decide, serve

CLASSES = ("benign", "malignant", "normal")
M = CLASSES.index("malignant")


def random_probabilities(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)) * 0.7, size=n)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [None, 0.0, 0.05, 0.3, 0.5, 0.92, 1.0])
def test_the_threshold_never_changes_the_class_and_a_malignant_class_always_refers(seed, threshold):
    p = random_probabilities(500, seed)
    labels, refer = decide(DecisionRule(CLASSES, threshold=threshold), p)
    assert np.array_equal(labels, p.argmax(1))
    assert refer[labels == M].all()
    if threshold is not None:
        assert np.array_equal(refer, (p[:, M] >= threshold) | (labels == M))


def test_refer_at_the_threshold_while_the_class_stays_the_most_probable():
    rule = DecisionRule(CLASSES, threshold=0.3)
    p = np.array([[0.6, 0.3, 0.1], [0.5, 0.29, 0.21], [0.2, 0.29, 0.51], [0.1, 0.8, 0.1]])
    labels, refer = decide(rule, p)
    assert [CLASSES[i] for i in labels] == ["benign", "benign", "normal", "malignant"]
    assert refer.tolist() == [True, False, False, True]


def test_a_high_threshold_still_refers_every_malignant_answer():
    rule = DecisionRule(CLASSES, threshold=0.9)
    labels, refer = decide(rule, np.array([[0.2, 0.5, 0.3], [0.05, 0.95, 0.0]]))
    assert labels.tolist() == [M, M]
    assert refer.tolist() == [True, True]


def test_without_a_threshold_the_class_decides_both():
    p = random_probabilities(200, 7)
    labels, refer = decide(DecisionRule(CLASSES), p)
    assert np.array_equal(labels, p.argmax(1))
    assert np.array_equal(refer, p.argmax(1) == M)


def test_a_lower_threshold_never_refers_fewer_images():
    p = random_probabilities(300, 3)
    referred = [decide(DecisionRule(CLASSES, threshold=t), p)[1].sum() for t in (0.9, 0.5, 0.2)]
    assert referred == sorted(referred)


def test_served_answers_of_a_split_match_the_one_image_answer():
    rule = DecisionRule(CLASSES, threshold=0.2, temperature=1.7, ood_threshold=5.0)
    p = random_probabilities(40, 11)
    scores = np.random.default_rng(2).uniform(0, 10, 40)
    served = serve(rule, p, scores)
    assert served.refused.tolist() == (scores > 5.0).tolist()
    assert not served.refer[served.refused].any()  # a refused image is not flagged
    assert (served.labels_or(-1)[served.refused] == -1).all()
    for i in range(len(p)):
        one = answer(rule, p[i], float(scores[i]))
        assert one["class"] == ("out_of_scope" if served.refused[i] else CLASSES[served.labels[i]])
        assert one["decision"]["refer"] == (None if served.refused[i] else bool(served.refer[i]))
    with pytest.raises(ValueError, match="3 OOD scores for 40"):
        serve(rule, p, scores[:3])
    assert not serve(DecisionRule(CLASSES), p).refused.any()


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
    assert result["class"] == max(shown, key=shown.get)
    assert result["decision"]["refer"] == (
        shown["malignant"] >= 0.4 or result["class"] == "malignant"
    )
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
