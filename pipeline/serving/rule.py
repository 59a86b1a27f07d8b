"""The decision rule: one function from a model's probabilities to the answer every surface gives.

Why one function: the local page, the API, the MLflow pyfunc, the Azure scoring script, the batch
scorer and the promotion gate used to decide in two ways (argmax here, a malignant threshold
there), so one image could be "malignant" and "negative" at once. Here the class and the
malignant flag come out of the same comparison and cannot contradict each other:

1. calibrate: when the rule carries a temperature T (fitted on validation and kept only when it
   helped there), the probabilities become softmax(log p / T);
2. positive (malignant) when p(positive) >= threshold; the threshold was chosen on validation;
3. otherwise the most probable of the other classes;
4. without a threshold, the most probable class, and positive exactly when that is the positive
   class.

The rule travels inside the released model (`release.json`), never in registry tags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DecisionRule:
    """What turns probabilities into an answer, and how it was chosen (for the record)."""

    classes: tuple[str, ...]
    positive_class: str = "malignant"
    threshold: float | None = None  # p(positive) >= threshold -> positive; None: argmax
    temperature: float | None = None  # calibration applied before the threshold; None: none
    method: str = "argmax"  # how the threshold was chosen, in words
    chosen_on: str = ""  # the data it was chosen on (split, images, manifest hash)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.positive_class not in self.classes:
            raise ValueError(f"positive class {self.positive_class!r} not in {self.classes}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not a probability")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionRule:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def describe(self) -> str:
        """The rule in one sentence, for pages and reports."""
        calibrated = (
            f"temperature-calibrated (T={self.temperature:.3f}) " if self.temperature else ""
        )
        if self.threshold is None:
            return f"most probable class of the {calibrated}probabilities"
        return (
            f"{self.positive_class} when its {calibrated}probability >= {self.threshold:.4f}, "
            "otherwise the most probable other class"
        )


def calibrate(probabilities: np.ndarray, temperature: float | None) -> np.ndarray:
    """Temperature-scaled probabilities (rows sum to 1); unchanged without a temperature."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature is None:
        return p
    logits = np.log(np.clip(p, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def decide(rule: DecisionRule, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index per row, positive flag per row) for probabilities (N, K) or (K,).

    The flag is True exactly when the class is the positive class, by construction.
    """
    return _classify(rule, calibrate(np.atleast_2d(probabilities), rule.temperature))


def _classify(rule: DecisionRule, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-4 of the module doc on calibrated probabilities (N, K)."""
    k = rule.classes.index(rule.positive_class)
    if rule.threshold is None:
        labels = p.argmax(axis=1)
    else:
        others = p.copy()
        others[:, k] = -np.inf
        labels = np.where(p[:, k] >= rule.threshold, k, others.argmax(axis=1))
    return labels, labels == k


def answer(rule: DecisionRule, probabilities: np.ndarray) -> dict[str, Any]:
    """One image's probabilities (K,) -> the JSON-ready decision every surface returns.

    `probabilities` in the answer are the ones the rule compared (calibrated when the rule has a
    temperature), so a reader can check the decision against them.
    """
    p = calibrate(np.asarray(probabilities, dtype=np.float64).reshape(1, -1), rule.temperature)
    labels, positive = _classify(rule, p)
    k = rule.classes.index(rule.positive_class)
    return {
        "class": rule.classes[int(labels[0])],
        "probabilities": {c: float(v) for c, v in zip(rule.classes, p[0], strict=True)},
        "decision": {
            "positive_class": rule.positive_class,
            "positive": bool(positive[0]),
            "positive_probability": float(p[0, k]),
            "threshold": rule.threshold,
            "temperature": rule.temperature,
            "rule": rule.describe(),
        },
    }
