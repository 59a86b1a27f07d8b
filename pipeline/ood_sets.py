"""Out-of-distribution test sets: images a breast-ultrasound model must refuse, drawn from a seed.

Why synthetic: no network here, and a real photo set would carry its own licence and privacy
questions. Each family stands for inputs a deployed model will be shown (issue 15):

    textures          natural-image-like 1/f noise fields, grey and colour, with edges
    colour            colour scenes (gradients, shapes) and colour-Doppler-like overlays on a scan
    text_ui           rendered text and UI screenshots (light and dark), report pages
    other_modalities  CT-, radiograph- and MRI-like slices: grey medical images, not ultrasound

The evaluate stage scores them with the OOD score fitted on train and reports the AUROC of each
family against the in-distribution test images; the tests use them to make every surface abstain.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pipeline.synthetic import case_rng, render_case

FAMILIES = ("textures", "colour", "text_ui", "other_modalities")


def ood_set(family: str, n: int, size: int, seed: int) -> np.ndarray:
    """`n` uint8 RGB images (n, size, size, 3) of one family, the same for the same seed."""
    if family not in FAMILIES:
        raise ValueError(f"unknown OOD family {family!r}; one of {FAMILIES}")
    draw: Callable[[np.random.Generator, int, int], np.ndarray] = _DRAW[family]
    return np.stack(
        [draw(np.random.default_rng([seed, FAMILIES.index(family), i]), size, i) for i in range(n)]
    )


def ood_sets(n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """Every family, `n` images each."""
    return {family: ood_set(family, n, size, seed) for family in FAMILIES}


def _pink_noise(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """1/f noise (the power spectrum of natural images), scaled to 0-255, (size, size, channels)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size) ** rng.uniform(0.8, 1.4)
    out = []
    for _ in range(channels):
        phase = np.exp(2j * np.pi * rng.random((size, size)))
        field = np.real(np.fft.ifft2(amplitude * phase))
        out.append((field - field.min()) / (np.ptp(field) + 1e-9) * 255)
    return np.stack(out, axis=-1)


