"""Random, seeded image augmentation in NumPy/OpenCV, outside any compiled model graph.

Used offline by the `augment` stage (class balancing of the train split) and on the fly by the
training input pipeline. Keeping it out of the model matters: random-augmentation layers inside a
Keras model stalled the first epoch for over six minutes on the JAX backend (DESIGN.md).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.config import AugmentParams


def speckle_field(
    rng: np.random.Generator, shape: tuple[int, int, int], speckle: float
) -> np.ndarray:
    """Multiplicative speckle factors (float32, mean 1, standard deviation `speckle`), grey.

    One value per pixel, repeated over the channels, because ultrasound speckle is grey. Uniform
    rather than normal: a normal draw costs five times more per pixel. The input pipeline draws
    one field twice the image size per epoch and gives each image a random window of it
    (`augment_image(field=...)`), which moves the noise off the per-image cost.
    """
    grey = rng.random(shape[:2], dtype=np.float32)
    grey -= 0.5
    grey *= np.float32(speckle * np.sqrt(12.0))
    grey += 1.0
    return np.repeat(grey[..., None], shape[2], axis=2)


def augment_image(
    image: np.ndarray,
    rng: np.random.Generator,
    p: AugmentParams,
    out: np.ndarray | None = None,
    field: np.ndarray | None = None,
) -> np.ndarray:
    """One random variant of an (S, S, 3) uint8 image: flip, rotation, zoom, brightness, speckle.

    The ranges are small on purpose: an ultrasound lesion's shape and margin carry its label, so
    no transform may turn a circumscribed oval into something else. Because this feeds a GPU
    (bench/), each step is one OpenCV pass on uint8 written into `out` (a slot of the batch, when
    given): the flip is folded into the rotation's matrix, contrast and brightness are one table,
    and the speckle is a window of a pre-drawn `field` (see `speckle_field`) when one is given.
    """
    if out is None:
        out = np.empty_like(image)
    # the draws happen in this order (geometry, then intensity, then speckle) for every image
    _flip_rotate_zoom(image, rng, p, out)
    _contrast_brightness(out, rng, p)
    if p.speckle:
        _speckle(out, rng, p.speckle, field)
    return out


def augment_batch(
    images: np.ndarray,
    rows: np.ndarray,
    rng: np.random.Generator,
    p: AugmentParams,
    out: np.ndarray,
    field: np.ndarray | None = None,
) -> np.ndarray:
    """Random variants of `images[rows]` written into `out[: len(rows)]`: the training feed's form.

    The same transforms and ranges as `augment_image`, but every random number of the batch is
    drawn in one call (an (n, 5) table, then the speckle windows), the affine matrices are built
    as arrays and the contrast tables as one (n, 256) table, so the per-image Python left is the
    three OpenCV passes that release the GIL. The result depends on (`rng`'s state, `rows`) only,
    never on which thread or process runs it. Without a `field`, one twice the image size is drawn.
    """
    n = len(rows)
    height, width, channels = images.shape[1:]
    batch = out[:n]
    # flip, angle, scale, gain, offset: one table of uniforms on [0, 1) mapped to their ranges
    u = rng.random((n, 5)) * 2 - 1
    flip, angle, scale = (u[:, 0] < 0) & p.flip, p.rotation_deg * u[:, 1], 1 + p.zoom * u[:, 2]
    gain, offset = 1 + p.contrast * u[:, 3], 255 * p.brightness * u[:, 4]
    if not p.speckle:
        field = None
    elif field is None:
        field = speckle_field(rng, (2 * height, 2 * width, channels), p.speckle)
    if field is not None:  # each image's window of the field
        tops = rng.integers(0, field.shape[0] - height + 1, n)
        lefts = rng.integers(0, field.shape[1] - width + 1, n)
    matrices = affine_matrices(angle, scale, flip, height, width)
    means = np.empty(n)
    for i, row in enumerate(rows):
        if p.rotation_deg or p.zoom:
            _warp(images[row], matrices[i], batch[i])
        elif flip[i]:
            cv2.flip(images[row], 1, dst=batch[i])
        else:
            np.copyto(batch[i], images[row])
        means[i] = np.mean(cv2.mean(batch[i])[:channels])
    # contrast around each image's mean, then brightness: x * gain + offset, exact as a table
    levels = np.arange(256, dtype=np.float64)
    tables = np.clip(levels * gain[:, None] + (offset + (1 - gain) * means)[:, None], 0, 255)
    tables = tables.astype(np.uint8)
    for i in range(n):
        cv2.LUT(batch[i], tables[i], dst=batch[i])
        if field is not None:
            window = field[tops[i] : tops[i] + height, lefts[i] : lefts[i] + width]
            cv2.multiply(batch[i], window, dst=batch[i], dtype=cv2.CV_8U)
    return batch


def affine_matrices(
    angle: np.ndarray, scale: np.ndarray, flip: np.ndarray, height: int, width: int
) -> np.ndarray:
    """(n, 2, 3) matrices: a left-right mirror (where `flip`), then a rotation by `angle` degrees
    and a zoom by `scale` about the centre; `cv2.getRotationMatrix2D`'s formula, as arrays."""
    theta = np.deg2rad(angle)
    alpha, beta = scale * np.cos(theta), scale * np.sin(theta)
    cx, cy = width / 2, height / 2
    matrices = np.empty((len(angle), 2, 3))
    matrices[:, 0] = np.stack([alpha, beta, (1 - alpha) * cx - beta * cy], axis=1)
    matrices[:, 1] = np.stack([-beta, alpha, beta * cx + (1 - alpha) * cy], axis=1)
    # rotate(mirror(x)), mirror: x -> (width - 1) - x: the first column flips sign and its old
    # value times (width - 1) moves into the translation
    mirrored = matrices[flip]
    mirrored[:, :, 2] += mirrored[:, :, 0] * (width - 1)
    mirrored[:, :, 0] *= -1
    matrices[flip] = mirrored
    return matrices


def _warp(image: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> None:
    """One bilinear affine warp of `image` into `out`, edges mirrored (no black corners)."""
    height, width = image.shape[:2]
    cv2.warpAffine(
        image,
        matrix,
        (width, height),
        dst=out,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def _flip_rotate_zoom(
    image: np.ndarray, rng: np.random.Generator, p: AugmentParams, out: np.ndarray
) -> None:
    """`image` mirrored, rotated and zoomed about its centre into `out`, in one warp."""
    height, width = image.shape[:2]
    # left-right only: depth (top-bottom) has meaning; drawn even when off, so that turning flips
    # off leaves every other draw of the stream where it was
    flip = rng.random() < 0.5 and p.flip
    angle = rng.uniform(-p.rotation_deg, p.rotation_deg) if p.rotation_deg else 0.0
    scale = 1.0 + rng.uniform(-p.zoom, p.zoom) if p.zoom else 1.0
    if angle or scale != 1.0:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        if flip:  # rotate(mirror(x)), mirror: x -> (width - 1) - x, exactly image[:, ::-1]
            matrix = matrix @ np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0, 0, 1]])
        _warp(image, matrix, out)
    elif flip:
        cv2.flip(image, 1, dst=out)
    else:
        np.copyto(out, image)


