"""Untrusted uploads -> images, or a refusal with an HTTP status and a sentence for the user.

Every surface (service, page, MLflow pyfunc, Azure scoring script, batch scorer) decodes through
`decode_upload`, so one file gets one verdict everywhere: 413 too big (bytes, or pixels read from
the header before decoding), 415 not a supported image by its content, 422 a DICOM file that is not
one ultrasound image (another modality, a cine loop, no pixels), 400 broken or tiny (a malformed
DICOM header included: the reason names the element, never its value). A deflated DICOM counts at
its inflated size (413 past the byte limit, found without inflating it whole). DICOM is read
by `pipeline.dicom`, as prepare reads it: the same checks and the same crop to the ultrasound
region, so a scan is answered on what the model was trained on. Limits
are the server's own (`Limits`), and refusals name them as the server's options, never as the
training pipeline's params. Grey images stay grey until the model input is fitted, so a huge grey
upload costs a third of an RGB copy.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from PIL import Image

from pipeline import dicom, images

# Formats accepted, by their leading bytes (the content decides, never a file name or a header a
# client sends). Pillow opens more (EPS, PSD, ICO, ...), some through external programs: not here.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("BMP", b"BM", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
    ("WEBP", b"WEBP", 8),  # RIFF....WEBP
    ("DICOM", dicom.MAGIC, dicom.MAGIC_OFFSET),  # 128-byte preamble, then DICM
)
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "DICOM")
FILE_FIELDS = ("file", "image")  # multipart field names every surface accepts
_STATUS = {"too_large": 413, "not_an_image": 415, "unsupported_mode": 415}
# A readable DICOM file that is not one ultrasound image: understood, but not what the model takes.
_DICOM_STATUS = {"not_ultrasound": 422, "multi_frame": 422, "no_pixel_data": 422}


class InvalidInput(Exception):
    """An upload a surface refuses: `status` the HTTP status, `reason` a sentence for the user."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """A server's limits on one upload; each surface names them as its users set them."""

    max_bytes: int = 20 * 1024 * 1024  # a BUSI PNG is ~0.3 MB; DICOM exports as PNG stay far below
    max_pixels: int = 50_000_000  # decompression-bomb guard, read from the header
    min_side: int = images.MIN_SIDE  # prepare's too: what the model could have learnt from
    names: tuple[str, str, str] = ("--max-bytes", "--max-pixels", "min side")

    @classmethod
    def from_env(cls) -> Limits:
        """Limits from MAX_UPLOAD_BYTES / MAX_IMAGE_PIXELS (the Azure deployment's settings)."""
        default = cls()
        return cls(
            max_bytes=int(os.environ.get("MAX_UPLOAD_BYTES", default.max_bytes)),
            max_pixels=int(os.environ.get("MAX_IMAGE_PIXELS", default.max_pixels)),
            names=("MAX_UPLOAD_BYTES", "MAX_IMAGE_PIXELS", "min side"),
        )


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes, or None when it is not one we accept."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def decode_upload(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Untrusted bytes -> 8-bit RGB or grey (`L`) PIL image, or InvalidInput(status, reason)."""
    if not data:
        raise InvalidInput(400, "empty upload: send the image file's bytes")
    if len(data) > limits.max_bytes:
        raise _too_big(f"upload of {len(data)} bytes", limits)
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidInput(
            415, f"not a supported image by its content; send one of {', '.join(SUPPORTED_FORMATS)}"
        )
    if fmt == "DICOM":
        return _decode_dicom(data, limits)
    try:
        decoded = images.decode(
            data,
            max_pixels=limits.max_pixels,
            min_side=limits.min_side,
            grey_ok=True,
            limit_names=limits.names[1:],
        )
    except images.RejectedImage as exc:
        if exc.kind == "not_an_image":  # it starts like one of ours, so it is a broken one
            raise InvalidInput(
                400, f"corrupt: starts like a {fmt} file but cannot be read"
            ) from None
        raise InvalidInput(_STATUS.get(exc.kind, 400), f"{exc.kind}: {exc.detail}") from None
    return decoded.image


def _decode_dicom(data: bytes, limits: Limits) -> Image.Image:
    """One ultrasound frame, cut to its region; a cine loop is refused (which frame to answer
    on is a choice for the sender, not the server)."""
    try:
        scan = dicom.decode(
            data,
            max_pixels=limits.max_pixels,
            min_side=limits.min_side,
            frames="refuse",
            crop=True,
            grey_ok=True,
            max_bytes=limits.max_bytes,  # a deflated file counts at its inflated size
            limit_names=(*limits.names[1:], ""),
        )
    except images.RejectedImage as exc:
        status = _DICOM_STATUS.get(exc.kind) or _STATUS.get(exc.kind, 400)
        raise InvalidInput(status, f"{exc.kind}: {exc.detail}") from None
    return scan.decoded.image


def _too_big(what: str, limits: Limits) -> InvalidInput:
    return InvalidInput(
        413, f"{what} is over this server's limit of {limits.max_bytes} bytes ({limits.names[0]})"
    )


def from_base64(text: str, limits: Limits | None = None) -> bytes:
    """A base64 image, optionally as a `data:image/...;base64,` URL -> its bytes; 400 otherwise.
    With `limits`, a text too long to hold at most `limits.max_bytes` is 413 before decoding."""
    if not isinstance(text, str):
        raise InvalidInput(400, "image must be a base64 string")
    if limits is not None and len(text) > limits.max_bytes * 4 // 3 + 1024:  # + a data URL
        raise _too_big(f"base64 image of {len(text)} characters", limits)
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidInput(400, "data URL must look like data:image/png;base64,<data>")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(400, "image is not valid base64") from None
