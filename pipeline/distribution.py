"""`train.distribution: data_parallel`: one model trained on every local device (JAX).

Kept apart from the train stage so that the throughput bench (bench/train_throughput.py, which a
GPU host runs without MLflow) trains through exactly the same replica and batch cutting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np

from pipeline.batches import TrainBatches
from pipeline.config import TrainParams
from pipeline.errors import UserError


@contextlib.contextmanager
def data_parallel(model: keras.Model, t: TrainParams) -> Iterator[tuple[keras.Model, int]]:
    """(model to train, device count): `model` itself, or a replica over every local device.

    Keras' DataParallel places a variable when it is created, so the replica is built from
    `model`'s config and weights inside the distribution's scope. Each step splits the global
    batch (`train.batch_size`) evenly over the devices and averages the gradients, so the
    learning rate means what it means on one device. On exit, even on an error, the global
    distribution is restored; on success `model` takes the replica's weights.
    """
    if t.distribution is None:
        yield model, 1
        return
    backend = keras.backend.backend()
    if backend != "jax":
        raise UserError(
            f"train.distribution: data_parallel runs on the JAX backend, not {backend}; "
            "set KERAS_BACKEND=jax (docs/scaling.md) or train.distribution: null"
        )
    devices = keras.distribution.list_devices()
    if t.batch_size % len(devices):
        raise UserError(
            f"train.batch_size: {t.batch_size} does not split evenly over the {len(devices)} "
            f"devices of train.distribution: data_parallel; use a multiple of {len(devices)}"
        )
    with keras.distribution.DataParallel(devices=devices).scope():
        replica = keras.Model.from_config(model.get_config())
        replica.set_weights(model.get_weights())
        yield replica, len(devices)
    model.set_weights(replica.get_weights())


class WholeShards(keras.utils.PyDataset):
    """Training batches cut to a multiple of the device count, which a sharded step needs.

    Only the epoch's last, short batch loses images (fewer than `devices`, a different few each
    epoch since the order is reshuffled); a last batch smaller than `devices` is skipped.
    """

    def __init__(self, batches: TrainBatches, devices: int) -> None:
        super().__init__(workers=batches.workers, use_multiprocessing=False)
        self.batches, self.devices, self.labels = batches, devices, batches.labels

    def __len__(self) -> int:
        short = len(self.labels) % self.batches.batch_size
        return len(self.batches) - (0 < short < self.devices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, onehot = self.batches[index]
        keep = len(images) - len(images) % self.devices
        return images[:keep], onehot[:keep]

    def on_epoch_end(self) -> None:
        """The wrapped batches' reshuffle (Keras calls this on the dataset it was given)."""
        self.batches.on_epoch_end()
