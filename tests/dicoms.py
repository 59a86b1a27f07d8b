"""DICOM files built by the tests with pydicom, from any RGB array (`ultrasound` draws one).

`make_dicom` writes an ultrasound file the way scanners export them: a frame with a burnt-in
banner around the B-mode image, the Sequence of Ultrasound Regions saying where that image is,
and every identifying element filled with a marker string (`MARKERS`), so a test can search the
outputs for any of them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from pipeline import synthetic

UID_ROOT = "1.2.826.0.1.3680043.10.999."  # test UIDs: searched for like the markers below
BANNER = 24  # rows of burnt-in "text" above the B-mode region, columns of a ruler to its left
# Identifying elements (PS3.15 Basic Profile, the ones an ultrasound export carries) -> marker.
MARKERS = {
    "PatientName": "PHIMARKER^NAME",
    "PatientID": "PHIMARKERPID",  # replaced per patient by make_dicom (suffix)
    "OtherPatientIDs": "PHIMARKEROTHERID",
    "PatientBirthDate": "19230417",
    "PatientAddress": "PHIMARKER ADDRESS",
    "PatientComments": "PHIMARKER PATIENT COMMENT",
    "AccessionNumber": "PHIMARKERACC",
    "StudyID": "PHIMARKSTID",
    "StudyDate": "19230418",
    "SeriesDate": "19230419",
    "ContentDate": "19230420",
    "AcquisitionDate": "19230421",
    "StudyTime": "112233.445566",
    "InstitutionName": "PHIMARKER HOSPITAL",
    "InstitutionAddress": "PHIMARKER STREET",
    "ReferringPhysicianName": "PHIMARKER^REFERRER",
    "PerformingPhysicianName": "PHIMARKER^PERFORMER",
    "OperatorsName": "PHIMARKER^OPERATOR",
    "StationName": "PHIMARKSTN",
    "DeviceSerialNumber": "PHIMARKERSERIAL",
    "StudyDescription": "PHIMARKER STUDY DESCRIPTION",
    "SeriesDescription": "PHIMARKER SERIES DESCRIPTION",
    "ImageComments": "PHIMARKER IMAGE COMMENT",
}


def ultrasound(label: str, width: int, height: int, n: int = 0) -> np.ndarray:
    """An ultrasound-like RGB scan of `label` (pipeline.synthetic's speckle, lesion and
    attenuation) at width x height: what the codec tests encode, so they need no real data."""
    side = max(width, height)
    grey = synthetic.render_case(label, synthetic.case_rng(11, label, n), side)[0]
    return np.array(Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR))


def framed(region: np.ndarray) -> np.ndarray:
    """The B-mode `region` inside a larger frame: a bright banner above, a ruler to the left."""
    height, width = region.shape[:2]
    frame = np.zeros((height + BANNER + 8, width + BANNER + 8, 3), dtype=np.uint8)
    frame[4:BANNER, 4:-4] = 255  # the "patient name and date" strip
    frame[BANNER:-8, 4 : BANNER - 4 : 3] = 200  # the "ruler"
    frame[BANNER : BANNER + height, BANNER : BANNER + width] = region
    return frame


def make_dicom(
    rgb: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    syntax: str = "explicit",
    region: bool = True,
    frames: int = 1,
    modality: str = "US",
    patient: str = "1",
    study: str | None = None,
) -> bytes:
    """A DICOM file of the RGB array `rgb` (the B-mode image; framed when `region`).

    photometric: MONOCHROME1 / MONOCHROME2 (the grey of `rgb`), RGB, YBR_FULL, YBR_FULL_422.
    syntax: `explicit` (uncompressed), `rle` (RLE Lossless) or `jpeg` (JPEG baseline, 4:2:2
    chroma for YBR_FULL_422, which is how ultrasound scanners export). patient/study: suffixes of
    the PatientID and StudyInstanceUID markers, so files can belong to one patient (one study
    per patient unless `study` says otherwise).
    """
    frame = framed(rgb) if region else rgb
    ds = _dataset(frame.shape, modality, frames, patient, study or patient)
    if region:
        h, w = rgb.shape[:2]
        ds.SequenceOfUltrasoundRegions = Sequence([_region(BANNER, BANNER, w, h)])
    pixels = _samples(frame, photometric)
    _set_pixels(ds, pixels, photometric, syntax, frames)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom(path: str | Path, rgb: np.ndarray, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_dicom(rgb, **kwargs))
    return path


def _dataset(shape: tuple, modality: str, frames: int, patient: str, study: str) -> Dataset:
    multi = frames > 1
    sop_class = UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(prefix=UID_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = f"{UID_ROOT}7.{int(study)}"  # no leading zeros in a UID component
    ds.SeriesInstanceUID = f"{UID_ROOT}8.{int(study)}"
    ds.Modality = modality
    for keyword, value in MARKERS.items():
        setattr(ds, keyword, value)
    ds.PatientID = f"{MARKERS['PatientID']}{patient}"
    ds.Rows, ds.Columns = shape[:2]
    return ds


def _region(x0: int, y0: int, width: int, height: int) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x0 + width - 1, y0 + height - 1
    return item


def _samples(frame: np.ndarray, photometric: str) -> np.ndarray:
    """What the file stores for `frame` in `photometric` (YCbCr computed by Pillow, as JPEG)."""
    if photometric.startswith("MONOCHROME"):
        grey = np.asarray(Image.fromarray(frame).convert("L"))
        return 255 - grey if photometric == "MONOCHROME1" else grey
    if photometric.startswith("YBR"):
        return np.asarray(Image.fromarray(frame).convert("YCbCr"))
    return frame


def _set_pixels(ds: Dataset, pixels: np.ndarray, photometric: str, syntax: str, n: int) -> None:
    grey = pixels.ndim == 2
    ds.SamplesPerPixel = 1 if grey else 3
    ds.PhotometricInterpretation = photometric
    if not grey:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if n > 1:
        ds.NumberOfFrames = n
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 40.0
    stack = np.stack([pixels] * n) if n > 1 else pixels
    if syntax == "jpeg":
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate(
            [_jpeg(frame, photometric) for frame in stack.reshape(n, *pixels.shape)]
        )
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        return
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if photometric == "YBR_FULL_422":  # native 4:2:2: Y0 Y1 Cb Cr per pair of pixels
        ds.PixelData = _subsample_422(stack.reshape(n, *pixels.shape))
    else:
        ds.PixelData = np.ascontiguousarray(stack).tobytes()
    if syntax == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)


def _jpeg(samples: np.ndarray, photometric: str) -> bytes:
    """JPEG baseline of one frame: grey as is; colour from its RGB, 4:2:2 for YBR_FULL_422."""
    buffer = io.BytesIO()
    if samples.ndim == 2:
        Image.fromarray(samples, "L").save(buffer, "JPEG", quality=95)
    else:
        rgb = Image.fromarray(samples, "YCbCr").convert("RGB")
        subsampling = 1 if photometric == "YBR_FULL_422" else 0  # Pillow: 1 = 4:2:2, 0 = 4:4:4
        rgb.save(buffer, "JPEG", quality=95, subsampling=subsampling)
    return buffer.getvalue()


def _subsample_422(frames: np.ndarray) -> bytes:
    """Native YBR_FULL_422 (PS3.3 C.7.6.3.1.2): per 2 pixels Y Y Cb Cr, the chroma averaged."""
    n, h, w, _ = frames.shape
    assert w % 2 == 0, "YBR_FULL_422 needs an even width"
    pairs = frames.reshape(n, h, w // 2, 2, 3).astype(np.uint16)
    out = np.empty((n, h, w // 2, 4), dtype=np.uint8)
    out[..., 0] = pairs[..., 0, 0]
    out[..., 1] = pairs[..., 1, 0]
    out[..., 2] = (pairs[..., 0, 1] + pairs[..., 1, 1] + 1) // 2
    out[..., 3] = (pairs[..., 0, 2] + pairs[..., 1, 2] + 1) // 2
    return out.tobytes()


def _rewritten(data: bytes, change) -> bytes:
    """`data` read by pydicom, changed by `change(ds)`, written again as it is."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _sixteen_bit(ds: Dataset) -> None:
    """16-bit grey pixels (the VOI LUT and window apply to more than 8 bits only)."""
    grey = np.frombuffer(ds.PixelData, np.uint8).astype(np.uint16) * 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = grey.tobytes()


