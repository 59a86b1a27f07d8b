"""Copies of an image under the edits that make duplicates in ultrasound data sets, and the score
of a duplicate detector on them: the detection benchmark behind `prepare`'s duplicate grouping.

BUSI's duplicates (Pawłowska et al., Data in Brief 48 (2023) 109247) are crops and shifts of one
screen, padded or letterboxed, rescaled, re-encoded, brightened, with calipers and text burned in.
Each edit here makes one of those from an original, from a seeded generator, so a benchmark on
the same originals and seed is repeatable. Used by tests/unit/test_duplicates.py (small) and
bench/duplicates.py (full size).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from PIL import Image, ImageDraw

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def crop(fraction: float) -> Edit:
    """Keep a window `1 - fraction` of each side, anywhere in the image (no resizing)."""

    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = round(image.width * (1 - fraction)), round(image.height * (1 - fraction))
        left = int(rng.integers(0, image.width - width + 1))
        top = int(rng.integers(0, image.height - height + 1))
        return image.crop((left, top, left + width, top + height))

    return edit


def shift(fraction: float) -> Edit:
    """Move the content sideways by `fraction` of the width (left or right), black behind it."""

    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        dx = round(image.width * fraction) * (1 if rng.random() < 0.5 else -1)
        out = Image.new("RGB", image.size)
        out.paste(image, (dx, 0))
        return out

    return edit


def pad(fraction: float) -> Edit:
    """Black borders of `fraction` of the width and height on every side."""

    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        dx, dy = round(image.width * fraction), round(image.height * fraction)
        out = Image.new("RGB", (image.width + 2 * dx, image.height + 2 * dy))
        out.paste(image, (dx, dy))
        return out

    return edit


def letterbox(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pad to a 4:3 landscape frame (an export from a wider screen), content off-centre."""
    width = max(image.width, round(image.height * 4 / 3)) + image.width // 10
    out = Image.new("RGB", (width, image.height))
    out.paste(image, (int(rng.integers(0, width - image.width + 1)), 0))
    return out


def rescale(factor: float) -> Edit:
    """The whole image resized by `factor` (a screenshot at another zoom)."""

    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        size = (round(image.width * factor), round(image.height * factor))
        return image.resize(size, Image.Resampling.BILINEAR)

    return edit


def brightness_contrast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gain and offset as a different monitor or export setting would give."""
    gain, offset = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    pixels = np.asarray(image, np.float32) * gain + offset
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A low-quality JPEG re-encoding (quality 40 to 69), as a copy saved by another viewer."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(40, 70)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def annotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Calipers (crosses and a dotted line) and text burned in, as on a measured frame."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    ends = [(int(rng.integers(w // 5, 4 * w // 5)), int(rng.integers(h // 5, 4 * h // 5)))]
    ends.append((ends[0][0] + int(rng.integers(-w // 4, w // 4)), ends[0][1]))
    for x, y in ends:
        draw.line((x - 6, y, x + 6, y), fill=(255, 255, 255), width=2)
        draw.line((x, y - 6, x, y + 6), fill=(255, 255, 255), width=2)
    for x in range(min(ends)[0], max(ends)[0], 6):
        draw.point((x, ends[0][1]), fill=(255, 255, 0))
    draw.text((8, 8), "RT BREAST 10 O'CLOCK 3CM FN", fill=(255, 255, 255))
    draw.text((8, h - 16), f"D1 {rng.uniform(0.4, 3):.2f} cm", fill=(255, 255, 0))
    return out


EDITS: dict[str, Edit] = {
    "crop 20%": crop(0.2),
    "crop 30%": crop(0.3),
    "shift 10%": shift(0.1),
    "pad 10%": pad(0.1),
    "letterbox": letterbox,
    "rescale 0.6": rescale(0.6),
    "brightness+contrast": brightness_contrast,
    "jpeg q40-70": jpeg,
    "calipers+text": annotate,
    "crop 15%+text+jpeg": lambda im, rng: jpeg(annotate(crop(0.15)(im, rng), rng), rng),
}


@dataclass(frozen=True)
class Case:
    """Originals followed by their copies: `origin[i]` is the original item i was made from."""

    images: list[Image.Image]
    origin: list[int]
    edit: list[str]  # "" for an original


def make_case(originals: Sequence[Image.Image], edits: Sequence[str], seed: int) -> Case:
    """Every original, then one copy of every original under each of `edits`."""
    rng = np.random.default_rng(seed)
    images, origin, names = list(originals), list(range(len(originals))), [""] * len(originals)
    for name in edits:
        for k, image in enumerate(originals):
            images.append(EDITS[name](image.convert("RGB"), rng))
            origin.append(k)
            names.append(name)
    return Case(images, origin, names)


@dataclass(frozen=True)
class Score:
    """The duplicate detector's recall per edit and its false merges, on one `Case`."""

    recall: dict[str, float]  # per edit: copies grouped with their original
    false_pairs: int  # pairs of different originals that ended in one group
    distinct_pairs: int  # pairs of different originals

    @property
    def false_pair_rate(self) -> float:
        """Share of pairs of different originals wrongly joined (0 when there are none)."""
        return self.false_pairs / self.distinct_pairs if self.distinct_pairs else 0.0


def score(case: Case, groups: Sequence[str]) -> Score:
    """How well `groups` (one id per item of `case`) matches the truth."""
    n = max(case.origin, default=-1) + 1
    hits: dict[str, list[bool]] = {}
    for i, name in enumerate(case.edit):
        if name:
            hits.setdefault(name, []).append(groups[i] == groups[case.origin[i]])
    merged: set[tuple[int, int]] = set()
    members: dict[str, set[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, set()).add(case.origin[i])
    for origins in members.values():
        merged.update(combinations(sorted(origins), 2))
    recall = {name: float(np.mean(h)) for name, h in hits.items()}
    return Score(recall, len(merged), n * (n - 1) // 2)
