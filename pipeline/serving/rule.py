"""The decision rule: one function from a model's probabilities to the answer every surface gives.

Why one function: the local page, the API, the MLflow pyfunc, the Azure scoring script, the batch
scorer, the reports and the promotion gate all answer through it, so one image gets one answer
everywhere and every reported figure describes what users are told.

The answer has two outputs with two meanings:

1. calibrate: when the rule carries a temperature T (fitted on validation and kept only when it
   helped there), the probabilities become softmax(log p / T);
2. `class` = the most probable class of those probabilities. The threshold never changes it, so
   the class stays the best class answer however sensitive the operating point is;
3. `refer` (malignancy suspected: refer for biopsy/review) = p(positive) >= threshold, OR the
   class is the positive class. A malignant class always refers; a benign answer may still
   refer. Without a threshold, `refer` is exactly "the class is the positive class".
   The threshold was chosen on validation for a target sensitivity of this flag.

Before all of these, when the rule carries an OOD threshold (pipeline.serving.ood, chosen on
validation): an image whose OOD score is above it is out of scope. Its answer is the class
`out_of_scope` with `refer` null and the reason "refer to a radiologist", never one of the
model's classes: a photo or a CT slice gets no tumour class, however confident the softmax.
Reports count such a refusal as a third outcome: no class answer, and not flagged.

The rule is fitted once, in evaluate, written per model as rule.json (`to_dict`), and travels
inside the released model (`release.json`), never in registry tags or metric fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

OUT_OF_SCOPE = "out_of_scope"
REFER = "out of scope: refer to a radiologist"


@dataclass(frozen=True)
class DecisionRule:
    """What turns probabilities into an answer, and how it was chosen (for the record)."""

    classes: tuple[str, ...]
    positive_class: str = "malignant"
    threshold: float | None = None  # p(positive) >= threshold -> refer; None: class decides
    temperature: float | None = None  # calibration applied before deciding; None: none
    method: str = "argmax"  # how the threshold was chosen, in words
    chosen_on: str = ""  # the data it was chosen on (split, images, manifest hash)
    ood_threshold: float | None = None  # OOD score > threshold -> out of scope; None: no check
    ood_method: str = ""  # the OOD score and how its threshold was chosen, in words

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.positive_class not in self.classes:
            raise ValueError(f"positive class {self.positive_class!r} not in {self.classes}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not a probability")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature} must be positive")
        if self.ood_threshold is not None and not self.ood_threshold >= 0:
            raise ValueError(f"OOD threshold {self.ood_threshold} must not be negative")
        if OUT_OF_SCOPE in self.classes:
            raise ValueError(f"{OUT_OF_SCOPE!r} is the refusal, not a class name")

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON-ready data, as release.json stores it."""
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionRule:
        """The rule from release.json; keys this version does not know are ignored."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def describe(self) -> str:
        """The rule in one sentence, for pages and reports."""
        calibrated = (
            f"temperature-calibrated (T={self.temperature:.3f}) " if self.temperature else ""
        )
        scope = (
            f"{OUT_OF_SCOPE} when the OOD score > {self.ood_threshold:.4g}; else "
            if self.ood_threshold is not None
            else ""
        )
        most = f"{scope}class = most probable of the {calibrated}probabilities"
        if self.threshold is None:
            return f"{most}; refer when the class is {self.positive_class}"
        return (
            f"{most}; refer when p({self.positive_class}) >= {self.threshold:.4f} "
            f"or the class is {self.positive_class}"
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
    """(class index per row, refer flag per row) for raw probabilities (N, K) or (K,).

    The class is the argmax of the calibrated probabilities; the flag is p(positive) >= threshold
    or class == positive, so a positive class always refers.
    """
    return _classify(rule, calibrate(np.atleast_2d(probabilities), rule.temperature))


def _classify(rule: DecisionRule, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-3 of the module doc on calibrated probabilities (N, K)."""
    k = rule.classes.index(rule.positive_class)
    labels = p.argmax(axis=1)
    refer = labels == k
    if rule.threshold is not None:
        refer = refer | (p[:, k] >= rule.threshold)
    return labels, refer


