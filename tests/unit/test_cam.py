"""pipeline.cam: class activation maps are exact for saved classifiers and point at the evidence."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

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


@pytest.mark.slow  # saves and reloads a full ResNet50 (~10 s): out of the quick loop
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


def test_the_heat_map_puts_each_cell_where_the_backbone_centres_it():
    one_cell = np.zeros((4, 4))
    one_cell[2, 1] = 1.0
    resnet_like = cam.Grid(stride=32.0, offset=0.0, size=128)  # cells centred on 0, 32, 64, 96
    heat = cam.heatmap(one_cell, 128, 128, cells=resnet_like)
    assert np.unravel_index(heat.argmax(), heat.shape) == (64, 32)
    assert heat[64, 32] == 1.0
    even = cam.heatmap(one_cell, 128, 128)  # a plain resize's spread: centres 15.5, 47.5, ...
    peak = np.unravel_index(even.argmax(), even.shape)
    assert peak in {(79, 47), (79, 48), (80, 47), (80, 48)}
    halved = cam.heatmap(one_cell, 64, 64, cells=resnet_like)  # drawn smaller: scaled with it
    assert np.unravel_index(halved.argmax(), halved.shape) == (32, 16)


def test_an_even_grid_gives_what_a_resize_gives():
    model = red_spot_model(32)
    cells = cam.grid(model)
    assert cells == cam.Grid(stride=4.0, offset=1.5, size=32)  # 4x4 average pools
    cam_map = np.random.default_rng(1).random((8, 8))
    np.testing.assert_allclose(
        cam.heatmap(cam_map, 32, 32, cells=cells), cam.heatmap(cam_map, 32, 32), atol=1e-6
    )


def _blob(size: int, centre: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(100, 15, (size, size)).clip(0, 255)
    if centre:
        cv2.circle(image, (centre[1], centre[0]), 8, 240, -1)
    return np.repeat(image[..., None], 3, axis=2).astype(np.float32)


# Cell centres worked out by hand from keras.applications: ResNet50 reaches 1/32 through a 7x7
# stride-2 convolution (padding 3), a 3x3 stride-2 max pool (padding 1) and three 1x1 stride-2
# convolutions, which keep every other pixel: centres 0, 32, 64, 96. DenseNet121 through the same
# stem and three 2x2 average pools, each centred between its two pixels: 14, 46, 78, 110.
CENTRES = {"resnet50": (0.0, (32, 96)), "densenet121": (14.0, (46, 78))}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(CENTRES))
def test_a_backbone_whose_evidence_is_a_blob_gets_a_map_peaking_on_the_blob(arch):
    """A real backbone (weights=None) whose head is fitted to find a bright blob anywhere: its
    class activation map must peak on the blob. Before the cells were placed by `grid`,
    ResNet50's peak sat half a cell (16 px) below and right of it, on every image."""
    size, rng = 128, np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = build_classifier(arch, size, CLASSES, weights=None)
    offset, (near, far) = CENTRES[arch]
    assert cam.grid(model) == cam.Grid(stride=32.0, offset=offset, size=size)
    net = cam.feature_model(model)
    spots = [tuple(int(v) for v in rng.integers(10, size - 10, 2)) for _ in range(24)]
    images = np.stack([_blob(size, s, rng) for s in spots] + [_blob(size, (), rng)] * 24)
    pooled = net.predict(images, verbose=0)[0].mean(axis=(1, 2))
    fitted = LogisticRegression(C=10, max_iter=2000).fit(pooled, [0] * 24 + [1] * 24)
    kernel = np.zeros((pooled.shape[1], 3), dtype="float32")
    kernel[:, 0] = -fitted.coef_[0]  # class 0 ("benign" here): the blob is there
    model.get_layer("predictions").set_weights([kernel, np.zeros(3, dtype="float32")])

    for centre in [(near, near), (far, near), (near, far)]:
        maps, _ = cam.class_activation_maps(model, _blob(size, centre, rng)[None], 0, cam=net)
        heat = cam.heatmap(maps[0], size, size, cells=cam.grid(model))
        peak = np.unravel_index(heat.argmax(), heat.shape)
        assert np.abs(np.subtract(peak, centre)).max() <= 2, (centre, peak)