def _contrast_brightness(out: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> None:
    """Contrast around the mean, then brightness (x * gain + offset), in place, exact as a
    256-entry table."""
    gain = 1.0 + rng.uniform(-p.contrast, p.contrast) if p.contrast else 1.0
    offset = 255.0 * rng.uniform(-p.brightness, p.brightness) if p.brightness else 0.0
    if gain != 1.0:
        offset += (1.0 - gain) * float(np.mean(cv2.mean(out)[: out.shape[2]]))
    if gain != 1.0 or offset:
        table = np.clip(np.arange(256, dtype=np.float32) * gain + offset, 0, 255)
        cv2.LUT(out, table.astype(np.uint8), dst=out)


def _speckle(
    out: np.ndarray, rng: np.random.Generator, speckle: float, field: np.ndarray | None
) -> None:
    """Multiplicative speckle in place: a fresh field, or a random window of a pre-drawn one."""
    height, width = out.shape[:2]
    if field is None:
        window = speckle_field(rng, out.shape, speckle)
    else:
        top = int(rng.integers(0, field.shape[0] - height + 1))
        left = int(rng.integers(0, field.shape[1] - width + 1))
        window = field[top : top + height, left : left + width]
    cv2.multiply(out, window, dst=out, dtype=cv2.CV_8U)


def balance_counts(counts: dict[str, int], target: int | str) -> dict[str, int]:
    """How many augmented images each class needs to reach `target` ("max": the largest class)."""
    goal = max(counts.values()) if target == "max" else int(target)
    return {label: max(0, goal - n) for label, n in counts.items()}
