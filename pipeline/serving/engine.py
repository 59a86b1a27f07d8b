"""The Keras engine: a released model's file -> probabilities for decoded images.

Why the image is fitted here and not only inside the model: the model's own `resize` layer takes
any size, but the training images were fitted by `prepare` with Pillow's Lanczos filter to the
same square size (letterboxed), and the model's bilinear resize of a full-size upload would alias.
Fitting the same way makes a served image look like a training image, and a fixed input shape
means the predict function is traced once, not once per upload size. Normalisation stays in the
model.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from PIL import Image

from pipeline import images
from pipeline.serving.ood import pool

RESIZE_LAYER = "resize"  # pipeline.backbones names the model's resizing layer so


class KerasEngine:
    """A loaded Keras classifier and the input geometry it was trained with."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.features: keras.Model | None = None  # cam.feature_model, built on first use
        self.input_size: tuple[int, int] | None = None
        self.keep_aspect = True
        try:
            config = model.get_layer(RESIZE_LAYER).get_config()
        except ValueError:
            return  # not a pipeline.backbones model: images go in at their own size
        self.input_size = (int(config["height"]), int(config["width"]))
        self.keep_aspect = bool(config.get("pad_to_aspect_ratio", False))

    @classmethod
    def load(cls, path: Path) -> KerasEngine:
        return cls(keras.saving.load_model(path, compile=False))

    @property
    def n_outputs(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    def prepare(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """An 8-bit RGB or grey image -> (H, W, 3) float32 of 0-255 values, fitted as in prepare."""
        pil = (
            image
            if isinstance(image, Image.Image)
            else Image.fromarray(np.asarray(image, np.uint8))
        )
        if self.input_size is not None:
            height, width = self.input_size
            if height == width:
                pil = images.fit(pil, height, keep_aspect=self.keep_aspect)
            elif pil.size != (width, height):
                pil = pil.resize((width, height), Image.Resampling.LANCZOS)
        return np.asarray(images.to_rgb(pil), dtype=np.float32)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of a prepared batch (N, H, W, 3).

        `predict_on_batch` skips the dataset machinery of `model.predict`, which costs more than a
        small model's forward pass.
        """
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float64)

    def pooled_and_probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pooled backbone features (N, C), probabilities (N, K)) of a prepared batch, in one
        forward pass of the model's own layers (pipeline.cam.feature_model): the OOD score needs
        the features, the decision rule the probabilities."""
        if self.features is None:
            from pipeline import cam

            self.features = cam.feature_model(self.model)
        features, proba = self.features.predict_on_batch(batch)
        return pool(features), np.asarray(proba, dtype=np.float64)

    def warm_up(self, features: bool = False) -> None:
        """Trace the predict function once (the feature model's too when the OOD check needs
        it), so the first request is not the slow one."""
        height, width = self.input_size or (64, 64)
        zeros = np.zeros((1, height, width, 3), dtype=np.float32)
        if features:
            self.pooled_and_probabilities(zeros)
        else:
            self.probabilities(zeros)
