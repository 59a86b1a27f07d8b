"""Augmentation: seeded, shape-preserving, small; balancing fills every class to the target."""

import dataclasses

import cv2
import numpy as np
import pytest

from pipeline.augmentation import (
    affine_matrices,
    augment_batch,
    augment_image,
    balance_counts,
    speckle_field,
)
from tests.factories import augment_params, label_image


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_augmented_image_keeps_shape_and_dtype_and_changes_pixels(seed):
    image = label_image(0, 32, np.random.default_rng(seed))
    out = augment_image(image, np.random.default_rng(seed), augment_params())
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    assert not np.array_equal(out, image)


def test_same_seed_same_variant():
    image = label_image(1, 32, np.random.default_rng(0))
    a = augment_image(image, np.random.default_rng(3), augment_params())
    b = augment_image(image, np.random.default_rng(3), augment_params())
    assert np.array_equal(a, b)


def test_all_ranges_zero_is_identity():
    params = augment_params(flip=False, rotation_deg=0, zoom=0, brightness=0, contrast=0, speckle=0)
    image = label_image(2, 32, np.random.default_rng(0))
    assert np.array_equal(augment_image(image, np.random.default_rng(0), params), image)


def test_flips_are_left_right_only_because_depth_has_meaning():
    params = augment_params(rotation_deg=0, zoom=0, brightness=0, contrast=0, speckle=0)
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, :] = 255  # the skin line at the top must stay at the top
    for seed in range(10):
        out = augment_image(image, np.random.default_rng(seed), params)
        assert out[0].min() == 255
        assert out[1:].max() == 0


def test_balance_counts_fills_to_the_largest_class_or_a_number():
    counts = {"benign": 10, "malignant": 4, "normal": 2}
    assert balance_counts(counts, "max") == {"benign": 0, "malignant": 6, "normal": 8}
    assert balance_counts(counts, 6) == {"benign": 0, "malignant": 2, "normal": 4}


def test_the_mirror_folded_into_the_warp_equals_warping_the_mirrored_image():
    image = label_image(1, 32, np.random.default_rng(0))
    flipped_seeds = [s for s in range(20) if np.random.default_rng(s).random() < 0.5]
    for seed in flipped_seeds[:5]:
        folded = augment_image(image, np.random.default_rng(seed), augment_params(speckle=0))
        two_steps = augment_image(
            np.ascontiguousarray(image[:, ::-1]),
            np.random.default_rng(seed),
            augment_params(flip=False, speckle=0),
        )
        assert np.array_equal(folded, two_steps)
        assert not np.array_equal(folded, image[:, ::-1])  # the rotation and zoom did run


def test_augmentation_writes_into_the_slot_it_is_given():
    image = label_image(0, 32, np.random.default_rng(0))
    batch = np.zeros((2, 32, 32, 3), np.uint8)
    out = augment_image(image, np.random.default_rng(1), augment_params(), out=batch[1])
    assert np.shares_memory(out, batch)
    assert batch[1].any()
    assert not batch[0].any()


def test_speckle_is_multiplicative_grey_noise_with_the_asked_spread():
    field = speckle_field(np.random.default_rng(0), (256, 256, 3), 0.1)
    assert field.dtype == np.float32
    assert np.array_equal(field[..., 0], field[..., 2])  # the same factor on every channel
    assert abs(field.mean() - 1) < 0.01
    assert abs(field.std() - 0.1) < 0.005


def test_a_window_of_a_shared_field_varies_per_image():
    params = augment_params(flip=False, rotation_deg=0, zoom=0, brightness=0, contrast=0)
    field = speckle_field(np.random.default_rng(0), (64, 64, 3), 0.2)
    image = np.full((32, 32, 3), 128, np.uint8)
    a = augment_image(image, np.random.default_rng(1), params, field=field)
    b = augment_image(image, np.random.default_rng(2), params, field=field)
    assert not np.array_equal(a, b)
    assert abs(float(a.mean()) - 128) < 3


def test_the_batch_matrices_are_opencvs_with_the_mirror_folded_in():
    rng = np.random.default_rng(0)
    angle, scale, flip = rng.uniform(-30, 30, 6), rng.uniform(0.8, 1.2, 6), np.arange(6) % 2 == 0
    mirror = np.array([[-1.0, 0.0, 39.0], [0.0, 1.0, 0.0], [0, 0, 1]])  # width 40
    for i, matrix in enumerate(affine_matrices(angle, scale, flip, 32, 40)):
        expected = cv2.getRotationMatrix2D((20.0, 16.0), angle[i], scale[i])
        np.testing.assert_allclose(matrix, expected @ mirror if flip[i] else expected, atol=1e-9)


def test_a_batch_with_every_range_zero_is_the_images_and_a_flip_only_batch_mirrors_some():
    images = np.stack([label_image(i % 3, 32, np.random.default_rng(i)) for i in range(8)])
    rows = np.array([3, 1, 4, 1, 5, 0, 2, 6])
    still = augment_params(flip=False, rotation_deg=0, zoom=0, brightness=0, contrast=0, speckle=0)
    out = np.empty((10, 32, 32, 3), np.uint8)
    assert np.array_equal(
        augment_batch(images, rows, np.random.default_rng(0), still, out), images[rows]
    )
    flips = dataclasses.replace(still, flip=True)
    batch = augment_batch(images, rows, np.random.default_rng(0), flips, out)
    mirrored = [np.array_equal(b, images[r][:, ::-1]) for b, r in zip(batch, rows, strict=True)]
    kept = [np.array_equal(b, images[r]) for b, r in zip(batch, rows, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < len(rows)


def test_a_batch_is_seeded_uint8_and_each_image_gets_its_own_variant():
    images = np.full((4, 32, 32, 3), 128, np.uint8)
    rows = np.array([0, 1, 2, 3])
    out = np.empty_like(images)
    a = augment_batch(images, rows, np.random.default_rng(5), augment_params(), out).copy()
    b = augment_batch(images, rows, np.random.default_rng(5), augment_params(), out)
    assert a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert len({x.tobytes() for x in a}) == 4  # the same image, four different variants
