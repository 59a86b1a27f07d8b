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

from pipeline.config import AugmentParams
from pipeline.loader import KINDS, ProcessFeed, epoch_plan, make_batch


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
    """Shuffled one-hot batches, reshuffled every epoch, optionally augmented; fully seeded.

    `kind` says who makes augmented batches when `workers` > 1: Keras' loader threads
    ("threads": OpenCV releases the GIL while it warps, but the Python between its calls does
    not, so threads stop scaling at a few cores) or worker processes writing into shared memory
    ("processes", pipeline.loader: scales with cores; started at the first batch, stopped by
    `close()` or a `with` block). Batch `i` of epoch `e` is the same bytes for any count and kind.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        batch_size: int,
        seed: int,
        augment: AugmentParams | None = None,
        workers: int = 1,
        kind: str = "threads",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        # processes: Keras calls __getitem__ in order from its own thread; the feed runs ahead
        threads = workers if kind == "threads" or augment is None else 1
        super().__init__(workers=threads, use_multiprocessing=False)
        self.images, self.labels = images, labels
        self.onehot = np.eye(n_classes, dtype="float32")[labels]
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.kind = kind
        self.processes = workers if kind == "processes" and augment is not None else 0
        self._feed: ProcessFeed | None = None
        self.epoch = 0
        self._shuffle()

    def _shuffle(self) -> None:
        """This epoch's order and speckle field, from (seed, epoch) alone."""
        shape = self.images.shape[1:]
        self.order, self.field = epoch_plan(
            self.seed, self.epoch, len(self.labels), shape, self.augment
        )
        if self._feed is not None:
            self._feed.reset()

    def __len__(self) -> int:
        return int(np.ceil(len(self.labels) / self.batch_size))

    def rows(self, index: int) -> np.ndarray:
        """The images of batch `index` in this epoch's order."""
        return self.order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows(index)
        if self.augment is None:
            return self.images[rows], self.onehot[rows]
        if self.processes:
            if self._feed is None:
                self._feed = ProcessFeed(
                    self.images, self.batch_size, self.seed, self.augment, self.processes
                )
            later = range(index + 1, min(len(self), index + 2 * self.processes + 1))
            upcoming = [(i, self.rows(i)) for i in later]
            return self._feed.batch(self.epoch, index, rows, upcoming), self.onehot[rows]
        batch = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        make_batch(self.images, rows, self.seed, self.epoch, index, self.augment, self.field, batch)
        return batch, self.onehot[rows]

    def on_epoch_end(self) -> None:
        """Reshuffle between epochs (Keras calls this), so each epoch sees a new order and new
        draws."""
        self.epoch += 1
        self._shuffle()

    def close(self) -> None:
        """Stop the worker processes, if any, and free their shared memory (idempotent)."""
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
