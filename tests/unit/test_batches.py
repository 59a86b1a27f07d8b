"""The training input pipeline: every image once per epoch, reshuffled, seeded, thread-safe."""

import numpy as np

from pipeline.batches import TrainBatches, light
from tests.factories import augment_params


def batches(workers=1, augment=None, seed=0):
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((10, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    return TrainBatches(images, labels, 3, 4, seed, augment=augment, workers=workers)


def epoch(data):
    return [data[i] for i in range(len(data))]


def test_each_epoch_sees_every_image_once_with_matching_one_hot_labels():
    data = batches()
    xs, ys = zip(*epoch(data), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert sorted(x[:, 0, 0, 0].astype(int)) == list(range(10))
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert (y.argmax(axis=1) == labels[x[:, 0, 0, 0].astype(int)]).all()
    assert x.dtype == np.uint8
    assert [len(b) for b in xs] == [4, 4, 2]


def test_order_changes_between_epochs_and_repeats_for_the_same_seed():
    a, b = batches(seed=1), batches(seed=1)
    first = np.concatenate([x for x, _ in epoch(a)])[:, 0, 0, 0]
    a.on_epoch_end()
    second = np.concatenate([x for x, _ in epoch(a)])[:, 0, 0, 0]
    assert not np.array_equal(first, second)
    assert np.array_equal(first, np.concatenate([x for x, _ in epoch(b)])[:, 0, 0, 0])


def test_augmented_batches_do_not_depend_on_the_order_they_are_asked_for():
    augment = light(augment_params())
    forward = epoch(batches(augment=augment))
    data = batches(augment=augment, workers=4)
    backward = [data[i] for i in reversed(range(len(data)))][::-1]
    for (x1, _), (x2, _) in zip(forward, backward, strict=True):
        assert np.array_equal(x1, x2)


def test_augmented_batches_are_uint8_and_differ_between_epochs_with_the_same_order_seed():
    data = batches(augment=light(augment_params()))
    first = np.concatenate([x for x, _ in epoch(data)])
    data.on_epoch_end()
    second = np.concatenate([x for x, _ in epoch(data)])
    assert first.dtype == second.dtype == np.uint8
    assert first.shape == second.shape == (10, 8, 8, 3)
    assert not np.array_equal(first, second)


def test_each_epoch_draws_its_own_speckle_field_twice_the_image_size():
    data = batches(augment=light(augment_params()))
    field = data.field
    assert field.shape == (16, 16, 3)
    assert field.dtype == np.float32
    assert np.array_equal(field, batches(augment=light(augment_params())).field)  # seeded
    data.on_epoch_end()
    assert not np.array_equal(field, data.field)


def test_light_augmentation_halves_the_offline_ranges():
    p = light(augment_params(rotation_deg=10, zoom=0.2))
    assert p.rotation_deg == 5
    assert p.zoom == 0.1
    assert p.flip
