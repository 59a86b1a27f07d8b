"""Read, validate and convert image files with Pillow; fit them to one square size; write PNGs.

Every file a user drops in `data/raw/` goes through `decode`: it either comes back as an 8-bit RGB
image or raises `RejectedImage` with a reason (`<kind>: <detail>`) for the rejects report. Nothing
a file contains may crash the stage, so decoding errors of any type become rejections.

Conversions (each counted in the data summary by original mode):
- grey (`L`, `1`), palette (`P`), CMYK, YCbCr and the like: Pillow's conversion to RGB;
- with transparency (`RGBA`, `LA`, `PA`, palette with a transparent colour): composited over black,
  the background of an ultrasound frame;
- 16-bit grey (`I;16*`, `I`): scaled from the full 16-bit range to 8 bits (x / 257), the same for
  every image, so no per-image contrast stretch changes what a lesion looks like; converted in
  strips of rows, so a 7000 x 7000 upload costs its own pixels plus one 8-bit copy, not a 64-bit
  one (about 1 GB before);
- 32-bit float (`F`) and anything Pillow cannot turn into RGB: rejected.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline.files import write_bytes

# The shortest side an image may have, the one value prepare and every serving surface check: a
# model must not answer an image smaller than any it could have learnt from, and a side under 32
# pixels is a thumbnail or an icon, not an ultrasound frame (they are hundreds of pixels a side).
# 32 is also the smallest prepare.image_size allowed, so no training image is blown up from less.
MIN_SIDE = 32

BACKGROUND = (0, 0, 0)  # letterbox padding and transparency background: ultrasound black
PNG_COMPRESS_LEVEL = 3  # faster than the default 6 for ~5% larger files; output is still lossless
STRIP_ROWS = 64  # rows converted at a time from 16 bits, bounding the temporary arrays
GREY_MODES = ("L", "1", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")


class RejectedImage(Exception):
    """A file that cannot be used as an image. `kind` is a short category for counting."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    """A validated, decoded image and what the file was before conversion (for the manifest)."""

    image: Image.Image  # 8-bit RGB (or 8-bit grey `L` when asked), EXIF orientation applied
    mode: str  # the file's original Pillow mode (`RGB`, `L`, `I;16`, `CMYK`, ...)
    width: int  # original size in pixels
    height: int


def read_file(path: str | Path) -> bytes:
    """The file's bytes; RejectedImage when it is missing, unreadable or empty."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RejectedImage("missing", "file not found") from None
    except OSError as exc:
        raise RejectedImage("unreadable", exc.strerror or type(exc).__name__) from None
    if not data:
        raise RejectedImage("empty", "file has 0 bytes")
    return data


