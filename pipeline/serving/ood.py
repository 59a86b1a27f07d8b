"""Out-of-distribution score: how far an image's pooled backbone features lie from training's.

Why this score: the softmax of a classifier trained on three classes is confident on anything
(a photo, a CT slice, a screenshot), so its probabilities cannot say "not an ultrasound". The
pooled backbone features can: the Mahalanobis distance to the nearest training class mean, with
one covariance shared by the classes (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples"), grows with how unlike the training images an input is. The
covariance is estimated from a few hundred images in hundreds or thousands of dimensions, so it
is shrunk towards a multiple of the identity (Ledoit-Wolf), which keeps it invertible and the
score stable.

`fit` runs in the evaluate stage on the train split (numpy + scikit-learn's Ledoit-Wolf there);
`OodStatistics.scores` runs at answer time with numpy alone. The statistics travel in the released
model folder as `ood.npz` (float32 class means and precision matrix); the threshold, chosen on
validation, travels in the decision rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_FILE = "ood.npz"
METHOD = (
    "squared Mahalanobis distance of the pooled backbone features to the nearest training class "
    "mean (covariance shared by the classes, Ledoit-Wolf shrinkage, fitted on the train split and, "
    "when training flips images, its left-right mirrors)"
)


@dataclass(frozen=True)
class OodStatistics:
    """Class means (K, C) and the shared precision matrix (C, C) of pooled features."""

    means: np.ndarray
    precision: np.ndarray

    def __post_init__(self) -> None:
        k, c = np.shape(self.means)
        if np.shape(self.precision) != (c, c):
            raise ValueError(f"precision {np.shape(self.precision)} does not match means {(k, c)}")

    @property
    def dimensions(self) -> int:
        """Length of the pooled feature vector the statistics were fitted on."""
        return int(np.shape(self.means)[1])

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """Squared distance to the nearest class mean, per row of pooled features (N, C).

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
        return np.maximum(distances.min(axis=1), 0.0)

    def save(self, path: Path) -> None:
        """Write the arrays as one .npz (float32: a 2048-wide backbone gives 16 MB)."""
        with open(path, "wb") as handle:
            np.savez(handle, means=self.means, precision=self.precision)

    @classmethod
    def load(cls, path: Path) -> OodStatistics:
        """The statistics `save` wrote next to the model in a release folder."""
        with np.load(path) as data:
            return cls(data["means"], data["precision"])


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
    """The score at or below which a share `accept` of in-distribution images fall."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), accept, method="higher"))
