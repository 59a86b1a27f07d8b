"""Random, seeded image augmentation in NumPy/OpenCV, outside any compiled model graph.

Used offline by the `augment` stage (class balancing of the train split) and on the fly by the
training input pipeline. Keeping it out of the model matters: random-augmentation layers inside a
Keras model stalled the first epoch for over six minutes on the JAX backend (DESIGN.md).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.config import AugmentParams


def augment_image(image: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> np.ndarray:
    """One random variant of an (S, S, 3) uint8 image: flip, rotation, zoom, brightness, speckle.

    The ranges are small on purpose: an ultrasound lesion's shape and margin carry its label, so
    no transform may turn a circumscribed oval into something else.
    """
    out = image.astype(np.float32)
    height, width = out.shape[:2]
    if p.flip and rng.random() < 0.5:
        out = out[:, ::-1]  # left-right only: depth (top-bottom) has meaning in ultrasound
    angle = rng.uniform(-p.rotation_deg, p.rotation_deg)
    scale = 1.0 + rng.uniform(-p.zoom, p.zoom)
    if angle or scale != 1.0:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        out = cv2.warpAffine(
            np.ascontiguousarray(out),
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
    if p.contrast:
        mean = out.mean()
        out = (out - mean) * (1.0 + rng.uniform(-p.contrast, p.contrast)) + mean
    if p.brightness:
        out = out + 255.0 * rng.uniform(-p.brightness, p.brightness)
    if p.speckle:
        # multiplicative noise, the kind ultrasound has, shared across the (grey) channels
        noise = rng.normal(1.0, p.speckle, size=out.shape[:2])[..., None]
        out = out * noise
    return np.clip(out, 0, 255).astype(np.uint8)


def balance_counts(counts: dict[str, int], target: int | str) -> dict[str, int]:
    """How many augmented images each class needs to reach `target` ("max": the largest class)."""
    goal = max(counts.values()) if target == "max" else int(target)
    return {label: max(0, goal - n) for label, n in counts.items()}
