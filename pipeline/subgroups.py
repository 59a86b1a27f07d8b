"""Subgroups of the evaluation images, from what the manifest records about each one.

A headline number can hide a subgroup where the model fails (small lesions, a scanner's image
size). Each definition here maps manifest rows to a subgroup label, or None where it does not
apply (a normal scan has no lesion size). Bands are cut on the whole manifest, so every split and
model is cut at the same edges. Definitions whose columns the manifest lacks are simply absent;
`missing` says why, for the model card.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LESION_CLASSES = ("benign", "malignant")


def define(manifest: pd.DataFrame, rows: pd.DataFrame) -> dict[str, tuple[np.ndarray, list[str]]]:
    """`{definition: (label per row of `rows` or None, labels in display order)}`.

    `manifest` is the whole prepared manifest (for band edges); `rows` the images evaluated.
    """
    found: dict[str, tuple[np.ndarray, list[str]]] = {}
    if {"width", "height"} <= set(manifest.columns):
        side = _longest_side(manifest)
        found["source image size (longest side)"] = _bands(side, _longest_side(rows), "px")
    lesion = rows["label"].isin(LESION_CLASSES).to_numpy()
    if "masks" in manifest.columns and (manifest["masks"] != "").any():
        count = rows["masks"].map(lambda m: len([p for p in m.split(";") if p])).to_numpy()
        labels = np.where(count >= 2, "multiple lesions", "single lesion").astype(object)
        labels[~lesion | (count == 0)] = None
        found["lesions per image (mask files)"] = (labels, ["single lesion", "multiple lesions"])
    if _has_areas(manifest):
        in_manifest = manifest["label"].isin(LESION_CLASSES) & (manifest["mask_area"] != "")
        area = pd.to_numeric(manifest.loc[in_manifest, "mask_area"]).to_numpy()
        values = pd.to_numeric(rows["mask_area"].replace("", np.nan)).to_numpy()
        labels, order = _bands(area, values, "% of image", scale=100)
        labels[~lesion] = None
        found["lesion size (mask area)"] = (labels, order)
    return found


def missing(manifest: pd.DataFrame) -> list[str]:
    """Subgroup analyses the issue asks for that this manifest cannot support, with the reason."""
    gaps = []
    if not {"width", "height"} <= set(manifest.columns):
        gaps.append("source image size: the manifest records no width/height")
    if "masks" not in manifest.columns or (manifest["masks"] == "").all():
        gaps.append("single vs multiple lesions: the data set has no masks")
    if "mask_area" not in manifest.columns:
        gaps.append("lesion size: prepare records no mask areas")
    elif not _has_areas(manifest):
        gaps.append("lesion size: no benign or malignant image has a mask marking its lesion")
    return gaps


def _has_areas(manifest: pd.DataFrame) -> bool:
    """Whether any lesion image has a measured area (prepare writes the column always, empty
    for CSV or DICOM data without masks): without one, a lesion-size table would be all empty."""
    if "mask_area" not in manifest.columns:
        return False
    lesion = manifest["label"].isin(LESION_CLASSES)
    return bool((manifest.loc[lesion, "mask_area"] != "").any())


def _longest_side(frame: pd.DataFrame) -> np.ndarray:
    width, height = pd.to_numeric(frame["width"]), pd.to_numeric(frame["height"])
    return np.maximum(width.to_numpy(), height.to_numpy())


def _bands(
    reference: np.ndarray, values: np.ndarray, unit: str, scale: float = 1.0
) -> tuple[np.ndarray, list[str]]:
    """Tertile bands of `reference` (fewer when it has fewer distinct values), applied to values."""
    reference = np.asarray(reference, dtype=np.float64)
    reference = reference[np.isfinite(reference)]
    edges = list(np.unique(np.quantile(reference, [1 / 3, 2 / 3]))) if reference.size else []
    edges = [e for e in edges if e < reference.max()]  # a band above the top value is empty
    shown = [f"{e * scale:.4g}" for e in edges]
    if not edges:
        names = [f"all ({unit})"]
    else:
        middle = [f"{shown[0]}-{shown[1]} {unit}"] if len(edges) == 2 else []
        names = [f"<= {shown[0]} {unit}", *middle, f"> {shown[-1]} {unit}"]
    labels = np.full(len(values), None, dtype=object)
    finite = np.isfinite(np.asarray(values, dtype=np.float64))
    index = np.searchsorted(np.asarray(edges), np.asarray(values)[finite], side="left")
    labels[finite] = np.asarray(names, dtype=object)[index]
    return labels, names
