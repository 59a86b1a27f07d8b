"""Class activation maps for the GAP -> Dense classifiers in pipeline.backbones.

Why CAM and not a gradient: the head is `backbone` (feature map F, h x w x C) -> `pool` (global
average) -> `dropout` -> `predictions` (Dense W, b, softmax). The pre-softmax score of class c is
mean_hw(F @ W[:, c]) + b_c, so its gradient with respect to F is W[:, c] / (h w) at every position:
Grad-CAM's channel weights are W[:, c] up to a constant and Grad-CAM equals CAM = relu(F @ W[:, c])
(Zhou et al. 2016; Selvaraju et al. 2017, section 3.1). No gradients are needed, so this works on
every Keras backend, and the map is exact: its mean plus b_c is the logit the model computed.

The saved model nests its backbone as a sub-model, whose `.output` belongs to the sub-model's own
graph: `keras.Model(model.inputs, model.get_layer("backbone").output)` fails with "Output ... is
not connected to inputs". So the chain of top-level layers is re-applied to a fresh input,
returning the feature map next to the probabilities (same weights, no copy).
"""

from __future__ import annotations

import cv2
import keras
import numpy as np

BACKBONE = "backbone"
PREDICTIONS = "predictions"


def feature_model(model: keras.Model) -> keras.Model:
    """Image -> (backbone feature map, class probabilities), sharing the model's layers.

    Assumes pipeline.backbones' shape: a chain of single-input top-level layers (resize,
    preprocess, backbone, pool, dropout, predictions). Dropout is inactive at inference.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if BACKBONE not in names or PREDICTIONS not in names:
        raise ValueError(f"model: needs layers {BACKBONE!r} and {PREDICTIONS!r}, has {names}")
    inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name="image")
    x, features = inputs, None
    for layer in layers:
        x = layer(x)
        if layer.name == BACKBONE:
            features = x
    return keras.Model(inputs, [features, x], name=f"{model.name}_cam")


def class_activation_maps(
    model: keras.Model,
    images: np.ndarray,
    class_index: int | np.ndarray | None = None,
    batch_size: int = 32,
    cam: keras.Model | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CAMs (N, h, w) in logit units (before ReLU) and the probabilities (N, K) of `images`.

    `class_index` picks the class per image (an int for all, or an array); default: the predicted
    class. `cam` reuses a `feature_model(model)` across calls. The maps live on the backbone's
    grid (image size / 32 for DenseNet121 and ResNet50); `overlay` upsamples them.
    """
    cam = cam or feature_model(model)
    features, proba = cam.predict(
        np.asarray(images, dtype="float32"), batch_size=batch_size, verbose=0
    )
    proba = np.asarray(proba)
    chosen = proba.argmax(1) if class_index is None else class_index
    return maps_from_features(model, features, chosen), proba


def maps_from_features(
    model: keras.Model, features: np.ndarray, class_index: int | np.ndarray
) -> np.ndarray:
    """CAMs (N, h, w) from backbone feature maps (N, h, w, C): F @ W[:, class] per image."""
    kernel = model.get_layer(PREDICTIONS).get_weights()[0]
    maps = np.einsum("nhwc,ck->nhwk", np.asarray(features, dtype=np.float64), kernel)
    chosen = np.broadcast_to(np.asarray(class_index), (len(maps),))
    return maps[np.arange(len(maps)), :, :, chosen]


def heatmap(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A CAM as float32 in [0, 1] at image size: ReLU, divided by its maximum, bilinear upsampling.

    The prepared images are square, so the model's resize layer only scales them and the map
    covers the whole image.
    """
    heat = np.maximum(np.asarray(cam, dtype=np.float32), 0)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    return np.clip(cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a CAM's `heatmap` (JET colours, red = strongest) over an RGB uint8 image."""
    heat = heatmap(cam, *image.shape[:2])
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)
