"""The training input pipeline: in-memory uint8 images -> shuffled, lightly augmented float batches.

Images are decoded once (pipeline.datasets) and augmented in NumPy/OpenCV here, so every Keras
backend gets plain arrays and nothing random sits inside the compiled model.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from pipeline.augmentation import augment_image
from pipeline.config import AugmentParams


def light(p: AugmentParams) -> AugmentParams:
    """Half the offline ranges: on-the-fly variation on top of already balanced data."""
    return dataclasses.replace(
        p,
        rotation_deg=p.rotation_deg / 2,
        zoom=p.zoom / 2,
        brightness=p.brightness / 2,
        contrast=p.contrast / 2,
        speckle=p.speckle / 2,
    )


class TrainBatches(keras.utils.PyDataset):
    """Shuffled one-hot batches, reshuffled every epoch, optionally augmented; fully seeded."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        batch_size: int,
        seed: int,
        augment: AugmentParams | None = None,
        workers: int = 1,
    ) -> None:
        # Threads suffice for workers > 1: OpenCV releases the GIL while it warps.
        super().__init__(workers=workers, use_multiprocessing=False)
        self.images, self.labels = images, labels
        self.onehot = np.eye(n_classes, dtype="float32")[labels]
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))

    def __len__(self) -> int:
        return int(np.ceil(len(self.labels) / self.batch_size))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = self.images[rows]
        if self.augment is not None:
            # one stream per (seed, epoch, batch): the same batches whatever the thread order
            rng = np.random.default_rng([self.seed, self.epoch, index])
            batch = np.stack([augment_image(image, rng, self.augment) for image in batch])
        return batch.astype("float32"), self.onehot[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._permutation()
