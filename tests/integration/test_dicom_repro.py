"""A hospital's DICOM export through `dvc repro`, for real: patient-level splits, external
validation on another site's export that leaves out a development patient's new scan (and, once
planted, an exact copy and a 20% crop of development scans, re-running only that stage), and no
patient data anywhere in what the pipeline writes.

Every identifying element a scanner fills (names, ids, dates, accession, institution, free-text
descriptions, UIDs) carries a marker string; after the whole pipeline has run (prepare, augment,
the training, evaluate, select with its registered model, external validation), no file outside
the raw exports (the hospital's and the clinic's) holds any marker: not data/prepared, not
reports, not the MLflow store or its artifacts, not the DVC cache, not the stage logs.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import dicom, synthetic
from tests.dicoms import MARKERS, UID_ROOT, write_dicom
from tests.factories import label_image, left_out_pairs
from tests.repos import GIT, sh, tiny_repo

pytestmark = pytest.mark.slow

CLASSES = ("benign", "malignant", "normal")
# no sample or Grad-CAM grids, the fewest OOD images params allow: figures are test_dvc_repro's
FAST = {"evaluate": {"samples_per_class": 0, "gradcam_per_class": 0, "ood_images": 4}}
PATIENTS_PER_CLASS = 8
IMAGES_PER_PATIENT = 3
STYLES = (("MONOCHROME2", "explicit"), ("YBR_FULL_422", "jpeg"), ("RGB", "rle"))
# Every marker, the test UIDs' root and the patient ids' stem: none may leave data/raw.
SEARCHED = sorted({*MARKERS.values(), UID_ROOT.rstrip("."), MARKERS["PatientID"]})


def hospital_export(raw: Path) -> None:
    """Class folders of extensionless DICOM files, three per patient, mixed encodings; plus a CT
    file and a cine loop that prepare must reject."""
    rng = np.random.default_rng(0)
    for c, label in enumerate(CLASSES):
        for p in range(PATIENTS_PER_CLASS):
            patient = f"{c}{p:02d}"
            for k in range(IMAGES_PER_PATIENT):
                photometric, syntax = STYLES[(p + k) % 3]
                image = label_image(c, 48, rng)
                write_dicom(
                    raw / label / f"IM{patient}{k}",
                    image,
                    photometric=photometric,
                    syntax=syntax,
                    patient=patient,
                )
    write_dicom(raw / "benign" / "CT0001", label_image(0, 48, rng), modality="CT")
    write_dicom(raw / "normal" / "LOOP0001", label_image(2, 48, rng), frames=3)


CLINIC = Path("data/external/clinic")  # raw input like data/raw: never searched for markers


def clinic_export(folder: Path) -> None:
    """Another site's DICOM export: new patients, and one new scan of a development patient.
    Scans drawn by pipeline.synthetic, not label_image: label_image's scans of one class differ
    only in noise, so their perceptual hashes match (they would be near copies, rightly)."""
    for c, label in enumerate(CLASSES):
        for p in range(3):
            scan, _ = synthetic.render_case(label, synthetic.case_rng(5, label, p, site=2), 64)
            write_dicom(folder / label / f"EX{c}{p}", scan, patient=f"9{c}{p}")
    scan, _ = synthetic.render_case("benign", synthetic.case_rng(5, "benign", 9, site=2), 64)
    write_dicom(folder / "benign" / "EXSAME", scan, patient="000")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    hospital = {
        "data": {
            "raw_dir": "data/raw/hospital",
            "id_salt": "site-secret-1",
            "external": [{"name": "clinic", "path": "data/external/clinic", "group_column": None}],
        }
    }
    repo, env = tiny_repo(tmp_path_factory.mktemp("dicom-repo"), hospital | FAST)
    # one backbone: what is under test is the DICOM path and what leaves data/raw, not the
    # comparison of backbones (test_dvc_repro's); ResNet50 alone halves the repro's CPU time
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["backbones"] = {"resnet50": params["train"]["backbones"]["resnet50"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(*GIT, "commit", "-qam", "one backbone", cwd=repo, env=env)
    hospital_export(repo / "data" / "raw" / "hospital")  # data/raw is never committed
    clinic_export(repo / CLINIC)
    log = sh("dvc", "repro", cwd=repo, env=env)  # through external validation
    return repo, env, log


def test_a_dicom_folder_runs_through_dvc_repro_with_patient_level_splits(repo):
    path, _, _ = repo
    summary = json.loads((path / "reports/data/summary.json").read_text())
    assert summary["grouping"]["split_level"] == "patient"
    assert summary["total"] == len(CLASSES) * PATIENTS_PER_CLASS * IMAGES_PER_PATIENT
    assert summary["rejects"]["by_reason"] == {"multi_frame": 1, "not_ultrasound": 1}
    with (path / "data/prepared/manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    split_of: dict[str, set] = {}
    for row in rows:
        split_of.setdefault(Path(row["source"]).name[2:5], set()).add(row["split"])
    assert len(split_of) == len(CLASSES) * PATIENTS_PER_CLASS
    assert all(len(splits) == 1 for splits in split_of.values())  # a patient on one side only
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert "Split: patient-level" in (path / "reports/model_card.md").read_text()
    assert (path / "models/selected/model.keras").is_file()


def test_a_new_scan_of_a_development_patient_at_another_site_is_left_out(repo):
    path, _, _ = repo
    pairs = left_out_pairs(path, "clinic")
    assert pairs["benign/EXSAME"]["how"] == "same patient"
    assert pairs["benign/EXSAME"]["development_source"].startswith("benign/IM000")
    summary = json.loads((path / "reports/external/summary.json").read_text())
    (site,) = summary["sites"]
    assert site["counts"]["kept"] == len(CLASSES) * 3, pairs  # the new patients, all scored


def test_copies_planted_in_the_clinic_export_rerun_only_external_and_are_left_out(repo):
    """Issue 29's done-when on one external site: an exact copy of a development file and a 20%
    crop of a development scan (a new patient id: only the pixels tell) join the clinic's export;
    only `external` is out of date and runs, and exactly the three repeats are left out."""
    path, env, _ = repo
    raw, clinic = path / "data/raw/hospital", path / CLINIC
    shutil.copy(raw / "malignant" / "IM1010", clinic / "malignant" / "EXCOPY")
    data = (raw / "normal" / "IM2012").read_bytes()  # uncompressed: the crop keeps its pixels
    scan = dicom.decode(data, max_pixels=10**6, min_side=8).decoded.image
    w, h = scan.size
    crop = scan.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    write_dicom(clinic / "normal" / "EXCROP", np.asarray(crop.convert("RGB")), patient="930")
    assert set(json.loads(sh("dvc", "status", "--json", cwd=path, env=env))) == {"external"}
    log = sh("dvc", "repro", cwd=path, env=env)
    assert re.findall(r"Running stage '([^']+)'", log) == ["external"]
    assert not [m for m in SEARCHED if m in log], "the external stage's log quotes an identifier"
    pairs = left_out_pairs(path, "clinic")
    assert {source: row["how"] for source, row in pairs.items()} == {
        "benign/EXSAME": "same patient",
        "malignant/EXCOPY": "exact",
        "normal/EXCROP": "crop/shift",
    }
    assert pairs["malignant/EXCOPY"]["development_source"] == "malignant/IM1010"
    assert pairs["normal/EXCROP"]["development_source"] == "normal/IM2012"
    summary = json.loads((path / "reports/external/summary.json").read_text())
    (site,) = summary["sites"]
    assert site["counts"]["kept"] == len(CLASSES) * 3  # nothing else left out


def test_no_marker_of_any_identifying_element_is_in_any_output_or_log(repo):
    """Every file the pipeline wrote (outputs, DVC cache, MLflow store and artifacts, the
    registered model), i.e. all but the raw export and the project's own checked-in files."""
    path, env, log = repo
    raw = path / "data" / "raw"
    source = set(sh("git", "ls-files", cwd=path, env=env).split())
    searched = 0
    for file in path.rglob("*"):
        inputs = (raw, path / CLINIC, path / ".git")
        skip = any(file.is_relative_to(folder) for folder in inputs)
        if skip or file.is_symlink() or not file.is_file():
            continue
        if file.relative_to(path).as_posix() in source and file.suffix in (".py", ".md"):
            continue  # the tests' own marker table (tests/dicoms.py) and docs
        data = file.read_bytes()
        searched += 1
        found = [m for m in SEARCHED if m.encode() in data]
        assert not found, f"{file.relative_to(path)} holds {found}"
    assert searched > 50
    assert (path / "mlflow.db").is_file()
    assert not [m for m in SEARCHED if m in log], "the stage logs quote an identifying value"