def decode(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int = MIN_SIDE,
    grey_ok: bool = False,
    limit_names: tuple[str, str] = ("prepare.max_pixels", "min side"),
) -> Decoded:
    """Validate and decode image bytes into 8-bit RGB, or raise RejectedImage with the reason.

    The size checks use the header only, before any pixel is decoded, so a decompression bomb
    (a small file that claims a huge size) costs nothing: more than `max_pixels` pixels or a side
    shorter than `min_side` pixels is rejected; the message names the limits as `limit_names`
    (the setting a user would change: a params key, a server option). With `grey_ok`, grey
    images stay 8-bit grey (`L`), a third of the memory until the caller has resized them.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:  # Pillow's own guard, far above ours
            raise RejectedImage(
                "too_large", f"{exc} (over {limit_names[0]}={max_pixels})"
            ) from None
        except Image.UnidentifiedImageError:
            raise RejectedImage("not_an_image", "not a format Pillow can read") from None
        except Exception as exc:  # any decoder error on a bad file is a rejection, not a crash
            raise RejectedImage("corrupt", f"{type(exc).__name__}: {exc}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise RejectedImage(
                "too_large", f"{width}x{height} pixels is over {limit_names[0]}={max_pixels}"
            )
        if min(width, height) < min_side:
            raise RejectedImage(
                "too_small", f"{width}x{height} pixels has a side under {limit_names[1]}={min_side}"
            )
        mode = image.mode
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            converted = to_rgb(image, grey_ok=grey_ok)
        except RejectedImage:
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            kind = "truncated" if "truncated" in message.lower() else "corrupt"
            raise RejectedImage(kind, f"{type(exc).__name__}: {message}") from None
    return Decoded(converted, mode, converted.width, converted.height)


def to_rgb(image: Image.Image, grey_ok: bool = False) -> Image.Image:
    """Convert any supported Pillow mode to 8-bit RGB (see the module docstring for the rules);
    with `grey_ok`, grey modes become 8-bit grey (`L`) instead."""
    mode = image.mode
    if mode == "RGB" or (grey_ok and mode == "L" and "transparency" not in image.info):
        return image
    if mode.startswith("I;16") or mode == "I":
        grey = _sixteen_bit_to_grey(image)
        return grey if grey_ok else grey.convert("RGB")
    if mode == "F":
        raise RejectedImage("unsupported_mode", "32-bit float pixels (mode F)")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (
        mode in ("L", "RGB") and "transparency" in image.info
    ):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        if image.getchannel("A").getextrema() != (255, 255):
            background = Image.new("RGBA", image.size, BACKGROUND + (255,))
            image = Image.alpha_composite(background, image)
        wanted = "L" if grey_ok and mode in GREY_MODES else "RGB"
        return image.convert(wanted)
    try:
        return image.convert("L" if grey_ok and mode in GREY_MODES else "RGB")
    except (ValueError, OSError) as exc:
        raise RejectedImage(
            "unsupported_mode", f"cannot convert mode {mode} to RGB: {exc}"
        ) from None


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    """16/32-bit integer grey -> 8-bit grey by x * 255 / 65535, a strip of rows at a time."""
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, STRIP_ROWS):
        bottom = min(height, top + STRIP_ROWS)
        values = np.asarray(image.crop((0, top, width, bottom)), dtype=np.int64)
        np.clip(values, 0, 65535, out=values)  # in place: one strip-sized temporary, not five
        values *= 255
        values += 32767
        values //= 65535
        out[top:bottom] = values
    return Image.fromarray(out, "L")


def fit(image: Image.Image, size: int, keep_aspect: bool) -> Image.Image:
    """Resize to `size` x `size`: letterbox (scale the longer side, pad centred) or stretch.

    An 8-bit grey (`L`) image stays grey: the padding is BACKGROUND's grey level, so converting
    the result to RGB gives the pixels an RGB copy of it would have given, for a third of the
    work (Pillow's Lanczos filters each channel alike)."""
    if not keep_aspect:
        return image.resize((size, size), Image.Resampling.LANCZOS)
    scale = size / max(image.width, image.height)
    width = max(1, round(image.width * scale))
    height = max(1, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    grey = image.mode == "L" and len(set(BACKGROUND)) == 1
    canvas = (
        Image.new("L", (size, size), BACKGROUND[0])
        if grey
        else Image.new("RGB", (size, size), BACKGROUND)
    )
    canvas.paste(resized, ((size - width) // 2, (size - height) // 2))
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    """Encode as PNG; the same pixels always give the same bytes (no timestamps, no metadata)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write `image` as a PNG atomically."""
    write_bytes(path, png_bytes(image))


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[Image.Image]]], thumb: int = 96, columns: int | None = None
) -> Image.Image:
    """A grid for a human to look at: one captioned row per (caption, images), thumbnails of
    `thumb` pixels, `columns` per row (default: the longest row). Empty rows say so."""
    columns = columns or max([len(images) for _, images in rows] + [1])
    font = ImageFont.load_default()
    caption_width, gap = 150, 4
    width = caption_width + columns * (thumb + gap) + gap
    height = max(1, len(rows)) * (thumb + gap) + gap
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for r, (caption, images) in enumerate(rows):
        top = gap + r * (thumb + gap)
        text = caption if images else f"{caption}\n(no images)"
        draw.multiline_text((gap, top + thumb // 2 - 12), text, fill=(230, 230, 230), font=font)
        for c, image in enumerate(images[:columns]):
            small = fit(to_rgb(image), thumb, keep_aspect=True)
            sheet.paste(small, (caption_width + gap + c * (thumb + gap), top))
    return sheet
