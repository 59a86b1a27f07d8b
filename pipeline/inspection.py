"""One raw file inspected: read, validated, converted and fitted (its prepared PNG written),
hashed for duplicates, its keypoints found, its patient and study pseudonymised and its lesion
area measured from its masks, in one decode; a list of records on threads; and the duplicate
pairs and groups among the inspected items.

Development data (pipeline.prepare) and each external site (pipeline.external_sets) go through
this one inspection, so a file means the same in both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from pipeline import dicom, duplicates, images, layouts, matching, splits
from pipeline.config import PrepareParams

WORKERS = min(4, os.cpu_count() or 1)  # Pillow decodes and resizes with the GIL released
MASK_LEVEL = 128  # a mask pixel this bright or brighter is lesion (BUSI draws 0 / 255)


@dataclass(frozen=True)
class Item:
    """A record whose file passed validation, with what was learned from it."""

    record: layouts.Record
    fitted: Path  # the prepared PNG, in the scratch folder until its final name is known
    sha256: str
    phash: int
    keys: matching.Keypoints
    width: int
    height: int
    mode: str
    ids: tuple[str, ...] = ()  # patient/study pseudonyms (salted hashes), never raw ids
    mask_area: float | None = None  # lesion fraction of the image; None: no lesion marked
    mask_note: str | None = None  # why masks were there but no area was measured


T = TypeVar("T")
R = TypeVar("R")


def parallel(func: Callable[[T], R], things: Sequence[T]) -> list[R]:
    """`[func(t) for t in things]` on a few threads, results in input order."""
    if WORKERS < 2 or len(things) < 8:
        return [func(t) for t in things]
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(func, things))


def inspect_file(
    record: layouts.Record, fitted: Path, p: PrepareParams, salt: str
) -> Item | images.RejectedImage:
    """Validate one file and write its prepared PNG to `fitted`; the rejection if it is unusable.
    A DICOM file (by content) is cut to its ultrasound region and brings its patient and study."""
    ids: list[tuple[str, str | None]] = list(record.ids)
    try:
        data = images.read_file(record.path)
        if dicom.is_dicom(data):
            scan = dicom.decode(
                data,
                max_pixels=p.max_pixels,
                frames=p.dicom_frames,
                crop=p.dicom_region_crop,
            )
            decoded = scan.decoded
            ids += [("patient", scan.identity.patient), ("study", scan.identity.study)]
        else:
            decoded = images.decode(data, max_pixels=p.max_pixels)
    except images.RejectedImage as rejected:
        return rejected
    pseudonyms = tuple(sorted({splits.pseudonym(_kind(c), v, salt) for c, v in ids if v}))
    images.save_png(images.fit(decoded.image, p.image_size, p.keep_aspect), fitted)
    area, note = _mask_area(record, decoded.width, decoded.height, p.max_pixels)
    return Item(
        record,
        fitted,
        duplicates.sha256(data),
        duplicates.phash(decoded.image),
        matching.keypoints(decoded.image),
        decoded.width,
        decoded.height,
        decoded.mode,
        pseudonyms,
        area,
        note,
    )


def inspect_all(
    records: Sequence[layouts.Record], scratch: Path, p: PrepareParams, salt: str
) -> tuple[list[Item], list[tuple[str, str]]]:
    """`inspect_file` on every record, on threads, prepared PNGs numbered under `scratch`: the
    valid items in record order and (source, reason) for each rejected file. Development data and
    external sites go through this one inspection."""
    jobs = [(r, scratch / f"{n:06d}.png") for n, r in enumerate(records)]
    checked = parallel(lambda job: inspect_file(*job, p, salt), jobs)
    items = [c for c in checked if isinstance(c, Item)]
    rejects = [
        (r.source, str(c))
        for r, c in zip(records, checked, strict=True)
        if isinstance(c, images.RejectedImage)
    ]
    return items, rejects


def _mask_area(
    record: layouts.Record, width: int, height: int, max_pixels: int
) -> tuple[float | None, str | None]:
    """(lesion area as a fraction of the image, None) from the union of the image's masks, for
    the lesion-size subgroups of the model card. BUSI draws one mask per lesion, so an image with
    two lesions has two masks and its lesion burden is their union (overlaps counted once).

    The area is None when no mask marks anything (BUSI's normal images have all-black masks) and
    when it cannot be measured, with the reason as the second value: an unreadable mask, or one
    whose size differs from its image's (a DICOM cut to its ultrasound region, a mask drawn on
    another copy): how it would line up is unknown, so no area is guessed.
    """
    if not record.masks:
        return None, None
    union = np.zeros((height, width), dtype=bool)
    for source, path in zip(record.masks, record.mask_paths(), strict=True):
        try:
            mask = images.decode(
                images.read_file(path), max_pixels=max_pixels, min_side=1, grey_ok=True
            )
        except images.RejectedImage as rejected:
            return None, f"unreadable_mask: {source}: {rejected}"
        if (mask.width, mask.height) != (width, height):
            return None, (
                f"mask_size_mismatch: {source} is {mask.width}x{mask.height}, "
                f"its image {width}x{height}"
            )
        union |= np.asarray(mask.image.convert("L")) >= MASK_LEVEL
    area = float(union.mean())
    return (area if area > 0 else None), None


def _kind(column: str) -> str:
    """`patient` or `study` for an id column (a CSV's `patient_id` and a DICOM PatientID are one
    id space: the same patient in both is one group)."""
    return "study" if "study" in column.lower() else "patient"


def find_duplicates(items: list[Item], p: PrepareParams) -> tuple[list[duplicates.Pair], list[str]]:
    """Every duplicate pair among the valid items, and the duplicate group of each item."""
    pairs = duplicates.find_pairs(
        [i.sha256 for i in items],
        [i.phash for i in items],
        [i.keys for i in items],
        phash_threshold=p.phash_threshold,
        min_inliers=p.keypoint_inliers,
        min_correlation=p.keypoint_correlation,
        per_image=p.keypoint_candidates,
    )
    return pairs, duplicates.group([i.sha256 for i in items], [(q.a, q.b) for q in pairs])
