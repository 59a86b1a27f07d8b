"""One image's ORB keypoints, and the geometric verification of a pair: where one image lies in
the other (a RANSAC similarity transform) and whether their pixels agree there.

The part of near-duplicate detection that looks at two images (pipeline.duplicates proposes the
pairs and groups them; external_sets checks a site against development data with the same test).
Keypoints are computed once per image while prepare decodes it; a pair costs one match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# Keypoints are found at a fixed fraction of the original resolution, not at a fixed output size:
# a crop or a shift of an image then has the same pixel scale as the image itself. The clamps keep
# tiny images detectable and huge ones cheap (ORB's 8-level pyramid absorbs what scale is left).
WORK_SCALE = 0.5
WORK_SIDE = (160, 640)  # the longer side of the working image is kept within these pixels
THUMB_SCALE = 0.25  # thumbnails for the correlation check, relative to the working image
KEYPOINTS = 400  # ORB keypoints per image (verification uses all of them)
RATIO = 0.8  # Lowe's ratio test on descriptor matches
RANSAC_PIXELS = 4.0  # reprojection tolerance in working-image pixels
MIN_SPREAD = 0.2  # inliers must span this fraction of the image both ways (not one text label)
SCALE_RANGE = (0.4, 2.5)  # a duplicate is not a 3x zoom of another image


@dataclass(frozen=True)
class Keypoints:
    """What keypoint matching needs of one image, computed once while the image is decoded."""

    scale: float  # working-image pixels per original pixel
    size: tuple[int, int]  # working image (width, height)
    points: np.ndarray  # (n, 2) float32 working-image coordinates, strongest response first
    descriptors: np.ndarray  # (n, 32) uint8 ORB descriptors, same order
    thumb: np.ndarray  # uint8 grey, THUMB_SCALE of the working image


def keypoints(image: Image.Image) -> Keypoints:
    """ORB keypoints of `image` at a fixed fraction of its resolution (see `WORK_SCALE`)."""
    grey = np.ascontiguousarray(np.asarray(image.convert("L")))
    longer = max(grey.shape)
    scale = min(max(WORK_SCALE, WORK_SIDE[0] / longer), WORK_SIDE[1] / longer)
    work = _resized(grey, scale)
    orb = cv2.ORB.create(nfeatures=KEYPOINTS, fastThreshold=10, edgeThreshold=15, patchSize=15)
    found, descriptors = orb.detectAndCompute(work, None)
    if descriptors is None:
        # OpenCV's stubs say an array; with no keypoint found it is None
        found, descriptors = (), np.zeros((0, 32), np.uint8)  # type: ignore[unreachable]
    order = np.argsort([-k.response for k in found], kind="stable").astype(int)
    points = np.array([found[i].pt for i in order], np.float32).reshape(-1, 2)
    size = (work.shape[1], work.shape[0])
    return Keypoints(scale, size, points, descriptors[order], _resized(work, THUMB_SCALE))


def _resized(grey: np.ndarray, scale: float) -> np.ndarray:
    height, width = grey.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(grey, size, interpolation=method)


@dataclass(frozen=True)
class Match:
    """Where image b lies in image a, as RANSAC found it, and how well the two agree there."""

    inliers: int  # keypoint matches consistent with the transform
    scale: float  # size of b's pixels in a's pixels (1: same resolution)
    rotation_deg: float
    shift_x: float  # where b's top-left corner lands in a, in a's original pixels
    shift_y: float
    spread: float  # smaller side of the inliers' bounding box, as a fraction of a's side
    correlation: float  # Pearson correlation of a and the transformed b where they overlap

    def accepted(self, min_inliers: int, min_correlation: float) -> bool:
        """True when this is a duplicate: enough inliers, spread out, and the pixels agree."""
        return (
            self.inliers >= min_inliers
            and self.correlation >= min_correlation
            and self.spread >= MIN_SPREAD
            and SCALE_RANGE[0] <= self.scale <= SCALE_RANGE[1]
        )


MATCH_COLUMNS = ("inliers", "scale", "rotation_deg", "shift_x", "shift_y", "correlation")


def match_fields(m: Match | None) -> dict[str, float | int | str]:
    """A verified pair's geometry as report columns (MATCH_COLUMNS); blank for a pair found by
    hash alone: prepare's duplicates.csv and external validation's left_out.csv list both."""
    return {key: "" if m is None else getattr(m, key) for key in MATCH_COLUMNS}


def match(a: Keypoints, b: Keypoints) -> Match | None:
    """Geometric verification of one pair; None when no transform can be estimated."""
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return None
    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 3:
        return None
    in_a = a.points[[m.queryIdx for m in good]]
    in_b = b.points[[m.trainIdx for m in good]]
    matrix, mask = cv2.estimateAffinePartial2D(
        in_b,
        in_a,
        method=cv2.RANSAC,
        ransacReprojThreshold=RANSAC_PIXELS,
        maxIters=2000,
        confidence=0.995,
    )
    if matrix is None:  # no transform found (OpenCV's stubs say it always returns one)
        return None  # type: ignore[unreachable]
    inside = in_a[mask.ravel().astype(bool)]
    extent = np.ptp(inside, axis=0) / np.array(a.size) if len(inside) else np.zeros(2)
    work_scale = math.hypot(matrix[0, 0], matrix[1, 0])
    return Match(
        inliers=int(mask.sum()),
        scale=round(work_scale * b.scale / a.scale, 4),
        rotation_deg=round(math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])), 2),
        shift_x=round(float(matrix[0, 2]) / a.scale, 1),
        shift_y=round(float(matrix[1, 2]) / a.scale, 1),
        spread=round(float(extent.min()), 3),
        correlation=round(_overlap_correlation(a.thumb, b.thumb, matrix), 4),
    )


def _overlap_correlation(a: np.ndarray, b: np.ndarray, matrix: np.ndarray) -> float:
    """Correlation of thumbnail `a` with thumbnail `b` moved by `matrix` (working-image units),
    over the pixels `b` covers: keypoints can agree on a burned-in label while the scans differ."""
    moved = matrix.astype(np.float64).copy()
    moved[:, 2] *= THUMB_SCALE
    height, width = a.shape
    warped = cv2.warpAffine(b.astype(np.float32), moved, (width, height), flags=cv2.INTER_LINEAR)
    ones = np.ones(b.shape, np.float32)
    cover = cv2.warpAffine(ones, moved, (width, height), flags=cv2.INTER_NEAREST) > 0.5
    if cover.sum() < 16:
        return 0.0
    x = a[cover].astype(np.float64) - a[cover].mean()
    y = warped[cover].astype(np.float64) - warped[cover].mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0