@dataclass(frozen=True)
class Served:
    """What the rule answers for N images, as reports and the promotion gate count it.

    `refused` images have no class answer and are not flagged (`refer` False there); `labels`
    holds the argmax for every row, so read it through `answered` or `labels_or` below.
    """

    probabilities: np.ndarray  # (N, K) the calibrated probabilities the rule compared
    labels: np.ndarray  # (N,) class index (argmax), meaningful where not refused
    refer: np.ndarray  # (N,) bool, False where refused
    refused: np.ndarray  # (N,) bool

    @property
    def answered(self) -> np.ndarray:
        """True per image that got a class answer."""
        return ~self.refused

    def labels_or(self, refusal: int) -> np.ndarray:
        """Class index per image with `refusal` (e.g. -1, never a class index) where refused."""
        return np.where(self.refused, refusal, self.labels)


def serve(
    rule: DecisionRule, probabilities: np.ndarray, ood_scores: np.ndarray | None = None
) -> Served:
    """The served answers for raw probabilities (N, K) and OOD scores (N,) (None: no scores).

    The same steps as `answer`, for a whole split at once: evaluate, select and promote count
    these, so a reported figure is a figure of the answers users get.
    """
    p = calibrate(np.atleast_2d(probabilities), rule.temperature)
    labels, refer = _classify(rule, p)
    refused = out_of_scope(rule, ood_scores)
    if refused.size == 0:
        refused = np.zeros(len(p), dtype=bool)
    if refused.shape != labels.shape:
        raise ValueError(f"{refused.size} OOD scores for {len(p)} probability rows")
    return Served(p, labels, refer & ~refused, refused)


def out_of_scope(rule: DecisionRule, ood_scores: np.ndarray | None) -> np.ndarray:
    """True per image whose OOD score is beyond the rule's threshold (N,) (all False without one).

    A rule with a threshold and no scores is an error: a surface that forgot to compute them
    would otherwise answer every photo and CT slice with a tumour class.
    """
    if rule.ood_threshold is None:
        return np.zeros(0 if ood_scores is None else np.size(ood_scores), dtype=bool)
    if ood_scores is None:
        raise ValueError("the rule has an OOD threshold: the OOD score is needed to answer")
    return np.atleast_1d(np.asarray(ood_scores, dtype=np.float64)) > rule.ood_threshold


def answer(
    rule: DecisionRule, probabilities: np.ndarray, ood_score: float | None = None
) -> dict[str, Any]:
    """One image's probabilities (K,) and OOD score -> the JSON-ready answer every surface returns.

    `probabilities` in the answer are the ones the rule compared (calibrated when the rule has a
    temperature), so a reader can check the decision against them. Out of scope, the class is
    `out_of_scope`, `refer` is None and `reason` says what to do; the probabilities stay for
    the record (the prediction log, the monitor), not as an answer.
    """
    p = calibrate(np.asarray(probabilities, dtype=np.float64).reshape(1, -1), rule.temperature)
    labels, refer = _classify(rule, p)
    k = rule.classes.index(rule.positive_class)
    scores = None if ood_score is None else np.array([ood_score])
    refused = bool(out_of_scope(rule, scores).any())
    result: dict[str, Any] = {
        "class": OUT_OF_SCOPE if refused else rule.classes[int(labels[0])],
        "probabilities": {c: float(v) for c, v in zip(rule.classes, p[0], strict=True)},
        "decision": {
            "positive_class": rule.positive_class,
            "refer": None if refused else bool(refer[0]),
            "positive_probability": float(p[0, k]),
            "threshold": rule.threshold,
            "temperature": rule.temperature,
            "rule": rule.describe(),
        },
    }
    if rule.ood_threshold is not None:
        assert ood_score is not None  # out_of_scope refuses a rule with a threshold and no score
        result["decision"].update(
            out_of_scope=refused,
            ood_score=float(ood_score),
            ood_threshold=rule.ood_threshold,
            reason=REFER if refused else None,
        )
    return result
