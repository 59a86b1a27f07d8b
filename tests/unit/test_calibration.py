"""pipeline.calibration: the calibration line agrees with scikit-learn's logistic fit, a
temperature is served only when it helps out of fold and never when validation cannot say how
sharp the probabilities should be."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipeline import calibration, metrics
from tests.factories import project_params

BOUNDS = project_params().evaluate.temperature_range  # params.yaml's search range


def test_calibration_line_agrees_with_scikit_learn_and_finds_overconfidence():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 4000)
    y = rng.random(4000) < 1 / (1 + np.exp(-true_logit))
    honest = calibration.calibration_line(y, 1 / (1 + np.exp(-true_logit)))
    assert honest["slope"] == pytest.approx(1, abs=0.1)
    assert honest["intercept"] == pytest.approx(0, abs=0.1)
    over = 1 / (1 + np.exp(-2 * true_logit))  # logits doubled: too extreme
    fitted = calibration.calibration_line(y, over)
    assert fitted["slope"] == pytest.approx(0.5, abs=0.05)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000)
    reference.fit((2 * true_logit)[:, None], y)
    assert fitted["slope"] == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    # calibration-in-the-large: shifting the logits by the intercept matches the observed rate
    shifted = 1 / (1 + np.exp(-(2 * true_logit + fitted["intercept"])))
    assert shifted.mean() == pytest.approx(y.mean(), abs=1e-6)
    assert calibration.calibration_line(y, y.astype(float)) == {"slope": None, "intercept": None}


def scaled_softmax(n: int, scale: float, seed: int, separation: float = 0.0):
    """Labels drawn from softmax(z) (so softmax(z) is calibrated) and a model that reports
    softmax(scale * z): over-confident for scale > 1, under-confident below; the temperature
    that calibrates it is `scale`. `separation` adds to the true class's logit afterwards."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 3))
    truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > truth.cumsum(1)).sum(1)
    reported = scale * z + separation * np.eye(3)[y]
    return y, np.exp(reported) / np.exp(reported).sum(1, keepdims=True)


@pytest.mark.parametrize("scale", [0.7, 2.5])
def test_a_miscalibrated_validation_set_still_gets_its_temperature(scale):
    y, proba = scaled_softmax(600, scale, seed=1)
    decision = calibration.temperature_decision(y, proba, min_improvement=0.01, bounds=BOUNDS)
    assert decision["applied"] is True, decision["reason"]
    assert decision["temperature"] == pytest.approx(scale, rel=0.15)
    assert decision["bounds"] == [0.5, 5.0]


def test_a_perfectly_separated_validation_set_never_yields_a_sharpening_temperature():
    """Every true class on top (the demo's validation set): NLL falls for every smaller T, so
    the fit runs to the lower bound; it is reported, never served, and never near zero."""
    y, proba = scaled_softmax(120, 0.3, seed=2, separation=2.5)
    assert (proba.argmax(1) == y).all()
    unbounded = metrics.fit_temperature(y, proba, (0.05, 20.0))
    assert unbounded < 0.06  # what the demo served before: T=0.05
    gain = metrics.negative_log_likelihood(y, proba) - metrics.negative_log_likelihood(
        y, metrics.apply_temperature(proba, unbounded)
    )
    assert gain > 0.1  # far past temperature_min_improvement: a gain test alone lets it through
    decision = calibration.temperature_decision(y, proba, min_improvement=0.01, bounds=BOUNDS)
    assert decision["applied"] is False
    assert decision["temperature"] >= 0.5
    assert "lower bound T=0.5" in decision["reason"]
    assert "120 of 120" in decision["reason"]
    wide = calibration.temperature_decision(y, proba, min_improvement=0.01, bounds=(0.05, 20.0))
    assert wide["applied"] is False
    assert "lower bound T=0.05" in wide["reason"]


def test_an_over_confident_model_past_the_upper_bound_is_softened_as_far_as_allowed():
    y, proba = scaled_softmax(600, 8.0, seed=3)
    decision = calibration.temperature_decision(y, proba, min_improvement=0.01, bounds=BOUNDS)
    assert decision["applied"] is True
    assert decision["temperature"] == pytest.approx(5.0, rel=1e-3)


def test_reliability_curve_counts_every_image_once():
    rng = np.random.default_rng(1)
    p = rng.random(200)
    y = rng.random(200) < p
    rows = calibration.reliability_curve(y, p, 10)
    assert sum(r["count"] for r in rows) == 200
    for r in rows:
        inside = (p > r["bin_low"]) & (p <= r["bin_high"])
        assert r["count"] == inside.sum()
        assert r["observed"] == pytest.approx(y[inside].mean())
