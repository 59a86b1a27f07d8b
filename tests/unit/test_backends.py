"""The model and training code use the Keras 3 API only: both backbones build and take a
training step on TensorFlow (the default) and on JAX (recommended for GPUs), and a model trained on
one backend serves on the other."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.factories import QUICK_XLA_FLAGS

pytestmark = pytest.mark.slow

SCRIPT = """
import os, numpy as np, keras
from pipeline.backbones import build_classifier, for_inference, set_backbone_trainable
from pipeline.batches import TrainBatches, light
from tests.factories import augment_params
keras.utils.set_random_seed(0)
images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
batches = TrainBatches(images, np.arange(8) % 3, 3, 4, 0, light(augment_params()))
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
    if "OUT" in os.environ:  # keep what train saves, to serve it on another backend
        saved = for_inference(model)
        saved.save(os.path.join(os.environ["OUT"], arch + ".keras"))
        np.save(os.path.join(os.environ["OUT"], arch + ".npy"), saved.predict(images[:4]))
    print(keras.backend.backend(), arch, "ok", round(loss, 3))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_both_backbones_build_and_train_one_step(backend, tmp_path):
    pytest.importorskip(backend)
    served_here = backend != keras.backend.backend()
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "XLA_FLAGS": QUICK_XLA_FLAGS,
        **({"OUT": str(tmp_path)} if served_here else {}),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{backend} densenet121 ok" in result.stdout
    assert f"{backend} resnet50 ok" in result.stdout
    if not served_here:
        return
    # trained there, served here (TensorFlow): the saved file loads and predicts the same
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    for arch in ("densenet121", "resnet50"):
        model = keras.saving.load_model(tmp_path / f"{arch}.keras")
        there = np.load(tmp_path / f"{arch}.npy")
        np.testing.assert_allclose(model.predict(images[:4], verbose=0), there, atol=1e-4)
