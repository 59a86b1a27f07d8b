"""Out-of-distribution score: how far an image's pooled backbone features lie from training's.

Why this score: the softmax of a classifier trained on three classes is confident on anything
(a photo, a CT slice, a screenshot), so its probabilities cannot say "not an ultrasound". The
pooled backbone features can: the Mahalanobis distance to the nearest training class mean, with
one covariance shared by the classes (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples"), grows with how unlike the training images an input is. The
covariance is estimated from a few hundred images in hundreds or thousands of dimensions, so it
is shrunk towards a multiple of the identity (Ledoit-Wolf), which keeps it invertible and the
score stable.

Class-fair: with one shared covariance, the images of a class that is more spread out than the
others (malignant lesions in the demo, benign ones on real BUSI) lie further from their mean, so
one threshold refused them several times as often (demo: 6/34 malignant against 1/93 others).
So each class's distance is divided by its own scale, the median distance of that class's
validation images to their class mean (`with_class_scales`), before taking the nearest: every
class's typical image then scores about 1, and the one threshold accepts about the same share of
each class. tests/unit/serving/test_ood_fairness.py measures it.

`fit` runs in the evaluate stage on the train split (numpy + scikit-learn's Ledoit-Wolf there),
`with_class_scales` on validation; `OodStatistics.scores` runs at answer time with numpy alone.
The statistics travel in the released model folder as `ood.npz` (float32 class means, precision
matrix and class scales; a file without scales scores as before, every scale 1); the threshold,
chosen on validation, travels in the decision rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_FILE = "ood.npz"
METHOD = (
    "squared Mahalanobis distance of the pooled backbone features to each training class mean, "
    "divided by that class's median on its validation images (class-fair), the nearest class "
    "taken (covariance shared by the classes, Ledoit-Wolf shrinkage, fitted on the train split "
    "and, when training flips images, its left-right mirrors)"
)


@dataclass(frozen=True)
class OodStatistics:
    """Class means (K, C), the shared precision matrix (C, C) of pooled features and each class's
    distance scale (K,; ones: the plain nearest-mean distance)."""

    means: np.ndarray
    precision: np.ndarray
    scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        k, c = np.shape(self.means)
        if np.shape(self.precision) != (c, c):
            raise ValueError(f"precision {np.shape(self.precision)} does not match means {(k, c)}")
        scales = np.ones(k) if self.scales is None else np.asarray(self.scales, np.float64)
        if scales.shape != (k,) or not np.all(scales > 0):
            raise ValueError(f"scales {scales.tolist()} must be {k} positive numbers")
        object.__setattr__(self, "scales", scales)

    @property
    def dimensions(self) -> int:
        """Length of the pooled feature vector the statistics were fitted on."""
        return int(np.shape(self.means)[1])

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """The OOD score per row of pooled features (N, C): the smallest scaled distance."""
        return (self.distances(pooled) / np.asarray(self.scales)[None, :]).min(axis=1)

    def with_class_scales(self, pooled: np.ndarray, labels: np.ndarray) -> OodStatistics:
        """These statistics with each class's scale set to the median distance of its images in
        (pooled, labels) to its own mean: validation, which the means were not fitted on.
        `labels` index the classes of `means`; a class without images takes the median of the
        others' scales."""
        own = self.distances(pooled)[np.arange(len(labels)), np.asarray(labels)]
        k = len(self.means)
        found = [float(np.median(own[labels == c])) for c in range(k) if np.any(labels == c)]
        fallback = float(np.median(found)) if found else 1.0
        scales = [
            max(float(np.median(own[labels == c])), 1e-12) if np.any(labels == c) else fallback
            for c in range(k)
        ]
        return OodStatistics(self.means, self.precision, np.asarray(scales, np.float32))

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (N, K) of each row of pooled features to each class mean.

        Expanded as x'Px - 2 x'P mu + mu'P mu so the cost is one (N, C) x (C, C) product.
        """
        x = np.atleast_2d(np.asarray(pooled, dtype=np.float64))
        if x.shape[1] != self.dimensions:
            raise ValueError(f"features have {x.shape[1]} dimensions, statistics {self.dimensions}")
        p = self.precision.astype(np.float64)
        mu = self.means.astype(np.float64)
        xp = x @ p
        distances = (
            np.einsum("nc,nc->n", xp, x)[:, None]
            - 2 * xp @ mu.T
            + np.einsum("kc,kc->k", mu @ p, mu)[None, :]
        )
        return np.maximum(distances, 0.0)

    def save(self, path: Path) -> None:
        """Write the arrays as one .npz (float32: a 2048-wide backbone gives 16 MB)."""
        with open(path, "wb") as handle:
            np.savez(
                handle,
                means=self.means,
                precision=self.precision,
                scales=np.asarray(self.scales, np.float32),
            )

    @classmethod
    def load(cls, path: Path) -> OodStatistics:
        """The statistics `save` wrote next to the model in a release folder (scales 1 when the
        file predates them)."""
        with np.load(path) as data:
            scales = data["scales"] if "scales" in data.files else None
            return cls(data["means"], data["precision"], scales)


def pool(feature_maps: np.ndarray) -> np.ndarray:
    """Backbone feature maps (N, h, w, C) -> the model's own global average pooling (N, C)."""
    return np.asarray(feature_maps, dtype=np.float64).mean(axis=(1, 2))


def fit(pooled: np.ndarray, labels: np.ndarray) -> OodStatistics:
    """Class means and the shrunk shared precision of training features (N, C), labels (N,)."""
    from sklearn.covariance import ledoit_wolf  # fitting only: serving never imports it

    x = np.asarray(pooled, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    means = np.stack([x[y == k].mean(axis=0) for k in classes])
    centred = x - means[np.searchsorted(classes, y)]
    covariance, _ = ledoit_wolf(centred, assume_centered=True)
    precision = np.linalg.pinv(covariance, hermitian=True)
    return OodStatistics(means.astype(np.float32), precision.astype(np.float32))


def accept_threshold(scores: np.ndarray, accept: float) -> float:
    """The score at or below which a share `accept` of in-distribution images fall.

    The quantile is an observed score; the threshold sits halfway to the next higher one, so
    the same images are accepted but none sits on the threshold, where Keras, ONNX and INT8
    (rounding apart by ~1e-7) would answer it differently.
    """
    x = np.asarray(scores, dtype=np.float64)
    at = float(np.quantile(x, accept, method="higher"))
    above = x[x > at]
    return float((at + above.min()) / 2) if above.size else at
