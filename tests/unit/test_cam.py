"""pipeline.cam: class activation maps are exact for saved classifiers and point at the evidence."""

from __future__ import annotations

import keras
import numpy as np

from pipeline import cam
from pipeline.backbones import build_classifier

CLASSES = ("benign", "malignant", "normal")


def red_spot_model(size: int = 32) -> keras.Model:
    """The classifier's layer contract with a transparent backbone: redness on an 8x8 grid.

    Class 0's score rises with redness, so its CAM must peak where the image is red.
    """
    inner = keras.Input(shape=(size, size, 3))
    red = keras.layers.Conv2D(1, 1, activation="relu", name="redness")(inner)
    grid = keras.layers.AveragePooling2D(size // 8)(red)
    backbone = keras.Model(inner, grid, name="backbone")
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(size, size, name="resize")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("backbone").get_layer("redness").set_weights(
        [np.array([1.0, 0.0, 0.0]).reshape(1, 1, 3, 1), np.zeros(1)]
    )
    model.get_layer("predictions").set_weights([np.array([[0.05, -0.05, 0.0]]), np.zeros(3)])
    return model


def test_maps_of_a_saved_classifier_are_exact_despite_the_nested_backbone(tmp_path):
    model = build_classifier("resnet50", 64, CLASSES, weights=None)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)

    feature_model = cam.feature_model(loaded)
    per_class = [
        cam.class_activation_maps(loaded, images, class_index=k, cam=feature_model)[0]
        for k in range(3)
    ]
    maps, proba = cam.class_activation_maps(loaded, images, cam=feature_model)

    assert maps.shape == (3, 2, 2)  # ResNet50's grid is 1/32 of the input side
    np.testing.assert_allclose(proba, loaded.predict(images.astype("float32"), verbose=0))
    # GAP -> Dense: the mean of each class map plus the bias is that class's logit.
    bias = loaded.get_layer("predictions").get_weights()[1]
    logits = np.stack([m.mean(axis=(1, 2)) for m in per_class], axis=1) + bias
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax, proba, atol=1e-5)
    chosen = proba.argmax(1)
    for i in range(3):  # default: the map of the predicted class
        np.testing.assert_allclose(maps[i], per_class[chosen[i]][i])


def test_the_map_peaks_where_the_evidence_is():
    model = red_spot_model(32)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[20:28, 4:12, 0] = 255  # a red square, lower left

    maps, proba = cam.class_activation_maps(model, image[None], class_index=0)
    assert maps.shape == (1, 8, 8)
    row, col = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 5 <= row <= 6
    assert 1 <= col <= 2

    heat = cam.heatmap(maps[0], 32, 32)
    assert heat.shape == (32, 32)
    assert heat.max() == 1.0
    assert heat.min() >= 0.0
    assert heat[24, 8] > 0.9
    assert heat[4, 28] == 0.0


def test_overlay_keeps_the_image_shape_and_colours_the_hot_region():
    model = red_spot_model(32)
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    image[0:8, 24:32, 0] = 255  # top right
    maps, _ = cam.class_activation_maps(model, image[None], class_index=0)
    blended = cam.overlay(image, maps[0])
    assert blended.shape == image.shape
    assert blended.dtype == np.uint8
    hot, cold = blended[4, 28].astype(int), blended[28, 4].astype(int)
    assert hot[0] > hot[2]  # JET: red where the map is strongest
    assert cold[2] > cold[0]  # blue where it is zero
