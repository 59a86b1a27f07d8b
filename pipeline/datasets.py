"""Loading the prepared and augmented image sets into arrays for training and evaluation.

Data sets here are a few thousand small images at most, so they live in memory as uint8 arrays:
decoded once, not re-read from disk every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.errors import UserError


@dataclass(frozen=True)
class ImageSet:
    """Images (N, S, S, 3) uint8 RGB, integer labels in `classes` order, and their paths."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest CSV as strings (no NaN guessing); UserError naming the file and `dvc repro` when
    missing."""
    if not path.is_file():
        raise UserError(
            f"{path}: manifest not found; run the stage that makes it first (dvc repro)"
        )
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def load_set(folder: Path, classes: tuple[str, ...], split: str | None = None) -> ImageSet:
    """Read `folder/manifest.csv` (optionally one split) and decode its images."""
    frame = read_manifest(folder / "manifest.csv")
    if split is not None:
        frame = frame[frame["split"] == split]
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise UserError(f"{folder / 'manifest.csv'}: labels {unknown} are not in params classes")
    index = {name: i for i, name in enumerate(classes)}
    images = [read_rgb(folder / p) for p in frame["path"]]
    stacked = np.stack(images) if images else np.zeros((0, 1, 1, 3), dtype=np.uint8)
    labels = np.array([index[name] for name in frame["label"]], dtype=np.int64)
    return ImageSet(stacked, labels, list(frame["path"]))


def read_rgb(path: Path) -> np.ndarray:
    """A prepared PNG as an RGB array; UserError naming the file when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: cannot read image; rerun `dvc repro` to rebuild the data")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
