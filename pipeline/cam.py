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

Where a map's cells sit on the image: not where a plain resize of the map puts them. Cell i of the
last feature map is centred on input pixel `offset + stride * i`, and the offset is the
backbone's: ResNet50 samples with 1x1 stride-2 convolutions, so its cells are centred on pixels
0, 32, 64 ... (offset 0), DenseNet121 averages 2x2 blocks (offset 14), while a resize assumes
15.5. Drawn with a resize, ResNet50's evidence at the centre of a 64-pixel image (its cell 1,
centred on pixel 32) lit the bottom-right quarter (pixel 47.5) of every image. `grid` computes
the geometry from the backbone's layers (receptive-field arithmetic) and `heatmap` places the
cells there.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import keras
import numpy as np

from pipeline.layers import BACKBONE, INPUT, PREDICTIONS


@dataclass(frozen=True)
class Grid:
    """Where a backbone's feature-map cells sit in its input: cell i is centred on input pixel
    `offset + stride * i` (pixel centres at 0, 1, ...); `size` is the input side in pixels."""

    stride: float
    offset: float
    size: int


_KERNEL_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
)


def grid(model: keras.Model) -> Grid | None:
    """The feature grid of `model`'s `backbone`, from its layers' kernels, strides and padding.

    Receptive-field arithmetic (Dumoulin and Visin 2016; Araujo et al. 2019) along the layer
    graph: a kernel k with stride s and left padding p moves the first cell's centre by
    ((k - 1) / 2 - p) input steps and multiplies the step by s. Branches that merge (ResNet's
    shortcut, DenseNet's concatenation) must agree. None when a layer resamples in a way this
    does not model (then `heatmap` falls back to an even spread over the image).
    """
    backbone = model.get_layer(BACKBONE)
    size = backbone.inputs[0].shape[1]
    if size is None or not isinstance(backbone, keras.Model):
        return None
    known: dict[int, tuple[float, float] | None] = {}  # None: not modelled
    for layer in backbone.layers:
        node = layer._inbound_nodes[0]  # built once, as in keras.applications
        if not node.parent_nodes:
            known[id(layer)] = (1.0, 0.0)
            continue
        parents = [known.get(id(parent.operation)) for parent in node.parent_nodes]
        geometry = parents[0]
        if geometry is None or any(other != geometry for other in parents):
            return None  # merged branches disagree, or an unmodelled layer upstream
        before = tuple(node.input_tensors[0].shape[1:3])
        after = tuple(node.output_tensors[0].shape[1:3])
        known[id(layer)] = _step(layer, geometry, before[0], before == after)
    step = known.get(id(backbone.layers[-1]))
    return None if step is None else Grid(stride=step[0], offset=step[1], size=int(size))


def _step(
    layer: keras.layers.Layer, geometry: tuple[float, float], size: int, same_shape: bool
) -> tuple[float, float] | None:
    """(stride, offset) after `layer`, given them before it and its input side `size`."""
    stride, offset = geometry
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return stride, offset - layer.padding[0][0] * stride
    if isinstance(layer, _KERNEL_LAYERS):
        k = layer.kernel_size[0] if hasattr(layer, "kernel_size") else layer.pool_size[0]
        k = (k - 1) * (getattr(layer, "dilation_rate", (1,))[0]) + 1
        s = layer.strides[0]
        if layer.padding == "same":  # TensorFlow's rule: the odd pixel of padding goes last
            total = max(k - (s if size % s == 0 else size % s), 0)
            left = total // 2
        else:
            left = 0
        return stride * s, offset + ((k - 1) / 2 - left) * stride
    return geometry if same_shape else None


def feature_model(model: keras.Model) -> keras.Model:
    """Image -> (backbone feature map, class probabilities), sharing the model's layers.

    Assumes pipeline.backbones' shape: a chain of single-input top-level layers (resize,
    preprocess, backbone, pool, dropout, predictions). Dropout is inactive at inference.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if BACKBONE not in names or PREDICTIONS not in names:
        raise ValueError(f"model: needs layers {BACKBONE!r} and {PREDICTIONS!r}, has {names}")
    inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name=INPUT)
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


def heatmap(cam: np.ndarray, height: int, width: int, cells: Grid | None = None) -> np.ndarray:
    """A CAM as float32 in [0, 1] at image size: ReLU, divided by its maximum, bilinear upsampling
    with each cell at its centre in the backbone's input (`cells`, from `grid`; None: spread
    evenly, as a plain resize does). Beyond the outer cells' centres the edge values hold.

    The height x width image is the backbone's square input scaled (the prepared images are
    square; the page crops a letterboxed upload's box out of the square afterwards).
    """
    heat = np.maximum(np.asarray(cam, dtype=np.float32), 0)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    rows, cols = heat.shape
    if cells is None:  # the cells spread evenly: a plain resize's geometry
        cells = Grid(stride=1.0, offset=0.0, size=1)
        scale_y, scale_x = rows / height, cols / width
        shift_y, shift_x = 0.5 * scale_y - 0.5, 0.5 * scale_x - 0.5
    else:  # output pixel -> input pixel of the backbone -> cell coordinate
        scale_y = cells.size / (height * cells.stride)
        scale_x = cells.size / (width * cells.stride)
        shift_y = (0.5 * cells.size / height - 0.5 - cells.offset) / cells.stride
        shift_x = (0.5 * cells.size / width - 0.5 - cells.offset) / cells.stride
    to_cell = np.array([[scale_x, 0, shift_x], [0, scale_y, shift_y]], dtype=np.float32)
    placed = cv2.warpAffine(
        heat, to_cell, (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    return np.clip(placed, 0, 1)


def overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, cells: Grid | None = None
) -> np.ndarray:
    """Blend a CAM's `heatmap` (JET colours, red = strongest) over an RGB uint8 image."""
    height, width = image.shape[:2]
    heat = heatmap(cam, height, width, cells=cells)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)
