"""Keypoint matching (pipeline/matching.py): a crop is found with its transform, scans that share
only burned-in text are not paired, a blank image matches nothing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import copies
from pipeline.matching import keypoints, match
from tests.factories import benchmark_originals, project_params, ultrasound_scans

PREPARE = project_params().prepare  # params.yaml's thresholds, as prepare applies them
LIMITS = (PREPARE.keypoint_inliers, PREPARE.keypoint_correlation)


@pytest.mark.parametrize("source", ["busi-sample", "synthetic"])
def test_a_cropped_copy_is_found_with_its_transform(source, request):
    original = benchmark_originals(source, request)[0]
    copy = original.crop((40, 30, original.width - 60, original.height - 50))
    found = match(keypoints(original), keypoints(copy))
    assert found is not None
    assert found.accepted(*LIMITS)
    assert found.scale == pytest.approx(1, abs=0.03)
    assert (found.shift_x, found.shift_y) == (pytest.approx(40, abs=3), pytest.approx(30, abs=3))


def test_two_scans_that_share_only_burned_in_text_are_not_duplicates():
    scans = ultrasound_scans(2, 400)
    labelled = [copies.annotate(scan, np.random.default_rng(0)) for scan in scans]
    found = match(keypoints(labelled[0]), keypoints(labelled[1]))
    assert found is None or not found.accepted(*LIMITS)


def test_a_blank_image_has_no_keypoints_and_matches_nothing():
    blank = keypoints(Image.new("RGB", (200, 200)))
    assert len(blank.descriptors) == 0
    assert match(blank, blank) is None
