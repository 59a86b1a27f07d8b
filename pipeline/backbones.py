"""The classifiers: an ImageNet backbone with its own preprocessing and resizing inside the model.

The saved model takes raw 0-255 RGB images of any size, so whoever serves it cannot get the
normalisation wrong. Layer names are a contract: `backbone` (the conv base, returning the last
feature map), `pool` and `predictions` (a GAP -> Dense head), which is what makes class activation
maps exact (see pipeline.cam).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras
import numpy as np

from pipeline.errors import UserError
from pipeline.layers import BACKBONE, DROPOUT, INPUT, POOL, PREDICTIONS, PREPROCESS, RESIZE

# name -> (keras.applications constructor, preprocessing style, the notop file Keras caches)
BACKBONES = {
    "densenet121": (
        keras.applications.DenseNet121,
        "torch",
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50": (
        keras.applications.ResNet50,
        "caffe",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
}

# Keras' own ImageNet statistics (keras.applications.imagenet_utils), in 0-255 units.
_TORCH_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
_TORCH_STD = np.array([0.229, 0.224, 0.225]) * 255.0
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def keras_cache_file(arch: str) -> Path:
    """Where Keras looks for (and downloads) the ImageNet notop weights of `arch`."""
    home = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    return home / "models" / BACKBONES[arch][2]


def resolve_weights(arch: str, weights: str | None) -> str | None:
    """Turn `model.weights` into what keras.applications accepts, failing early and clearly.

    `imagenet` uses Keras' download and cache; a path names a local weights file (air-gapped
    sites); None trains from scratch.
    """
    if arch not in BACKBONES:
        raise UserError(f"arch: unknown backbone {arch!r}; choose one of {sorted(BACKBONES)}")
    if weights is None or weights == "imagenet":
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"model.weights: weights file not found: {path}; give the path of Keras' "
            f"{BACKBONES[arch][2]}, or use 'imagenet' (download) or null (train from scratch)"
        )
    return str(path.resolve())


def _preprocessing(style: str) -> keras.layers.Layer:
    """Keras' ImageNet preprocessing of `style`, as one frozen 1x1 convolution per pixel.

    Why a convolution and not `Normalization`: its weights are variables, which every exporter
    freezes into the graph, whereas `Normalization`'s mean and variance are captured constants
    that `model.export(format="onnx")` turned into two extra graph inputs (measured with tf2onnx
    1.17). It is a standard layer, so the saved model loads anywhere without custom objects.
    torch: (x / 255 - mean) / std per RGB channel; caffe: RGB -> BGR, minus the BGR mean.
    """
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    if style == "torch":
        for channel in range(3):
            kernel[0, 0, channel, channel] = 1.0 / _TORCH_STD[channel]
        bias = -_TORCH_MEAN / _TORCH_STD
    else:
        for out_channel, in_channel in enumerate((2, 1, 0)):
            kernel[0, 0, in_channel, out_channel] = 1.0
        bias = -_CAFFE_MEAN_BGR
    layer = keras.layers.Conv2D(3, 1, name=PREPROCESS, trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, bias.astype("float32")])
    return layer


def build_classifier(
    arch: str,
    image_size: int,
    classes: tuple[str, ...] | list[str],
    weights: str | None = None,
    dropout: float = 0.2,
    keep_aspect: bool = True,
) -> keras.Model:
    """Backbone + GAP + dropout + softmax head, taking raw 0-255 RGB images of any size.

    With pretrained weights the backbone runs with `training=False`, so its BatchNorm layers stay
    in inference mode during fine-tuning (the keras-io transfer-learning recipe); from scratch
    they must learn their statistics, so they follow the training flag.
    """
    resolved = resolve_weights(arch, weights)
    constructor, style, cache_name = BACKBONES[arch]
    try:
        base = constructor(
            include_top=False, weights=resolved, input_shape=(image_size, image_size, 3)
        )
    except Exception as exc:  # Keras raises a bare Exception when the download fails
        if resolved != "imagenet":
            raise
        raise UserError(
            f"model.weights: ImageNet weights for {arch} could not be downloaded ({exc}). "
            f"Put Keras' file {cache_name} at {keras_cache_file(arch)} (or anywhere, and set "
            f"model.weights to its path), or set model.weights to null to train from scratch"
        ) from None
    base.name = BACKBONE
    if resolved is None:
        _fast_batchnorm_statistics(base)
    inputs = keras.Input(shape=(None, None, 3), name=INPUT)
    x = keras.layers.Resizing(image_size, image_size, pad_to_aspect_ratio=keep_aspect, name=RESIZE)(
        inputs
    )
    x = _preprocessing(style)(x)
    x = base(x, training=False) if resolved is not None else base(x)
    x = keras.layers.GlobalAveragePooling2D(name=POOL)(x)
    x = keras.layers.Dropout(dropout, name=DROPOUT)(x)
    outputs = keras.layers.Dense(
        len(classes), activation="softmax", dtype="float32", name=PREDICTIONS
    )(x)
    return keras.Model(inputs, outputs, name=f"{arch}_classifier")


def for_inference(model: keras.Model) -> keras.Model:
    """The same architecture and weights without the optimizer or compile settings, for saving.

    What gets saved is served, never resumed: Adam's two moments would triple a ResNet50 file
    (270 MB instead of 90), and a model trained on the torch backend stores a torch-only optimizer
    class, so the file would not load under TensorFlow or JAX (measured: it fails to deserialize).
    """
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _fast_batchnorm_statistics(base: keras.Model, momentum: float = 0.9) -> None:
    """From scratch, let BatchNorm's moving statistics follow training within a few epochs.

    Keras' default momentum (0.99) needs hundreds of steps to forget its initial values; the demo
    trains for about 80. Measured on the synthetic set: DenseNet121 reached val macro-F1 0.14
    with 0.99 (all predicted `normal`) and 0.98 with 0.9, with identical training accuracy.
    """
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


_BLOCK_NAME = re.compile(r"(conv\d+_block\d+)_")


def backbone_blocks(base: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """The backbone's layers as named blocks, bottom to top: `stem`, then one per block.

    Fine-tuning "the top N blocks" must cut between blocks, never inside one (a convolution
    trained against a frozen BatchNorm of its own block). Keras names the layers of both backbones
    `conv<stage>_block<n>_...` (16 residual blocks in ResNet50, 58 dense layers in DenseNet121);
    a layer outside a block (a DenseNet transition, the final BatchNorm) joins the block below it.
    """
    blocks: list[tuple[str, list[keras.layers.Layer]]] = [("stem", [])]
    for layer in base.layers:
        match = _BLOCK_NAME.match(layer.name)
        if match and match.group(1) != blocks[-1][0]:
            blocks.append((match.group(1), []))
        blocks[-1][1].append(layer)
    return blocks


def set_backbone_trainable(
    model: keras.Model, unfreeze: int | str, freeze_batchnorm: bool
) -> list[str]:
    """Unfreeze all (`"all"`) or the top `unfreeze` blocks of the backbone; returns their names.

    With pretrained weights BatchNorm stays frozen: it keeps the ImageNet statistics intact when
    fine-tuning on a few hundred images. From scratch it must learn like every other layer.
    """
    base = model.get_layer(BACKBONE)
    base.trainable = True
    blocks = backbone_blocks(base)
    first = 0 if unfreeze == "all" else max(0, len(blocks) - int(unfreeze))
    for i, (_, layers) in enumerate(blocks):
        for layer in layers:
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = i >= first and not (is_bn and freeze_batchnorm)
    return [name for name, _ in blocks[first:]]


def freeze_backbone(model: keras.Model) -> None:
    """Freeze the whole backbone for the warm-up phase, so only the new head learns at first."""
    model.get_layer(BACKBONE).trainable = False
