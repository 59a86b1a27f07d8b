"""Heat maps for the page: the class activation map of the answered class, as an RGBA overlay.

The feature model (image -> feature map, probabilities) shares the classifier's weights and is
traced once at start; one forward pass gives the probabilities, the answer and the map. The map
is of the class the decision rule answered, not of the arg-max, so the picture explains the
answer shown beside it.
"""

from __future__ import annotations

from typing import Any

import cv2
import keras
import numpy as np
from PIL import Image

from pipeline import cam
from pipeline.serving.classifier import Classifier
from pipeline.serving.engine import KerasEngine

MAX_SIDE = 512  # the overlay is sent at most this many pixels on its longer side
MAX_ALPHA = 200  # the strongest evidence is drawn at this opacity (of 255)


class HeatMapper:
    """The service's answer and its heat map from one forward pass; one per loaded model, built
    at start so the feature model is traced before the first request."""

    def __init__(self, classifier: Classifier, max_side: int = MAX_SIDE) -> None:
        if not isinstance(classifier.engine, KerasEngine):
            raise TypeError("heat maps need the Keras layers: serve model.keras, not model.onnx")
        self.classifier = classifier
        self.model = classifier.engine.model
        self.max_side = max_side
        self.features = cam.feature_model(self.model)
        self.cells = cam.grid(self.model)  # where the map's cells sit on the model's input
        # (rows, columns) of the feature map: what the page warns about when coarse (64 px: 2 x 2)
        self.grid_shape = tuple(int(d) for d in self.features.outputs[0].shape[1:3])
        height, width = classifier.engine.input_size or (64, 64)
        self(np.zeros((1, height, width, 3), np.float32), 8, 8)  # trace once, at start

    def __call__(
        self, batch: np.ndarray, height: int, width: int
    ) -> tuple[dict[str, Any], Image.Image | None]:
        """(the answer, RGBA heat map at the image's aspect ratio, or None for an input out of
        scope) for a one-image batch."""
        features, proba = self.features(batch, training=False)
        proba = np.asarray(keras.ops.convert_to_numpy(proba), dtype=np.float64)
        features = keras.ops.convert_to_numpy(features)
        scores = self.classifier.ood_scores(features)
        result = self.classifier.describe(proba[0], None if scores is None else float(scores[0]))
        if result["class"] not in self.classifier.classes:
            return result, None  # out of scope: no class to explain
        chosen = self.classifier.classes.index(result["class"])
        cam_map = cam.maps_from_features(self.model, features, chosen)[0]
        return result, self.overlay(cam_map, height, width)

    def overlay(self, cam_map: np.ndarray, height: int, width: int) -> Image.Image:
        """RGBA image: JET colours with opacity rising with the map, cropped to the image.

        The model saw the image letterboxed in a square (KerasEngine.prepare), so the map covers
        that square; the image's own box is cut out of its centre.
        """
        scale = min(1.0, self.max_side / max(height, width))
        out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
        side = max(out_h, out_w)
        square = cam.heatmap(cam_map, side, side, cells=self.cells)
        if self.classifier.engine.keep_aspect:
            top, left = (side - out_h) // 2, (side - out_w) // 2
            heat = square[top : top + out_h, left : left + out_w]
        else:
            heat = cv2.resize(square, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        colour = cv2.cvtColor(
            cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
        )
        alpha = np.uint8(np.clip(heat, 0, 1) * MAX_ALPHA)
        return Image.fromarray(np.dstack([colour, alpha]), "RGBA")
