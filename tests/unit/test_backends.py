"""The model and training code use the Keras 3 API only: both backbones build and take a
training step on TensorFlow (the default) and on JAX (recommended for GPUs)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import numpy as np, keras
from pipeline.backbones import build_classifier, set_backbone_trainable
from pipeline.batches import TrainBatches, light
from pipeline.config import AugmentParams
keras.utils.set_random_seed(0)
images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
batches = TrainBatches(images, np.arange(8) % 3, 3, 4, 0, light(AugmentParams()))
for arch in ("densenet121", "resnet50"):
    model = build_classifier(arch, 32, ("benign", "malignant", "normal"))
    set_backbone_trainable(model, "all", freeze_batchnorm=False)
    # the quickest first step on 2 cores: eager on TensorFlow (15 s), compiled on JAX, whose
    # op-by-op eager mode compiles every distinct op shape (DenseNet: 165 s eager, 51 s jit)
    eager = keras.backend.backend() == "tensorflow"
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=eager)
    x, y = batches[0]
    before = [w.copy() for w in model.get_layer("predictions").get_weights()]
    loss = float(model.train_on_batch(x, y))
    after = model.get_layer("predictions").get_weights()
    assert np.isfinite(loss), loss
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    print(keras.backend.backend(), arch, "ok", round(loss, 3))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_both_backbones_build_and_train_one_step(backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{backend} densenet121 ok" in result.stdout
    assert f"{backend} resnet50 ok" in result.stdout
