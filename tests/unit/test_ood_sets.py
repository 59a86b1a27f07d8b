"""The synthetic out-of-distribution sets: the same pixels from the same seed on every machine."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from pipeline import ood_sets

# sha256 of ood_set("text_ui", 6, 64, 42): a change of these pixels changes the committed OOD
# AUROCs, so it must come from a change of this code, never from the machine's fonts or renderer
TEXT_UI_64 = "35497df505ed751662c715c94f54a87ece8916a829498696633f3976b318001e"


def test_text_ui_pixels_come_from_the_shipped_font_alone(monkeypatch):
    def no_renderer(*_args, **_kwargs):
        raise AssertionError("text drawn by OpenCV's font renderer")

    monkeypatch.setattr(cv2, "putText", no_renderer)
    images = ood_sets.ood_set("text_ui", 6, 64, 42)
    assert hashlib.sha256(images.tobytes()).hexdigest() == TEXT_UI_64


@pytest.mark.parametrize("scale", [1, 3])
def test_draw_text_writes_each_glyph_at_its_place_and_clips_at_the_edges(scale):
    image = np.zeros((8 * scale, 14 * scale, 3), np.uint8)
    ood_sets.draw_text(image, "1l7", 1, 7 * scale, scale, 255)  # the "7" runs off the right edge
    one = (ood_sets._GLYPH_BITS["1"] * 255).repeat(scale, 0).repeat(scale, 1)
    assert np.array_equal(image[: 7 * scale, 1 : 1 + 5 * scale, 0], one)
    assert (image[..., 0] == image[..., 2]).all()  # grey ink in every channel
    assert image[:, 7 * scale :, 0].any()  # the second glyph is there
    ood_sets.draw_text(image, "zz", -100, -100, scale, 255)  # wholly outside: nothing, no error


def test_every_family_is_the_same_for_the_same_seed_and_differs_for_another():
    for family in ood_sets.FAMILIES:
        first = ood_sets.ood_set(family, 3, 48, seed=1)
        assert first.shape == (3, 48, 48, 3)
        assert first.dtype == np.uint8
        assert np.array_equal(first, ood_sets.ood_set(family, 3, 48, seed=1))
        assert not np.array_equal(first, ood_sets.ood_set(family, 3, 48, seed=2))
