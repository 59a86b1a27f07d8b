"""Tiny registered models with known behaviour, for the promotion and serving tests.

No training: a model reads the mean brightness of the disk where `tests.factories.label_image`
draws each class's blob, so its test-split metrics are known in advance (and pass for any seed).
`good` finds every class; `bad` says benign for everything; `no_normal` confuses normal with
benign (macro-F1 about 0.56: above a 0.5 floor, far below a perfect champion).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np

from pipeline import registry, tracking
from pipeline.serving import pyfunc
from tests.factories import CLASSES, label_image, make_release

SIZE = 32
CENTRES = [(SIZE // 4, SIZE // 4), (SIZE // 2, 3 * SIZE // 4), (3 * SIZE // 4, SIZE // 2)]  # (x, y)


def disk_model(kind: str = "good", classes: tuple[str, ...] = CLASSES) -> keras.Model:
    """Resize (like pipeline.backbones) -> grey -> one disk template per class -> softmax."""
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(SIZE, SIZE, pad_to_aspect_ratio=True, name="resize")(inputs)
    x = keras.layers.Conv2D(1, 1, use_bias=False, name="grey")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="disk_classifier")
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    kernel = np.zeros((SIZE * SIZE, len(classes)), dtype="float32")
    for k, (cx, cy) in enumerate(CENTRES[: len(classes)]):
        disk = (np.hypot(xx - cx, yy - cy) <= 3).reshape(-1)
        kernel[disk, k] = 0.2 / disk.sum()  # 0.2 x mean disk brightness: blob 220 vs ground 90
    bias = np.zeros(len(classes), dtype="float32")
    if kind == "bad":
        kernel[:] = 0
        bias[0] = 5.0
    elif kind == "good_retrained":
        bias[:] = 1e-3  # the same answers (softmax ignores a shared shift), other weights and bytes
    elif kind == "no_normal":
        kernel[:, 0] += kernel[:, 2]
        kernel[:, 2] = 0
    model.get_layer("grey").set_weights([np.full((1, 1, 3, 1), 1 / 3, dtype="float32")])
    model.get_layer("predictions").set_weights([kernel, bias])
    return model


def register_model(
    kind: str,
    alias: str = "challenger",
    name: str = "tumor-classifier",
    tags: dict[str, str] | None = None,
    threshold: float | None = None,
    trained_on: tuple[str, ...] = (),
) -> str:
    """Release a disk model (its rule: `threshold`) as select does: log it as the serving pyfunc,
    register it with the version written inside, point `alias` at it."""
    tracking.setup("tests")
    version = registry.next_version(name)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        folder = make_release(
            Path(tmp) / "release",
            disk_model(kind),
            threshold,
            trained_on=trained_on,
            version=version,
            arch=f"disk-{kind}",
        )
        info = pyfunc.log_release(folder, label_image(1, SIZE, np.random.default_rng(0)))
    got = registry.register(info.model_uri, name, alias, {"arch": f"disk-{kind}", **(tags or {})})
    assert got == version
    return got
