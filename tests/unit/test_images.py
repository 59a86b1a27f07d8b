"""Reading, validating, converting and fitting images (pipeline/images.py)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.images import (
    RejectedImage,
    contact_sheet,
    decode,
    fit,
    png_bytes,
    read_file,
)

LIMITS = {"max_pixels": 50_000_000, "min_side": 16}


def _encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rejected_kind(data: bytes, **limits) -> str:
    with pytest.raises(RejectedImage) as info:
        decode(data, **(LIMITS | limits))
    return info.value.kind


def test_an_rgb_png_decodes_unchanged(synthetic_image):
    array = synthetic_image(1, "benign", (40, 30))
    decoded = decode(_encoded(Image.fromarray(array)), **LIMITS)
    assert (decoded.mode, decoded.width, decoded.height) == ("RGB", 40, 30)
    np.testing.assert_array_equal(np.asarray(decoded.image), array)


def test_a_zero_byte_file_is_rejected_as_empty(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(RejectedImage, match="^empty"):
        read_file(tmp_path / "a.png")


def test_a_missing_file_is_rejected_as_missing(tmp_path):
    with pytest.raises(RejectedImage, match="^missing"):
        read_file(tmp_path / "a.png")


def test_a_truncated_png_is_rejected(synthetic_image):
    data = _encoded(Image.fromarray(synthetic_image(1, size=64)))
    assert _rejected_kind(data[: len(data) // 2]) in {"truncated", "corrupt"}


def test_a_text_file_named_png_is_not_an_image():
    assert _rejected_kind(b"path,label\nthis is not a picture\n") == "not_an_image"


def test_a_tiny_image_is_rejected(synthetic_image):
    data = _encoded(Image.fromarray(synthetic_image(1, size=(40, 12))))
    assert _rejected_kind(data, min_side=16) == "too_small"


def test_an_image_over_max_pixels_is_rejected(synthetic_image):
    data = _encoded(Image.fromarray(synthetic_image(1, size=64)))
    assert _rejected_kind(data, max_pixels=64 * 63) == "too_large"


def test_a_decompression_bomb_is_rejected_from_its_header():
    """A small file that claims 100000 x 100000 pixels is refused before anything is decoded."""
    data = bytearray(_encoded(Image.new("L", (16, 16))))
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    assert _rejected_kind(bytes(data)) == "too_large"


def test_16_bit_grey_is_scaled_to_8_bit_rgb():
    values = np.tile(np.array([0, 257 * 128, 65535, 1000], dtype=np.uint16), (20, 5))
    decoded = decode(_encoded(Image.fromarray(values)), **LIMITS)
    assert decoded.mode.startswith("I")
    out = np.asarray(decoded.image)
    assert out.dtype == np.uint8
    assert out.shape == (20, 20, 3)
    np.testing.assert_array_equal(out[0, :4, 0], [0, 128, 255, 4])
    assert (out[..., 0] == out[..., 2]).all()


def test_grey_is_converted_to_rgb(synthetic_image):
    grey = synthetic_image(1)[:, :, 0]
    decoded = decode(_encoded(Image.fromarray(grey, "L")), **LIMITS)
    assert decoded.mode == "L"
    assert decoded.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded.image)[:, :, 1], grey)


def test_rgba_is_composited_over_black(synthetic_image):
    rgba = np.dstack([synthetic_image(1), np.full((48, 48), 255, np.uint8)])
    rgba[:10, :, 3] = 0  # a transparent band
    decoded = decode(_encoded(Image.fromarray(rgba, "RGBA")), **LIMITS)
    out = np.asarray(decoded.image)
    assert decoded.mode == "RGBA"
    assert decoded.image.mode == "RGB"
    assert (out[:10] == 0).all()
    np.testing.assert_array_equal(out[10:], rgba[10:, :, :3])


def test_palette_is_converted_to_rgb(synthetic_image):
    palette = Image.fromarray(synthetic_image(1, "benign")).convert("P")
    decoded = decode(_encoded(palette), **LIMITS)
    assert decoded.mode == "P"
    assert decoded.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(palette.convert("RGB")))


def test_cmyk_jpeg_is_converted_to_rgb(synthetic_image):
    cmyk = Image.fromarray(synthetic_image(1, "malignant")).convert("CMYK")
    decoded = decode(_encoded(cmyk, "JPEG", quality=95), **LIMITS)
    assert decoded.mode == "CMYK"
    assert decoded.image.mode == "RGB"
    assert np.abs(np.asarray(decoded.image, int) - synthetic_image(1, "malignant")).mean() < 10


def test_float_pixels_are_rejected_as_unsupported():
    data = _encoded(Image.fromarray(np.ones((20, 20), np.float32)), "TIFF")
    assert _rejected_kind(data) == "unsupported_mode"


def test_letterbox_keeps_aspect_and_pads_with_black():
    wide = Image.new("RGB", (80, 40), (200, 200, 200))
    out = np.asarray(fit(wide, 32, keep_aspect=True))
    assert out.shape == (32, 32, 3)
    assert (out[:8] == 0).all()
    assert (out[-8:] == 0).all()
    assert (out[9:23] == 200).all()


def test_stretch_fills_the_square():
    out = np.asarray(fit(Image.new("RGB", (80, 40), (200, 200, 200)), 32, keep_aspect=False))
    assert out.shape == (32, 32, 3)
    assert (out == 200).all()


def test_png_output_is_8_bit_rgb_and_byte_stable(synthetic_image):
    image = fit(Image.fromarray(synthetic_image(3, "benign")), 32, keep_aspect=True)
    data = png_bytes(image)
    assert data == png_bytes(image.copy())
    reread = Image.open(io.BytesIO(data))
    assert (reread.mode, reread.size) == ("RGB", (32, 32))


def test_contact_sheet_has_a_row_per_caption_even_when_empty(synthetic_image):
    thumbs = [Image.fromarray(synthetic_image(s)) for s in range(3)]
    sheet = contact_sheet([("benign / train", thumbs), ("benign / val", [])], thumb=40)
    assert sheet.mode == "RGB"
    assert sheet.height == 2 * 44 + 4
    assert sheet.width > 3 * 40
