"""DICOM ultrasound files, built by pydicom from synthetic scans, read by pipeline.dicom and by
the prepare stage: every photometric interpretation and syntax gives the region's pixels, only
ultrasound is accepted, and a patient's images are split together."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import dicom, prepare
from pipeline.images import RejectedImage
from tests.dicoms import MARKERS, UID_ROOT, make_dicom, ultrasound, write_dicom
from tests.factories import project_params

LIMITS = {"max_pixels": 10**8, "min_side": 16}


@pytest.fixture
def region() -> np.ndarray:
    """An ultrasound region with colour in it (a Doppler-like patch), even width for 4:2:2."""
    array = ultrasound("malignant", 96, 72)
    array[10:30, 20:44] = (200, 40, 30)  # red
    array[40:60, 50:70] = (30, 60, 210)  # blue
    return array


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


@pytest.mark.parametrize(
    ("photometric", "syntax", "tolerance"),
    [
        ("MONOCHROME2", "explicit", 0),
        ("MONOCHROME1", "explicit", 0),
        ("RGB", "explicit", 0),
        ("YBR_FULL", "explicit", 2),  # YCbCr rounding, both ways
        ("YBR_FULL_422", "explicit", 40),  # chroma averaged over pixel pairs at colour edges
        ("MONOCHROME2", "rle", 0),
        ("RGB", "rle", 0),
        ("YBR_FULL_422", "jpeg", 60),  # lossy, chroma subsampled
        ("MONOCHROME2", "jpeg", 12),
    ],
)
def test_every_photometric_and_syntax_gives_the_region_pixels(
    region, photometric, syntax, tolerance
):
    scan = dicom.decode(make_dicom(region, photometric=photometric, syntax=syntax), **LIMITS)
    got = np.asarray(scan.decoded.image).astype(int)
    want = region if not photometric.startswith("MONO") else _grey(region)[..., None]
    assert got.shape == (72, 96, 3)
    assert scan.region is not None
    assert np.abs(got - want).max() <= tolerance
    assert np.abs(got - want).mean() <= max(1.5, tolerance / 8)  # right colours, not just close
    if photometric.startswith("YBR"):  # red stays red: the YCbCr -> RGB conversion happened
        assert got[20, 30, 0] > 150
        assert got[20, 30, 2] < 90


def test_without_regions_or_with_the_crop_off_the_whole_frame_is_kept(region):
    whole = dicom.decode(make_dicom(region, region=False), **LIMITS)
    assert whole.region is None
    assert whole.decoded.image.size == (96, 72)
    framed = make_dicom(region)
    uncropped = dicom.decode(framed, crop=False, **LIMITS)
    assert uncropped.decoded.image.size == (96 + 32, 72 + 32)
    assert uncropped.region is None


def test_multi_frame_is_refused_unless_a_frame_policy_picks_one(region):
    data = make_dicom(region, frames=3)
    with pytest.raises(RejectedImage, match="multi_frame: 3 frames.*prepare.dicom_frames"):
        dicom.decode(data, **LIMITS)
    for policy in ("first", "middle"):
        scan = dicom.decode(data, frames=policy, **LIMITS)
        assert scan.frames == 3
        assert scan.decoded.image.size == (96, 72)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (lambda r: make_dicom(r, modality="CT"), "not_ultrasound"),
        (lambda r: make_dicom(r)[:2000], "corrupt|truncated"),
        (lambda r: b"\0" * 128 + b"DICM" + b"\0" * 64, "corrupt|not_ultrasound: DICOM with no"),
        (lambda r: b"\0" * 200, "not_an_image"),
    ],
)
def test_what_is_not_a_readable_ultrasound_image_is_rejected_with_a_reason(region, data, kind):
    with pytest.raises(RejectedImage, match=kind) as rejected:
        dicom.decode(data(region), **LIMITS)
    assert not any(marker in str(rejected.value) for marker in MARKERS.values())


def test_a_file_without_pixels_is_rejected(region):
    import pydicom

    ds = pydicom.dcmread(__import__("io").BytesIO(make_dicom(region)))
    del ds.PixelData
    buffer = __import__("io").BytesIO()
    ds.save_as(buffer)
    with pytest.raises(RejectedImage, match="no_pixel_data"):
        dicom.decode(buffer.getvalue(), **LIMITS)


def test_twelve_bit_grey_is_scaled_by_its_stored_range(region):
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(make_dicom(region, region=False)))
    twelve = (_grey(region).astype(np.int32) * 4095 // 255).astype(np.uint16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = twelve.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    got = np.asarray(dicom.decode(buffer.getvalue(), grey_ok=True, **LIMITS).decoded.image)
    assert np.abs(got.astype(int) - _grey(region)).max() <= 1


def test_the_size_limits_name_their_settings(region):
    with pytest.raises(RejectedImage, match="too_large.*prepare.max_pixels=100"):
        dicom.decode(make_dicom(region), max_pixels=100, min_side=16)
    with pytest.raises(RejectedImage, match="too_small: 96x72.*min side=80"):
        dicom.decode(make_dicom(region), max_pixels=10**8, min_side=80)  # the region's side


def test_identity_is_read_from_the_header(tmp_path, region):
    path = write_dicom(tmp_path / "a.dcm", region, patient="7", study="3")
    identity = dicom.read_identity(path)
    assert identity.patient == MARKERS["PatientID"] + "7"
    assert identity.study == f"{UID_ROOT}7.3"
    assert identity.instance.startswith(UID_ROOT)
    (tmp_path / "b.png").write_bytes(b"\x89PNG")
    assert dicom.read_identity(tmp_path / "b.png") is None


# --- the prepare stage on DICOM folders -----------------------------------------------------------


def dicom_folder(root: Path, *, patients: int = 6, per_patient: int = 2) -> Path:
    """Class folders of DICOM files (no suffix on some, as PACS exports), two images per patient,
    each a different scan, mixed syntaxes and photometrics."""
    styles = [("MONOCHROME2", "explicit"), ("YBR_FULL_422", "jpeg"), ("RGB", "rle")]
    for p in range(patients):
        label = ("benign", "malignant", "normal")[p % 3]
        for k in range(per_patient):
            rgb = ultrasound(label, 64 + 8 * k, 56, n=p * per_patient + k)
            photometric, syntax = styles[(p + k) % 3]
            name = f"IM{p:02d}{k}" + (".dcm" if k == 0 else "")
            write_dicom(
                root / label / name, rgb, photometric=photometric, syntax=syntax, patient=str(p)
            )
    return root


def test_a_dicom_folder_prepares_with_patient_level_splits(tmp_path, monkeypatch):
    raw = dicom_folder(tmp_path / "raw")
    write_dicom(
        tmp_path / "raw" / "benign" / "ct.dcm", np.zeros((40, 40, 3), np.uint8), modality="CT"
    )
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    Path("data/exclude.csv").write_text("path,reason\n")
    params = project_params({"data": {"raw_dir": str(raw)}, "prepare": {"image_size": 32}})
    summary = prepare.run(params)
    with open("data/prepared/manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["total"] == 12
    assert summary["grouping"]["split_level"] == "patient"
    patient_of = {r["source"]: r["source"].split("/")[1][2:4] for r in rows}
    for p in set(patient_of.values()):
        mine = [r for r in rows if patient_of[r["source"]] == p]
        assert len({(r["split"], r["group"]) for r in mine}) == 1
    assert summary["converted"] == {"DICOM MONOCHROME2": 4, "DICOM RGB": 4, "DICOM YBR_FULL_422": 4}
    with open("reports/data/rejects.csv", newline="") as handle:
        rejects = {r["source"]: r["reason"] for r in csv.DictReader(handle)}
    assert rejects["benign/ct.dcm"].startswith("not_ultrasound")
    assert summary["rejects"]["by_reason"] == {"not_ultrasound": 1}
    assert json.loads(Path("reports/data/summary.json").read_text())["grouping"]["id_groups"] == 6
