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
    no transform may turn a circumscribed oval into something else. The geometry runs on uint8
    and the photometry is one fused OpenCV pass, because this feeds a GPU (bench/).
    """
    out = image
    height, width = out.shape[:2]
    if p.flip and rng.random() < 0.5:
        out = out[:, ::-1]  # left-right only: depth (top-bottom) has meaning in ultrasound
    angle = rng.uniform(-p.rotation_deg, p.rotation_deg) if p.rotation_deg else 0.0
    scale = 1.0 + rng.uniform(-p.zoom, p.zoom) if p.zoom else 1.0
    if angle or scale != 1.0:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        out = cv2.warpAffine(
            np.ascontiguousarray(out),
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
    out = np.ascontiguousarray(out)
    # contrast around the mean, then brightness (x * gain + offset), exact as a 256-entry table
    gain = 1.0 + rng.uniform(-p.contrast, p.contrast) if p.contrast else 1.0
    offset = 255.0 * rng.uniform(-p.brightness, p.brightness) if p.brightness else 0.0
    if gain != 1.0:
        offset += (1.0 - gain) * float(np.mean(cv2.mean(out)[:3]))
    if gain != 1.0 or offset:
        table = np.clip(np.arange(256, dtype=np.float32) * gain + offset, 0, 255)
        out = cv2.LUT(out, table.astype(np.uint8))
    if p.speckle:
        # multiplicative noise, the kind ultrasound has, shared across the (grey) channels;
        # uniform with standard deviation `speckle` (a normal draw costs 5x more per pixel)
        noise = rng.random(out.shape[:2], dtype=np.float32)
        noise -= 0.5
        noise *= np.float32(p.speckle * np.sqrt(12.0))
        noise += 1.0
        out = cv2.multiply(out, cv2.merge([noise] * out.shape[2]), dtype=cv2.CV_8U)
    return out


def balance_counts(counts: dict[str, int], target: int | str) -> dict[str, int]:
    """How many augmented images each class needs to reach `target` ("max": the largest class)."""
    goal = max(counts.values()) if target == "max" else int(target)
    return {label: max(0, goal - n) for label, n in counts.items()}
