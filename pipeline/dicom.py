"""DICOM ultrasound files -> the same 8-bit images as any other upload, and who they belong to.

Both `prepare` and the serving core read DICOM through `decode`, so a scan gets one treatment in
training and at answer time: the same checks, the same frame, the same colour conversion and the
same crop to the ultrasound region. It imports nothing of the pipeline but `images` (it ships with
every released model).

What is accepted: Modality `US` with pixel data, 8-bit colour (RGB, YBR_FULL, YBR_FULL_422:
pydicom converts YCbCr to RGB) or 8- to 16-bit grey (MONOCHROME2, MONOCHROME1 inverted; more than
8 bits through the file's VOI LUT or window when it has one, then its stored range scaled to 8
bits, the same for every image), uncompressed or in a transfer syntax pydicom can decode with the
installed plugins (JPEG baseline and extended, JPEG-LS, RLE: pylibjpeg-libjpeg, Pillow, pydicom).
Anything else is a `RejectedImage` with a reason, like any bad file.

Memory stays bounded whatever a file says: a deflated dataset (Deflated Explicit VR Little
Endian) is inflated in chunks, only counting, and refused as `too_large` once it would pass
`max_bytes` (the byte limit a plain file of that size would meet) before pydicom inflates it;
the declared Rows x Columns x frames x samples is checked against the pixel and byte limits before
any pixel is read; and every malformed header value (an empty Columns, NumberOfFrames "abc", an
empty VOI LUT Sequence, a window width of 0) is a `bad_header` refusal naming the element, never
its value, and never an exception of another type.

The Sequence of Ultrasound Regions (0018,6011) says where the scanner drew the B-mode image; the
rest of the frame is burnt-in text, rulers and menus (often the patient's name and the date). With
`crop`, the largest 2-D tissue region is what the model sees.

Identifiers are read only to group a patient's images in one split: `Identity` holds them raw and
no caller may write them anywhere (prepare hashes them with a salt first), and no rejection reason
quotes a header value other than Modality and the pixel description, so no name, id, date or free
text can reach a report or a log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from pipeline import images

MAGIC = b"DICM"  # at byte 128, after the preamble (PS3.10 7.1)
MAGIC_OFFSET = 128
SUFFIXES = {".dcm", ".dicom"}
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")  # pydicom returns all three as RGB
GREY = ("MONOCHROME1", "MONOCHROME2")
TISSUE_2D = 1  # RegionSpatialFormat 1 = 2D (B-mode); RegionDataType 1 = tissue
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset zipped
# Other syntaxes that deflate the dataset (JPIP referenced): no pixel data of their own.
DEFLATED_REFERENCED = ("1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205")
INFLATE_CHUNK = 1 << 20  # bytes inflated at a time while counting a deflated dataset's size
BYTES_PER_PIXEL = 6  # the most one pixel of an accepted frame takes (3 samples of 16 bits)
HEADER_ERRORS = (TypeError, ValueError, IndexError, AttributeError, KeyError, OverflowError)
FramePolicy = Literal["refuse", "first", "middle"]


@dataclass(frozen=True)
class Identity:
    """Who and what a file belongs to, raw: never to be written anywhere as is."""

    patient: str | None = None  # PatientID (0010,0020)
    study: str | None = None  # StudyInstanceUID (0020,000D)
    instance: str | None = None  # SOPInstanceUID (0008,0018)


@dataclass(frozen=True)
class Scan:
    """A decoded DICOM scan: the image (as `images.decode` gives it) and its identity."""

    decoded: images.Decoded  # mode is `DICOM <photometric interpretation>`
    identity: Identity
    frames: int  # frames in the file (one of them was used)
    region: tuple[int, int, int, int] | None  # crop box (left, top, right, bottom) if cropped


def is_dicom(data: bytes) -> bool:
    """True when the bytes carry the DICOM file signature (the content decides, never a name)."""
    return data[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


def decode(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int = images.MIN_SIDE,
    frames: FramePolicy = "refuse",
    crop: bool = True,
    grey_ok: bool = False,
    max_bytes: int | None = None,
    limit_names: tuple[str, str, str] = (
        "prepare.max_pixels",
        "min side",
        "prepare.dicom_frames",
    ),
) -> Scan:
    """Validate and decode a DICOM file into 8-bit RGB (or grey `L` with `grey_ok`), or raise
    RejectedImage. The pixel count is checked from the header before anything is decoded, the
    smallest side after the crop (what the model would see); a multi-frame file is refused unless
    `frames` picks one (`first`, `middle`), naming the setting as `limit_names[2]`. `max_bytes`
    bounds what a deflated dataset may inflate to and what the declared pixel data may take
    (default: `max_pixels` pixels of the largest accepted kind, `BYTES_PER_PIXEL`)."""
    budget = max_bytes if max_bytes is not None else max_pixels * BYTES_PER_PIXEL
    ds = _dataset(data, budget)
    try:
        return _decode_dataset(ds, max_pixels, min_side, frames, crop, grey_ok, budget, limit_names)
    except HEADER_ERRORS as exc:  # a header value of the wrong type or range: the type only
        raise images.RejectedImage(
            "bad_header", f"malformed DICOM header ({type(exc).__name__})"
        ) from None


def _decode_dataset(
    ds: Any,
    max_pixels: int,
    min_side: int,
    frames: FramePolicy,
    crop: bool,
    grey_ok: bool,
    budget: int,
    limit_names: tuple[str, str, str],
) -> Scan:
    photometric, width, height = _check_header(ds, max_pixels, limit_names[0])
    count = _number(ds, "NumberOfFrames", 1)
    _check_declared_size(ds, width, height, count, budget)
    index = _frame(count, frames, limit_names[2])
    region = _region(ds, width, height) if crop else None
    box = region or (0, 0, width, height)
    if min(box[2] - box[0], box[3] - box[1]) < min_side:
        width, height = box[2] - box[0], box[3] - box[1]
        raise images.RejectedImage(
            "too_small", f"{width}x{height} pixels has a side under {limit_names[1]}={min_side}"
        )
    array = _pixels(ds, index, count)[box[1] : box[3], box[0] : box[2]]
    image = _to_image(array, ds, photometric, grey_ok)
    decoded = images.Decoded(image, f"DICOM {photometric}", image.width, image.height)
    return Scan(decoded, identity(ds), count, region)


def read_identity(path: str | Path) -> Identity | None:
    """The identity in a file's header (pixels not read), or None when it is not DICOM."""
    import pydicom

    try:
        with open(path, "rb") as handle:
            if not is_dicom(handle.read(MAGIC_OFFSET + len(MAGIC))):
                return None
            handle.seek(0)
            with _quiet():
                ds = pydicom.dcmread(handle, stop_before_pixels=True)
    except Exception:  # unreadable or broken: prepare rejects it later with the reason
        return None
    return identity(ds)


