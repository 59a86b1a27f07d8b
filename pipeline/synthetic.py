"""Synthetic, ultrasound-like breast images for the offline demo (not patient data).

Each image is a B-mode-like scan: horizontal tissue layers (skin, subcutaneous fat,
fibroglandular tissue, chest wall) under multiplicative speckle, darker with depth. Lesions follow
the usual sonographic (BI-RADS) cues, so a classifier has something real to learn:

- benign: oval, circumscribed (smooth margin), wider than tall ("parallel" to the skin), fairly
  homogeneous and hypoechoic, often with mild posterior acoustic enhancement;
- malignant: irregular or spiculated margin, taller than wide ("not parallel"), hypoechoic and
  heterogeneous, posterior acoustic shadowing (a dark band below the lesion);
- normal: tissue layers only.

Position, size, orientation, gain, layer thickness and noise are randomised, and overall brightness
varies more within a class than between classes, so no single global statistic gives the answer.
The cues are kept large (lesions span about 15-40% of the width) so they survive downscaling to 64
pixels. Everything is a pure function of a seed: same arguments, byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

CLASSES = ("benign", "malignant", "normal")
# BUSI (Al-Dhabyani et al., 2020): 437 benign, 210 malignant, 133 normal of 780 images.
BUSI_COUNTS = {"benign": 437, "malignant": 210, "normal": 133}
SOURCE_TEXT = "synthetic demo data, not patient images"


@dataclass(frozen=True)
class ScannerLook:
    """How a scanner and its settings change every image, as factors on the demo's own ranges
    (all 1: the development set's look). External validation needs a second site whose images
    differ the way another hospital's do."""

    gain: float = 1.0  # overall brightness
    depth: float = 1.0  # depth attenuation (a deeper field of view, a lower frequency probe)
    speckle: float = 1.0  # speckle contrast (below 1: smoother, as with spatial compounding)


# The demo's second site: brighter, stronger attenuation with depth, smoother speckle, and the
# case mix of a referral clinic (more malignant, fewer normal scans than BUSI).
SITE_B_LOOK = ScannerLook(gain=1.35, depth=1.8, speckle=0.6)
SITE_B_SHARES = {"benign": 0.4, "malignant": 0.45, "normal": 0.15}
SITE_STREAM = 1  # the second site's images come from their own random streams (no copies)


def class_counts(n_images: int, shares: dict[str, float] | None = None) -> dict[str, int]:
    """Split n_images across the classes in BUSI's proportions, or in `shares`
    (largest-remainder rounding)."""
    if n_images < len(CLASSES):
        raise ValueError(f"n_images: need at least {len(CLASSES)}, got {n_images}")
    weights = shares or BUSI_COUNTS
    total = sum(weights.values())
    exact = {c: n_images * weights[c] / total for c in CLASSES}
    counts = {c: math.floor(v) for c, v in exact.items()}
    by_remainder = sorted(CLASSES, key=lambda c: (-(exact[c] - counts[c]), CLASSES.index(c)))
    for c in by_remainder[: n_images - sum(counts.values())]:
        counts[c] += 1
    return counts


def case_rng(seed: int, label: str, n: int, site: int = 0) -> np.random.Generator:
    """The RNG of one image, derived from (seed, class, n): independent of generation order.
    Another `site` draws from other streams."""
    key = [seed, CLASSES.index(label), n] + ([site] if site else [])
    return np.random.default_rng(key)


def render_case(
    label: str, rng: np.random.Generator, size: int, look: ScannerLook | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one case: (uint8 image size x size x 3 with equal channels, uint8 0/255 mask).

    The mask marks the lesion and is all zero for `normal`. `look`: the scanner's (default: the
    development set's; its factors of 1 leave every byte as it was).
    """
    look = look or ScannerLook()
    if label not in CLASSES:
        raise ValueError(f"label: expected one of {list(CLASSES)}, got {label!r}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # depth and lateral, in [0, 1)
    echo = _tissue(rng, size, xx, yy)
    echo = _benign_findings(rng, echo, xx, yy)

    mask = np.zeros((size, size), np.uint8)
    if label != "normal":
        mask = _lesion_mask(label, rng, size)
        echo = _insert_lesion(label, rng, echo, mask, yy)

    # Speckle: Rayleigh-distributed amplitude (magnitude of a complex Gaussian), smoothed more
    # laterally than axially, as the beam's point-spread function is wider than it is deep.
    re, im = rng.standard_normal((2, size, size), dtype=np.float32)
    speckle = np.sqrt(re * re + im * im) / math.sqrt(math.pi / 2)  # mean 1
    sigma = rng.uniform(0.5, 1.0) * size / 128
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=2 * sigma, sigmaY=sigma)
    speckle = 1 + (speckle / speckle.mean() - 1) * rng.uniform(1.5, 2.5) * look.speckle
    image = echo * np.clip(speckle, 0.05, None)

    # Depth attenuation (time-gain compensation never quite evens it out), gamma, then an overall
    # gain drawn independently of the class, so mean brightness says nothing about the label.
    image *= np.exp(-rng.uniform(0.4, 1.4) * look.depth * yy)
    image = np.clip(image, 0, None) ** rng.uniform(0.8, 1.2)
    image *= rng.uniform(0.32, 0.6) * look.gain / image.mean()
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)  # electronic noise
    gray = np.clip(image * 170, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2), mask


def generate(out_dir: Path, n_images: int, size: int, seed: int) -> dict[str, int]:
    """Write a synthetic data set in BUSI layout; return the number of images per class.

    Layout: `<out_dir>/<class>/<class> (n).png` with `<class> (n)_mask.png` beside it (n from 1,
    per class), plus `<out_dir>/README.md`. Every PNG carries a `Source` text chunk marking it
    synthetic.
    """
    out_dir = Path(out_dir)
    counts = class_counts(n_images)
    info = _png_info(f"pipeline.synthetic seed={seed} size={size}")
    for folder, label, n in _numbered_cases(out_dir, counts):
        image, mask = render_case(label, case_rng(seed, label, n), size)
        Image.fromarray(image, "RGB").save(folder / f"{label} ({n}).png", pnginfo=info)
        Image.fromarray(mask, "L").save(folder / f"{label} ({n})_mask.png", pnginfo=info)
    (out_dir / "README.md").write_text(_readme(counts, size, seed))
    return counts


def generate_site(out_dir: Path, n_images: int, size: int, seed: int) -> dict[str, int]:
    """Write the demo's second site (`SITE_B_LOOK`, `SITE_B_SHARES`) as class folders without
    masks, plus a README; return the number of images per class. No image repeats one of
    `generate`'s: each comes from its own random stream."""
    out_dir = Path(out_dir)
    counts = class_counts(n_images, SITE_B_SHARES)
    info = _png_info(f"pipeline.synthetic site-b seed={seed} size={size}")
    for folder, label, n in _numbered_cases(out_dir, counts):
        rng = case_rng(seed, label, n, SITE_STREAM)
        image, _ = render_case(label, rng, size, SITE_B_LOOK)
        Image.fromarray(image, "RGB").save(folder / f"site-b {label} ({n}).png", pnginfo=info)
    (out_dir / "README.md").write_text(_site_readme(counts, size, seed))
    return counts


def _png_info(generator: str) -> PngInfo:
    """Text chunks that say, inside every file, that the image is synthetic and how it was made."""
    info = PngInfo()
    info.add_text("Source", SOURCE_TEXT)
    info.add_text("Generator", generator)
    return info


def _numbered_cases(out_dir: Path, counts: dict[str, int]) -> Iterator[tuple[Path, str, int]]:
    """(class folder, class, case number from 1) for every case, BUSI's naming; folders made."""
    for label, count in counts.items():
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, count + 1):
            yield folder, label, n


def _site_readme(counts: dict[str, int], size: int, seed: int) -> str:
    lines = "\n".join(f"| {c} | {n} |" for c, n in counts.items())
    look = SITE_B_LOOK
    return f"""# SYNTHETIC SECOND SITE -- NOT PATIENT IMAGES

**Every image in this folder is synthetic**, drawn by `pipeline/synthetic.py` (`generate_site`)
for the demo's external validation (`data.external`, the `external` stage). It imitates a second
hospital: another scanner look (gain x{look.gain}, depth attenuation x{look.depth}, speckle
contrast x{look.speckle} of the development set's) and another case mix, {size}x{size} pixels,
seed {seed}. No image is a copy of one in the development set.

| class | images |
|---|---|
{lines}
"""


def _tissue(rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Mean echogenicity of the layered background (before speckle), values around 0.3-1."""

    def boundary(depth: float, wobble: float) -> np.ndarray:
        # A gently undulating interface at `depth` (fraction of the image), one value per column.
        x = xx[0]
        phase, freq = rng.uniform(0, 2 * math.pi, 2), rng.uniform([1, 3], [2.5, 6])
        wave = np.sin(2 * math.pi * freq[0] * x + phase[0]) + 0.4 * np.sin(
            2 * math.pi * freq[1] * x + phase[1]
        )
        return depth + wobble * wave

    skin = boundary(rng.uniform(0.04, 0.08), 0.005)
    fat = boundary(rng.uniform(0.18, 0.32), 0.03)
    gland = boundary(rng.uniform(0.75, 0.88), 0.03)
    levels = rng.uniform([0.9, 0.35, 0.6, 0.45], [1.2, 0.55, 0.85, 0.6])  # skin, fat, gland, wall
    echo = np.select(
        [yy < skin, yy < fat, yy < gland], levels[:3].tolist(), default=levels[3]
    ).astype(np.float32)
    # Bright interfaces (fascia, Cooper's ligaments) where the layers meet.
    for b in (skin, fat, gland):
        echo += 0.35 * np.exp(-(((yy - b) * size / 1.2) ** 2))
    # Low-frequency patchiness inside the gland and striations in the chest-wall muscle.
    patches = cv2.GaussianBlur(
        rng.standard_normal((size, size), dtype=np.float32), (0, 0), size / 16
    )
    echo *= 1 + 0.15 * patches / (patches.std() + 1e-6)
    echo += np.where(yy >= gland, 0.1 * np.sin(2 * math.pi * yy * rng.uniform(14, 20)), 0)
    return echo.astype(np.float32)


def _benign_findings(
    rng: np.random.Generator, echo: np.ndarray, xx: np.ndarray, yy: np.ndarray
) -> np.ndarray:
    """Distractors found in any breast: fat lobules (small, mildly dark ovals, not lesions) and
    thin refraction shadows under Cooper's ligaments. They appear in every class alike, so "a dark
    blob" or "a dark band" alone does not give the label away; size, shape and margin must."""
    for _ in range(rng.integers(0, 3)):
        cx, cy = rng.uniform(0.15, 0.85), rng.uniform(0.3, 0.7)
        rx = rng.uniform(0.04, 0.08)
        ry = rx * rng.uniform(0.4, 0.7)
        inside = np.exp(-((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) ** 2))
        echo = echo * (1 - rng.uniform(0.25, 0.45) * inside)
    for _ in range(rng.integers(0, 3)):
        cx, top = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.6)
        half_width = rng.uniform(0.01, 0.025)
        band = np.exp(-(((xx - cx) / half_width) ** 2)) * (yy > top)
        echo = echo * (1 - rng.uniform(0.15, 0.35) * band)
    return echo.astype(np.float32)


def _lesion_mask(label: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A filled lesion outline from a radius function r(theta): smooth oval or irregular."""
    theta = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    if label == "benign":
        width = rng.uniform(0.22, 0.40)  # fraction of the image width
        height = width * rng.uniform(0.45, 0.75)  # wider than tall
        tilt = rng.normal(0, 0.15)
        bumps = np.zeros_like(theta)
        for k in (2, 3):  # gentle lobulation keeps the margin smooth
            bumps += rng.uniform(0, 0.04) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    else:
        height = rng.uniform(0.20, 0.36)
        width = height * rng.uniform(0.6, 1.05)  # mostly taller than wide
        tilt = rng.normal(0, 0.2)
        bumps = np.zeros_like(theta)
        for k in range(3, 9):  # angular, irregular margin
            bumps += rng.uniform(0.02, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        for _ in range(rng.integers(5, 12)):  # spicules: narrow radial spikes
            centre, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.25, 0.6)
            gap = np.angle(np.exp(1j * (theta - centre)))
            bumps += length * np.exp(-((gap / rng.uniform(0.03, 0.07)) ** 2))
    cx = rng.uniform(0.3, 0.7) * size
    cy = rng.uniform(0.35, 0.5) * size
    r = 1 + bumps
    x = r * np.cos(theta) * width / 2
    y = r * np.sin(theta) * height / 2
    xs = cx + (x * math.cos(tilt) - y * math.sin(tilt)) * size
    ys = cy + (x * math.sin(tilt) + y * math.cos(tilt)) * size
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(np.stack([xs, ys], 1)).astype(np.int32)], 255)
    return mask


def _insert_lesion(
    label: str, rng: np.random.Generator, echo: np.ndarray, mask: np.ndarray, yy: np.ndarray
) -> np.ndarray:
    """Darken the lesion and add its posterior feature (enhancement or shadow) below it."""
    size = mask.shape[0]
    inside = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), size / 128)
    lesion = np.full_like(echo, rng.uniform(0.12, 0.3))
    if label == "malignant":  # heterogeneous internal echoes
        blobs = cv2.GaussianBlur(
            rng.standard_normal(echo.shape, dtype=np.float32), (0, 0), size / 40
        )
        lesion *= 1 + 0.5 * np.clip(blobs / (blobs.std() + 1e-6), -1.8, 1.8)
    echo = echo * (1 - inside) + lesion * inside

    # Posterior feature: every column the lesion covers, from the lesion's bottom edge down.
    rows = np.arange(size)[:, None]
    covered = mask.any(axis=0)
    bottom = np.where(covered, size - 1 - np.argmax(mask[::-1] > 0, axis=0), size)
    below = ((rows > bottom) & covered).astype(np.float32)
    below = cv2.GaussianBlur(below, (0, 0), size / 64)
    if label == "malignant":  # most shadow clearly; some hardly at all
        factor = 1 - (rng.uniform(0.35, 0.7) if rng.random() < 0.85 else 0.15) * below
    elif rng.random() < 0.7:
        factor = 1 + rng.uniform(0.15, 0.35) * below
    else:
        factor = np.ones_like(below)
    return echo * factor


def _readme(counts: dict[str, int], size: int, seed: int) -> str:
    lines = "\n".join(f"| {c} | {n} |" for c, n in counts.items())
    return f"""# SYNTHETIC DEMO DATA -- NOT PATIENT IMAGES

**Every image in this folder is synthetic.** It was drawn by a program
(`pipeline/synthetic.py`, `python -m pipeline.demo_data`), not acquired from any person or
scanner. It contains no patient data and must not be used to judge clinical performance.

The images imitate breast ultrasound only so that the pipeline runs end to end without a data set:
speckle, depth attenuation and tissue layers, with lesions drawn from textbook sonographic cues
(benign: oval, circumscribed, wider than tall; malignant: irregular or spiculated, taller than
wide, posterior shadowing; normal: no lesion). Every PNG carries the text chunk
`Source: {SOURCE_TEXT}`.

Made with seed {seed}, {size}x{size} pixels, in BUSI layout
(`<class>/<class> (n).png` beside `<class> (n)_mask.png`), in BUSI's class proportions:

| class | images |
|---|---|
{lines}

The same seed, size and count reproduce byte-identical files.
"""
