"""Augmentation: seeded, shape-preserving, small; balancing fills every class to the target."""

import numpy as np
import pytest

from pipeline.augmentation import augment_image, balance_counts
from pipeline.config import AugmentParams
from tests.factories import label_image


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_augmented_image_keeps_shape_and_dtype_and_changes_pixels(seed):
    image = label_image(0, 32, np.random.default_rng(seed))
    out = augment_image(image, np.random.default_rng(seed), AugmentParams())
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)


def test_same_seed_same_variant():
    image = label_image(1, 32, np.random.default_rng(0))
    a = augment_image(image, np.random.default_rng(3), AugmentParams())
    b = augment_image(image, np.random.default_rng(3), AugmentParams())
    assert np.array_equal(a, b)


def test_all_ranges_zero_is_identity():
    params = AugmentParams(flip=False, rotation_deg=0, zoom=0, brightness=0, contrast=0, speckle=0)
    image = label_image(2, 32, np.random.default_rng(0))
    assert np.array_equal(augment_image(image, np.random.default_rng(0), params), image)


def test_flips_are_left_right_only_because_depth_has_meaning():
    params = AugmentParams(rotation_deg=0, zoom=0, brightness=0, contrast=0, speckle=0)
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, :] = 255  # the skin line at the top must stay at the top
    for seed in range(10):
        out = augment_image(image, np.random.default_rng(seed), params)
        assert out[0].min() == 255 and out[1:].max() == 0


def test_balance_counts_fills_to_the_largest_class_or_a_number():
    counts = {"benign": 10, "malignant": 4, "normal": 2}
    assert balance_counts(counts, "max") == {"benign": 0, "malignant": 6, "normal": 8}
    assert balance_counts(counts, 6) == {"benign": 0, "malignant": 2, "normal": 4}