def identity(ds: Any) -> Identity:
    """The patient, study and instance ids of a DICOM dataset, None where absent or blank.

    Raw ids: prepare salts and hashes them before any use and never writes them as they are."""

    def text(keyword: str) -> str | None:
        value = str(ds.get(keyword, "") or "").strip()
        return value or None

    return Identity(text("PatientID"), text("StudyInstanceUID"), text("SOPInstanceUID"))


def _quiet() -> contextlib.AbstractContextManager[None]:
    """Read with pydicom silenced: its value warnings and log lines quote element values (names,
    dates), which must not reach stderr, DVC's output or a server log. Set for the process, not
    around each read (threads read in parallel; `warnings.catch_warnings` is not thread-safe)."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    logging.getLogger("pydicom").disabled = True
    return contextlib.nullcontext()


def _dataset(data: bytes, budget: int) -> Any:
    import pydicom

    if not is_dicom(data):
        raise images.RejectedImage("not_an_image", "no DICOM signature (DICM at byte 128)")
    _check_deflated(data, budget)
    try:
        with _quiet():
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.get("Modality")  # elements are parsed lazily: fail here, not later
    except Exception as exc:  # messages may quote element values: the type only
        raise images.RejectedImage("corrupt", f"unreadable DICOM ({type(exc).__name__})") from None
    return ds


def _check_deflated(data: bytes, budget: int) -> None:
    """Refuse a deflated dataset that would inflate past `budget` bytes, counted in chunks of
    `INFLATE_CHUNK` (pydicom inflates the whole dataset at once: a 1 MB file of zeros asked it
    for 1 GB). Other syntaxes pass untouched."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(data)
    try:
        with _quiet():
            read_preamble(stream, False)
            syntax = str(_read_file_meta_info(stream).get("TransferSyntaxUID", "") or "")
    except Exception:  # a broken file meta group: pydicom's own read says so next
        return
    if syntax in DEFLATED_REFERENCED:
        raise images.RejectedImage(
            "unsupported_mode", "a JPIP referenced transfer syntax (no pixel data in the file)"
        )
    if syntax != DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, inflated = data[stream.tell() :], 0
    try:
        while pending and not inflater.eof:
            inflated += len(inflater.decompress(pending, INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
            if inflated > budget:
                raise images.RejectedImage(
                    "too_large",
                    f"deflated DICOM inflates to over {budget} bytes, this reader's limit",
                )
    except zlib.error:
        raise images.RejectedImage(
            "corrupt", "deflated DICOM whose data does not inflate"
        ) from None


def _number(ds: Any, keyword: str, default: int | None = None) -> int:
    """A header element as a whole number; `bad_header` naming the element (never its value)
    when it is empty, not a number or not positive."""
    value = ds.get(keyword, None)
    if value is None and default is not None:
        return default
    try:
        number = int(value)
    except HEADER_ERRORS:
        raise images.RejectedImage(
            "bad_header", f"DICOM {keyword} is empty or not a whole number"
        ) from None
    if number < 1:
        raise images.RejectedImage("bad_header", f"DICOM {keyword} is not a positive number")
    return number


def _check_declared_size(ds: Any, width: int, height: int, frames: int, budget: int) -> None:
    """Rows x Columns x frames x samples x bytes against the pixel data the file can hold,
    before a pixel is read: an uncompressed file must carry them all, within the byte budget;
    a compressed one at least a byte per frame."""
    samples = _number(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise images.RejectedImage("bad_header", "DICOM SamplesPerPixel is neither 1 nor 3")
    declared = width * height * frames * samples * (_number(ds, "BitsAllocated") // 8)
    stored = len(ds.PixelData or b"")
    native = not ds.file_meta.TransferSyntaxUID.is_compressed
    if (native and declared > budget) or frames > max(stored, 1):
        raise images.RejectedImage(
            "too_large",
            f"DICOM declares {frames} frame(s) of {width}x{height} ({declared} bytes), "
            f"over this reader's limit of {budget} bytes or the pixel data in the file",
        )


def _check_header(ds: Any, max_pixels: int, max_pixels_name: str) -> tuple[str, int, int]:
    """(photometric interpretation, width, height), after the checks that need no pixel
    decoded."""
    modality = str(ds.get("Modality", "") or "").strip()
    if modality != "US":
        shown = (
            f"Modality {modality}" if modality.isalnum() and len(modality) <= 4 else "no Modality"
        )
        raise images.RejectedImage(
            "not_ultrasound", f"DICOM with {shown}: only ultrasound (Modality US) is accepted"
        )
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        raise images.RejectedImage("no_pixel_data", "DICOM without an image (no Pixel Data)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in COLOUR + GREY:
        raise images.RejectedImage(
            "unsupported_mode",
            f"photometric interpretation {photometric[:20]!r}; "
            f"accepted: {', '.join(GREY + COLOUR)}",
        )
    bits = _number(ds, "BitsAllocated")
    if (photometric in COLOUR and bits != 8) or bits not in (8, 16):
        raise images.RejectedImage(
            "unsupported_mode", f"{bits} bits allocated for {photometric} (8, or 16 for grey)"
        )
    width, height = _number(ds, "Columns"), _number(ds, "Rows")
    if width * height > max_pixels:
        raise images.RejectedImage(
            "too_large", f"{width}x{height} pixels is over {max_pixels_name}={max_pixels}"
        )
    return photometric, width, height


def _frame(count: int, policy: FramePolicy, name: str) -> int | None:
    """The index of the frame to decode (None for a single-frame file)."""
    if count == 1:
        return None
    if policy == "refuse":
        either = f", or set {name} to first or middle" if name else ""
        raise images.RejectedImage(
            "multi_frame", f"{count} frames (a cine loop, not one image): send one frame{either}"
        )
    return 0 if policy == "first" else count // 2


def _region(ds: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The crop box (left, top, right, bottom; exclusive) of the largest 2-D region, tissue
    regions first; None when the file has no region. A region outside the frame is a broken file."""
    regions = list(ds.get("SequenceOfUltrasoundRegions", []) or [])
    boxes = []
    for item in regions:
        if int(item.get("RegionSpatialFormat", 0) or 0) != TISSUE_2D:
            continue
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            raise images.RejectedImage(
                "bad_region", "an ultrasound region without its corners"
            ) from None
        if not (0 <= x0 < x1 < width and 0 <= y0 < y1 < height):
            raise images.RejectedImage(
                "bad_region", f"ultrasound region ({x0},{y0})-({x1},{y1}) is outside the frame"
            )
        tissue = int(item.get("RegionDataType", 0) or 0) == TISSUE_2D
        boxes.append((tissue, (x1 - x0 + 1) * (y1 - y0 + 1), (x0, y0, x1 + 1, y1 + 1)))
    return max(boxes)[2] if boxes else None


def _pixels(ds: Any, index: int | None, count: int) -> np.ndarray:
    """One frame's pixels, YCbCr already converted to RGB (pydicom's default, `raw=False`)."""
    from pydicom.pixels import pixel_array

    try:
        with _quiet():
            array = pixel_array(ds, index=index)
    except Exception as exc:  # no decoder for the transfer syntax, truncated data, ...
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        kind = "truncated" if "length" in message.lower() else "corrupt"
        raise images.RejectedImage(kind, f"DICOM pixels: {type(exc).__name__}: {message}") from None
    if index is None and count > 1:  # NumberOfFrames was 1 in effect
        array = array[0]
    return array


def _to_image(array: np.ndarray, ds: Any, photometric: str, grey_ok: bool) -> Image.Image:
    if photometric in COLOUR:
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "RGB")
    grey = _grey_to_8_bits(array, ds)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that tissue looks as in MONOCHROME2
        grey = 255 - grey
    image = Image.fromarray(np.ascontiguousarray(grey), "L")
    return image if grey_ok else image.convert("RGB")


def _grey_to_8_bits(array: np.ndarray, ds: Any) -> np.ndarray:
    """Grey samples -> uint8: 8-bit as stored; more bits through the file's VOI LUT or window if
    it has one, then the output range scaled linearly to 0-255 (the same for every image)."""
    bits = _number(ds, "BitsStored", _number(ds, "BitsAllocated"))
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if bits <= 8 and not signed:
        return array.astype(np.uint8)
    values = array.astype(np.float32)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values, lut_bits = _voi(array, ds)
        if lut_bits is not None:
            low, high = 0, 2**lut_bits - 1
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _voi(array: np.ndarray, ds: Any) -> tuple[np.ndarray, int | None]:
    """The file's VOI LUT (its first) or window applied, and the LUT's output bits (None for a
    window); a `bad_header` refusal for an empty LUT sequence or a window no wider than 0."""
    from pydicom.pixels import apply_voi_lut

    lut_bits = None
    if "VOILUTSequence" in ds:
        luts = ds.VOILUTSequence or []
        if not luts or "LUTDescriptor" not in luts[0] or "LUTData" not in luts[0]:
            raise images.RejectedImage("bad_header", "DICOM VOI LUT Sequence without a LUT")
        lut_bits = int(luts[0].LUTDescriptor[2])
    else:
        from pydicom.multival import MultiValue

        width = ds.get("WindowWidth")
        first = width[0] if isinstance(width, MultiValue) and len(width) else width
        if first is None or float(first) <= 0:
            raise images.RejectedImage("bad_header", "DICOM WindowWidth is missing or not above 0")
    try:
        return apply_voi_lut(array, ds).astype(np.float32), lut_bits
    except HEADER_ERRORS:
        raise images.RejectedImage(
            "bad_header", "DICOM VOI LUT or window cannot be applied"
        ) from None
