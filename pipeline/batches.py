"""The training input pipeline: in-memory uint8 images -> shuffled, lightly augmented uint8 batches.

Images are decoded once (pipeline.datasets) and augmented in NumPy/OpenCV here, so every Keras
backend gets plain arrays and nothing random sits inside the compiled model. Batches stay uint8:
the model casts its input to float on the device, so the host neither writes nor transfers four
times the bytes (the model takes raw 0-255 values either way).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from pipeline.augmentation import augment_image, speckle_field
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
        self._shuffle()

    def _shuffle(self) -> None:
        """This epoch's order and speckle field, from (seed, epoch) alone."""
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(len(self.labels))
        self.field = None
        if self.augment is not None and self.augment.speckle:
            height, width, channels = self.images.shape[1:]
            shape = (2 * height, 2 * width, channels)
            self.field = speckle_field(rng, shape, self.augment.speckle)

    def __len__(self) -> int:
        return int(np.ceil(len(self.labels) / self.batch_size))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if self.augment is None:
            return self.images[rows], self.onehot[rows]
        # one stream per (seed, epoch, batch): the same batches whatever the thread order
        rng = np.random.default_rng([self.seed, self.epoch, index])
        batch = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        for slot, row in zip(batch, rows, strict=True):
            augment_image(self.images[row], rng, self.augment, out=slot, field=self.field)
        return batch, self.onehot[rows]

    def on_epoch_end(self) -> None:
        """Reshuffle between epochs (Keras calls this), so each epoch sees a new order and new
        draws."""
        self.epoch += 1
        self._shuffle()