def _empty_columns(ds: Dataset) -> None:
    ds.Columns = None


def _frames_abc(ds: Dataset) -> None:
    ds.add_new("NumberOfFrames", "IS", None)
    ds["NumberOfFrames"]._value = "abc"  # as a broken exporter writes it: no validation on write


def _empty_voi_lut(ds: Dataset) -> None:
    _sixteen_bit(ds)
    ds.VOILUTSequence = Sequence([])


def _window_width_zero(ds: Dataset) -> None:
    _sixteen_bit(ds)
    ds.WindowCenter, ds.WindowWidth = 2048, 0


MALFORMED = {
    "empty Columns": _empty_columns,
    "NumberOfFrames abc": _frames_abc,
    "empty VOI LUT Sequence": _empty_voi_lut,
    "WindowWidth 0 on 16-bit grey": _window_width_zero,
}


def malformed_dicoms(rgb: np.ndarray) -> dict[str, bytes]:
    """The four malformed headers probing found (issue 30), each in a grey scan of `rgb` that is
    otherwise valid; every identifying marker is in each file."""
    base = make_dicom(rgb, region=False)
    return {name: _rewritten(base, change) for name, change in MALFORMED.items()}


def deflate_bomb(rgb: np.ndarray, inflated: int = 1 << 30) -> bytes:
    """A valid grey scan of `rgb` in Deflated Explicit VR Little Endian with a private element of
    `inflated` zero bytes after its pixels: about 1 MB on disk for the default 1 GB (issue 30)."""
    import zlib

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    plain = make_dicom(rgb, region=False)
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer)
    deflated = buffer.getvalue()
    meta_end = 132 + 12 + int.from_bytes(deflated[140:144], "little")  # (0002,0000) group length
    plain_start = 132 + 12 + int.from_bytes(plain[140:144], "little")
    # Deflate blocks after a full flush refer to nothing before them, so one compressed chunk of
    # zeros repeated is a valid stream: the 1 GB bomb is built in a fraction of a second.
    private = b"\x09\x00\x10\x10OB\x00\x00" + inflated.to_bytes(4, "little")  # (0009,1010) OB
    chunk = 1 << 24

    def blocks(raw: bytes) -> bytes:
        zipper = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return zipper.compress(raw) + zipper.flush(zlib.Z_FULL_FLUSH)

    whole, rest = divmod(inflated, chunk)
    zeros = blocks(bytes(chunk)) * whole + blocks(bytes(rest))
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # an empty last block
    return deflated[:meta_end] + blocks(plain[plain_start:] + private) + zeros + final
