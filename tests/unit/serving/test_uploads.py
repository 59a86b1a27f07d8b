"""pipeline.serving.uploads: careless uploads become clean refusals, in bounded memory."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline import images
from pipeline.serving.uploads import InvalidInput, Limits, decode_upload, from_base64, sniff_format
from tests.dicoms import MALFORMED, MARKERS, deflate_bomb, make_dicom, malformed_dicoms, ultrasound
from tests.factories import encode, scan

LIMITS = Limits(max_bytes=10**6, max_pixels=10**6)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming `width` x `height` with one short IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"])
def test_supported_formats_decode_by_content(fmt):
    data = encode(scan(), fmt)
    assert sniff_format(data) == fmt
    image = decode_upload(data, LIMITS)
    assert image.size == (56, 40)
    assert image.mode in ("RGB", "L")


def test_grey_rgba_palette_and_16bit_uploads_give_the_same_pixels():
    grey = scan()[:, :, 0]
    rgba = np.dstack([scan(), np.full((40, 56), 255, np.uint8)])
    deep = (grey.astype(np.uint16) * 257).astype(np.uint16)
    palette = Image.fromarray(grey).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    for data in (encode(grey), encode(rgba), encode(deep), buffer.getvalue()):
        image = np.asarray(decode_upload(data, LIMITS).convert("RGB"))
        assert np.array_equal(image[:, :, 0], grey)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"just some text, named scan.png by its sender", 415, "not a supported image"),
        (b"%PDF-1.7\n" + b"0" * 100, 415, "not a supported image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"0" * 100, 415, "not a supported image"),
        (png_header_only(100_000, 100_000), 413, "--max-pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, 400, "corrupt"),
    ],
    ids=["empty", "text", "pdf", "eps", "pixel-bomb-header", "broken-png"],
)
def test_bad_uploads_are_refused_with_a_status_and_a_reason(data, status, words):
    with pytest.raises(InvalidInput) as refused:
        decode_upload(data, LIMITS)
    assert refused.value.status == status
    assert words in refused.value.reason


def test_refusals_name_the_servers_own_limits_never_the_pipelines_params():
    data = encode(scan())
    with pytest.raises(InvalidInput) as refused:
        decode_upload(data, Limits(max_bytes=len(data) - 1))
    assert refused.value.status == 413
    assert "--max-bytes" in refused.value.reason
    azure = Limits.from_env()
    with pytest.raises(InvalidInput) as refused:
        decode_upload(png_header_only(9000, 9000), azure)
    assert "MAX_IMAGE_PIXELS" in refused.value.reason
    assert "prepare." not in refused.value.reason


def test_truncated_and_tiny_images_are_400():
    data = encode(scan(height=200, width=200))
    for bad in (data[: len(data) // 2], encode(scan(height=8, width=8))):
        with pytest.raises(InvalidInput) as refused:
            decode_upload(bad, LIMITS)
        assert refused.value.status == 400


def test_a_large_16_bit_upload_decodes_within_memory_proportional_to_its_output():
    """The old decoder made an int64 copy: 8 bytes per pixel on top of the image."""
    side = 3000
    deep = np.tile(np.arange(side, dtype=np.uint16) * 21, (side, 1))
    data = encode(deep)
    tracemalloc.start()
    try:
        image = decode_upload(data, Limits(max_bytes=10**8, max_pixels=10**8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "L"
    assert image.size == (side, side)
    assert peak < 2 * side * side, f"{peak / side**2:.1f} bytes per pixel"


@pytest.mark.parametrize("text", ["data:xyz", "data:image/png,abc", "not base64!", "", 42])
def test_bad_base64_and_data_urls_are_400_not_a_crash(text):
    with pytest.raises(InvalidInput) as refused:
        decode_upload(from_base64(text), LIMITS)
    assert refused.value.status == 400


def test_a_data_url_and_plain_base64_give_the_same_bytes():
    import base64

    raw = encode(scan())
    text = base64.b64encode(raw).decode()
    assert from_base64(text) == from_base64("data:image/png;base64," + text) == raw


# --- DICOM (issue 16) -----------------------------------------------------------------------------


def test_a_dicom_upload_is_its_ultrasound_region():
    region = ultrasound("benign", 160, 120)
    for photometric, syntax in (("MONOCHROME2", "rle"), ("YBR_FULL_422", "jpeg")):
        image = decode_upload(make_dicom(region, photometric=photometric, syntax=syntax), LIMITS)
        assert image.size == (160, 120)
        grey = np.asarray(Image.fromarray(region).convert("L")).astype(int)
        assert np.abs(np.asarray(image.convert("L")).astype(int) - grey).mean() < 2
    assert sniff_format(make_dicom(region)) == "DICOM"


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"frames": 3}, 422, "multi_frame: 3 frames (a cine loop, not one image): send one frame"),
        ({"modality": "MR"}, 422, "not_ultrasound: DICOM with Modality MR"),
    ],
)
def test_a_cine_loop_or_another_modality_is_a_clear_422(kwargs, status, reason):
    with pytest.raises(InvalidInput) as refused:
        decode_upload(make_dicom(scan(0, 40, 56), **kwargs), LIMITS)
    assert refused.value.status == status
    assert refused.value.reason.startswith(reason)
    assert not any(marker in refused.value.reason for marker in MARKERS.values())


def test_a_broken_or_huge_dicom_is_refused_like_any_image():
    data = make_dicom(scan(0, 40, 56))
    with pytest.raises(InvalidInput) as broken:
        decode_upload(data[:-500], LIMITS)  # cut inside the pixels
    assert broken.value.status == 400
    with pytest.raises(InvalidInput) as huge:
        decode_upload(data, Limits(max_pixels=1000))
    assert huge.value.status == 413
    assert "--max-pixels" in huge.value.reason


def test_a_deflate_bomb_is_413_without_inflating_it_whole():
    """A 1 MB deflated DICOM whose dataset inflates to 256 MB: refused once the inflated bytes
    pass the byte limit, with memory of a few inflated chunks (pydicom alone held all 256 MB)."""
    bomb = deflate_bomb(scan(0, 40, 56), inflated=256 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as refused:
            decode_upload(bomb, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 413
    assert "inflates to over" in refused.value.reason
    assert peak < 16 << 20


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_dicom_header_is_400_naming_no_header_value(name):
    data = malformed_dicoms(scan(0, 40, 56))[name]
    with pytest.raises(InvalidInput) as refused:
        decode_upload(data, LIMITS)
    assert refused.value.status == 400
    assert refused.value.reason.startswith("bad_header: ")
    assert not any(marker in refused.value.reason for marker in MARKERS.values())
    assert "abc" not in refused.value.reason


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
    ],
)
def test_an_exif_rotated_copy_decodes_to_the_same_pixels_in_prepare_and_serving(
    orientation, stored
):
    """A scan stored turned, with the EXIF orientation that turns it back (as phones and some
    exporters write): prepare and every serving surface see the upright scan, the same pixels
    as the original (issue 30 found a rotated copy refused as out of scope)."""
    original = Image.fromarray(scan(0, 40, 56))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    buffer = io.BytesIO()
    original.transpose(stored).save(buffer, "PNG", exif=exif.tobytes())
    rotated = buffer.getvalue()
    upright = np.asarray(decode_upload(encode(np.asarray(original)), LIMITS))
    assert np.array_equal(np.asarray(decode_upload(rotated, LIMITS)), upright)
    prepared = images.decode(rotated, max_pixels=10**6)  # what prepare calls
    assert np.array_equal(np.asarray(prepared.image), upright)


@pytest.mark.parametrize("side", [images.MIN_SIDE - 1, images.MIN_SIDE])
def test_prepare_and_every_surface_take_the_same_smallest_image(side):
    """One smallest side (images.MIN_SIDE) for training data and uploads: a model is never asked
    about an image smaller than any prepare would have let it learn from."""
    data = encode(scan(0, side, side + 8))
    if side >= images.MIN_SIDE:
        assert decode_upload(data).size == (side + 8, side)
        assert images.decode(data, max_pixels=10**6).image.size == (side + 8, side)
        return
    with pytest.raises(InvalidInput, match=f"too_small: {side + 8}x{side} pixels") as refused:
        decode_upload(data)
    assert refused.value.status == 400
    with pytest.raises(images.RejectedImage, match="too_small"):
        images.decode(data, max_pixels=10**6)
