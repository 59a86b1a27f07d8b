"""Train one small classifier twice through `phases.fit`: on one device, then data parallel.

Run by tests/unit/test_distribution.py in its own process, because the backend (KERAS_BACKEND=jax)
and the virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=2) are fixed when
Keras and JAX are imported. Prints one JSON line: the device count, the largest weight and
history differences between the two trainings, and whether the distribution was restored.
"""

import json
import sys
import tempfile

import keras
import mlflow
import numpy as np

from pipeline import phases
from pipeline.batches import TrainBatches
from pipeline.datasets import ImageSet
from tests.factories import project_params

SIZE, CLASSES = 16, ("benign", "malignant", "normal")
# SGD: its step is proportional to the gradient, so two reduction orders differ by float rounding.
# Adam divides by sqrt(v): a near-zero gradient's rounding becomes a learning-rate-sized step
# (measured: weights 5e-4 apart after 6 steps, against 3e-8 with SGD).
OPTIMIZER = "sgd"


def tiny_classifier() -> keras.Model:
    """The classifier's shape (a `backbone` sub-model with BatchNorm, pooling, softmax head) at a
    size that compiles in seconds; BatchNorm shows whether batch statistics span all devices."""
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ],
        name="backbone",
    )
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def images(n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    pixels = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("uint8")
    pixels[labels == 1, : SIZE // 2] = 230  # learnable: a bright top half for one class
    return ImageSet(images=pixels, labels=labels, paths=[f"{i}.png" for i in range(n)])


def fit(distribution: str | None, n_train: int) -> tuple[list[np.ndarray], dict]:
    params = project_params(
        {
            "train": {
                "batch_size": 8,
                "optimizer": OPTIMIZER,
                "distribution": distribution,
                "augment_on_the_fly": False,
                "backbones": {"resnet50": {"epochs": 2, "learning_rate": 0.01}},
                "patience": 5,
            }
        }
    )
    train_set, val = images(n_train, 1), images(7, 2)  # 7: val needs padding over 2 devices
    batches = TrainBatches(train_set.images, train_set.labels, 3, 8, params.seed)
    model = tiny_classifier()
    with mlflow.start_run():
        history, best_epoch = phases.fit(model, batches, val, params, "resnet50")
    return model.get_weights(), history.drop(columns=["epoch_seconds", "images_per_second"])


def main() -> None:
    store = tempfile.mkdtemp()
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    single_weights, single = fit(None, 24)
    dp_weights, dp = fit("data_parallel", 24)
    fit("data_parallel", 25)  # a last batch of one image: skipped, not a crash
    print(
        json.dumps(
            {
                "devices": len(keras.distribution.list_devices()),
                "max_weight_diff": max(
                    float(np.abs(a - b).max())
                    for a, b in zip(single_weights, dp_weights, strict=True)
                ),
                "max_history_diff": {c: float((single[c] - dp[c]).abs().max()) for c in single},
                "restored": keras.distribution.distribution() is None,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