def _texture(rng: np.random.Generator, size: int, i: int) -> np.ndarray:
    grey = i % 2 == 0
    image = _pink_noise(rng, size, 1 if grey else 3)
    image = np.repeat(image, 3, axis=2) if grey else image
    for _ in range(rng.integers(2, 6)):  # edges: branches, stones, window frames
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(image, tuple(map(int, p1)), tuple(map(int, p2)), colour, int(rng.integers(1, 4)))
    return np.clip(image, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, size: int, i: int) -> np.ndarray:
    if i % 3 == 2:
        return _doppler(rng, size, i)
    yy, xx = np.mgrid[0:size, 0:size] / size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = (1 - yy[..., None]) * top + yy[..., None] * bottom + 20 * xx[..., None]
    for _ in range(rng.integers(3, 8)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(size // 10, size // 3)), colour, -1)
        else:
            corner = tuple(int(c) for c in rng.integers(0, size, 2))
            cv2.rectangle(image, centre, corner, colour, -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _doppler(rng: np.random.Generator, size: int, i: int) -> np.ndarray:
    """A synthetic scan with red and blue flow patches, as colour Doppler shows vessels."""
    label = ("benign", "malignant", "normal")[i % 3]
    scan = render_case(label, case_rng(int(rng.integers(2**31)), label, i), size)[0]
    image = scan.astype(np.float32)
    for _ in range(rng.integers(2, 5)):
        mask = np.zeros((size, size), np.uint8)
        centre = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
        axes = (int(rng.integers(2, size // 6)), int(rng.integers(2, size // 10)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        colour = np.array([230, 30, 30] if rng.random() < 0.5 else [30, 60, 230], np.float32)
        image[mask > 0] = colour
    return image.astype(np.uint8)


# A 5x7 bitmap font shipped here (rows top to bottom, 5 bits each, high bit on the left): the
# text is drawn with numpy, so the pixels are the same on every machine, whatever fonts or OpenCV
# build it has (issue 26: a fresh clone's text_ui AUROC moved with the text renderer).
GLYPHS: dict[str, tuple[int, ...]] = {
    " ": (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "a": (0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F),
    "b": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E),
    "c": (0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E),
    "d": (0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F),
    "e": (0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E),
    "f": (0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08),
    "g": (0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "h": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11),
    "i": (0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E),
    "j": (0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C),
    "k": (0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12),
    "l": (0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "m": (0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11),
    "n": (0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11),
    "o": (0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E),
    "p": (0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10),
    "q": (0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01),
    "r": (0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10),
    "s": (0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E),
    "t": (0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06),
    "u": (0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D),
    "v": (0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "w": (0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A),
    "x": (0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11),
    "y": (0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "z": (0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F),
}
_GLYPH_BITS = {
    c: (np.array(rows, dtype=np.uint8)[:, None] >> np.arange(4, -1, -1)) & 1
    for c, rows in GLYPHS.items()
}


def draw_text(image: np.ndarray, text: str, x: int, y: int, scale: int, ink: int) -> None:
    """Write `text` (GLYPHS' characters) into `image` in place, its baseline at row `y`, each
    font pixel a `scale` x `scale` block; what falls outside the image is cut off."""
    height, width = image.shape[:2]
    for n, char in enumerate(text):
        block = np.kron(_GLYPH_BITS[char], np.ones((scale, scale), np.uint8)).astype(bool)
        top, left = y - block.shape[0], x + n * 6 * scale  # 5 columns and a space per glyph
        rows = slice(max(top, 0), min(top + block.shape[0], height))
        cols = slice(max(left, 0), min(left + block.shape[1], width))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        mask = block[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
        image[rows, cols][mask] = ink


def _text_ui(rng: np.random.Generator, size: int, i: int) -> np.ndarray:
    dark = i % 2 == 1
    background, ink = (30, 220) if dark else (245, 20)
    image = np.full((size, size, 3), background, np.uint8)
    bar = tuple(int(c) for c in rng.integers(0, 256, 3))
    cv2.rectangle(image, (0, 0), (size, max(3, size // 10)), bar, -1)  # a title bar
    scale = size / 256
    y = size // 6
    while y < size - 4:
        words = "".join(rng.choice(list(GLYPHS), 14))
        x = int(rng.integers(2, max(3, size // 8)))
        draw_text(image, words, x, y, max(1, round(size / 96)), ink)
        y += max(6, int(rng.integers(18, 34) * scale))
    for _ in range(rng.integers(1, 4)):  # buttons
        x0, y0 = (int(c) for c in rng.integers(0, size - size // 5, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x0, y0), (x0 + size // 5, y0 + size // 12), colour, -1)
    return image


def _other_modality(rng: np.random.Generator, size: int, i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    kind = i % 3
    if kind == 0:  # CT: a round body, a bright bone ring, dark air around it
        r = np.hypot(xx / rng.uniform(0.35, 0.45), yy / rng.uniform(0.3, 0.4))
        image = np.where(r < 1, 110, 5) + np.where(np.abs(r - 0.85) < 0.05, 140, 0)
        image = image + rng.normal(0, 6, (size, size))
    elif kind == 1:  # radiograph: two dark lung fields, bright ribs, white mediastinum
        lungs = (np.hypot((np.abs(xx) - 0.2) / 0.14, yy / 0.35) < 1).astype(float)
        ribs = (np.sin(yy * rng.uniform(30, 45)) > 0.7) * (np.abs(xx) < 0.4)
        image = 200 - 150 * lungs + 50 * ribs * lungs + rng.normal(0, 4, (size, size))
    else:  # MRI: an ellipse of grey matter, brighter white matter, dark ventricles
        r = np.hypot(xx / 0.4, yy / 0.45)
        image = np.where(r < 1, 90, 0) + np.where(r < 0.7, 60, 0)
        image = image - np.where(np.hypot(xx / 0.08, yy / 0.15) < 1, 120, 0)
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), size / 100 + 0.5)
    grey = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


_DRAW = {
    "textures": _texture,
    "colour": _colour,
    "text_ui": _text_ui,
    "other_modalities": _other_modality,
}
