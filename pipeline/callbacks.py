"""What a training does at the end of each epoch: validation on the whole val set, the best
epoch's weights kept across phases, one printed line, the epoch's metrics to MLflow.

Keras callbacks, apart from pipeline.phases (which fit calls they join) so that each reads on its
own: these say what an epoch records, the phases when and at what rate the weights move.
"""

from __future__ import annotations

import time

import keras
import mlflow
import numpy as np
from sklearn.metrics import f1_score

from pipeline.datasets import ImageSet


class ValidationMetrics(keras.callbacks.Callback):
    """Adds the val metrics, lr, time and images/s (of the training alone) to each epoch's logs.

    `val_loss`, `val_accuracy` and `val_macro_f1` come from one prediction of the whole val set
    (macro-F1 averaged per batch would be wrong), padded to split evenly over data-parallel devices.
    """

    def __init__(self, val: ImageSet, n_train: int, batch_size: int) -> None:
        super().__init__()
        self.val, self.n_train, self.batch_size = val, n_train, batch_size

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock (the epoch time is logged with the metrics)."""
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Validation loss, accuracy and macro-F1, the learning rate and the epoch's time into the
        logs, where early stopping and MLflow read them."""
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self.started
        proba = predict(self.model, self.val.images, self.batch_size)
        onehot = np.eye(proba.shape[1], dtype="float32")[self.val.labels]
        logs["val_loss"] = float(keras.ops.convert_to_numpy(self.model.loss(onehot, proba)))
        logs["val_accuracy"] = float(np.mean(proba.argmax(axis=1) == self.val.labels))
        logs["val_macro_f1"] = float(
            f1_score(self.val.labels, proba.argmax(axis=1), average="macro", zero_division=0)
        )
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        logs["epoch_seconds"] = seconds
        logs["images_per_second"] = self.n_train / seconds


class BestWeights(keras.callbacks.Callback):
    """The best epoch on `monitor` and its weights, across every phase (fit call) of a training.

    Keras' EarlyStopping restores the best weights of its own fit call only: after warm-up and
    fine-tuning it would keep the fine-tuning best even when a warm-up epoch scored higher, and the
    saved model would not be the reported best epoch. This one is shared by all phases.
    """

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor = monitor
        self.best: float | None = None
        self.epoch: int | None = None
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Keep the weights of the best epoch so far by the monitored metric."""
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self.best is None or (
            value < self.best if lower_is_better(self.monitor) else value > self.best
        ):
            self.best, self.epoch, self.weights = float(value), epoch, self.model.get_weights()

    def restore(self) -> None:
        """Put the best epoch's weights back (no-op when no epoch was finite)."""
        if self.weights is not None:
            self.model.set_weights(self.weights)


class EpochLine(keras.callbacks.Callback):
    """One line per epoch, within 120 columns: what Keras' own log (every metric, 200 columns
    and more) buries. The full record is in MLflow and reports/train/<arch>/history.csv."""

    def __init__(self, arch: str, epochs: int) -> None:
        super().__init__()
        self.arch, self.epochs = arch, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Print the epoch's training and validation figures, its learning rate and speed."""
        print(epoch_line(self.arch, epoch + 1, self.epochs, logs or {}), flush=True)


def epoch_line(arch: str, epoch: int, epochs: int, logs: dict[str, float]) -> str:
    """`train densenet121 epoch 3/10: loss 0.512 acc 0.800 | val loss 0.431 acc 0.844 macro-F1
    0.835 | lr 1e-04 12 s 89 img/s` (a dash for a figure the logs lack)."""

    def figure(key: str, spec: str = ".3f") -> str:
        value = logs.get(key)
        return "-" if value is None else format(value, spec)

    return (
        f"train {arch} epoch {epoch}/{epochs}: loss {figure('loss', '.3g')} "
        f"acc {figure('accuracy')} | val loss {figure('val_loss', '.3g')} "
        f"acc {figure('val_accuracy')} macro-F1 {figure('val_macro_f1')} | "
        f"lr {figure('learning_rate', '.0e')} {figure('epoch_seconds', '.0f')} s "
        f"{figure('images_per_second', '.0f')} img/s"
    )


class MlflowEpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics to the active MLflow run, step = the epoch as Keras prints it (from 1),
    numbered across phases."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Log the epoch's metrics to the active MLflow run, with the epoch as the step."""
        mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1)


def predict(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`model`'s probabilities for every image; under data parallelism the set is padded (with
    copies of its first image) to a whole number of per-device shares, and the padding dropped."""
    current = keras.distribution.distribution()
    devices = 1 if current is None else current.device_mesh.devices.size
    pad = -len(images) % devices
    if pad:
        images = np.concatenate([images, np.repeat(images[:1], pad, axis=0)])
    return model.predict(images, batch_size=batch_size, verbose=0)[: len(images) - pad]


def lower_is_better(monitor: str) -> bool:
    """The direction of a `train.monitor` metric: a loss falls, the scores rise."""
    return monitor == "val_loss"
