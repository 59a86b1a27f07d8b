"""The prepare stage end to end on tiny BUSI-like folders built in tmp_path (pipeline/prepare)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import prepare
from pipeline.errors import UserError
from pipeline.layouts import is_mask
from tests.dicoms import MARKERS, deflate_bomb, malformed_dicoms
from tests.factories import project_params, raw_params

CLASSES = ("benign", "malignant", "normal")
COLUMNS = [
    *("path", "label", "split", "group", "sha256", "phash"),
    *("source", "masks", "mask_area", "width", "height"),
]  # spelled out, not imported: this is the contract other stages read
PER_CLASS = 12
BUSI = "Dataset_BUSI_with_GT"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run the stage from a fresh project root (outputs are relative to the working directory),
    with the empty exclusion list every checkout has."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "exclude.csv").write_text("path,reason\n")
    return tmp_path


@pytest.fixture
def raw(tmp_path, write_png, synthetic_image) -> Path:
    """A miniature BUSI download with the real download's traps.

    12 images per class, each with a `_mask`; `benign (1)` also has `_mask_1` and `_mask_2`;
    a corrupt file; `malignant (50)` a byte-identical copy of `benign (2)`; `normal (40).jpg` a
    resized, re-encoded copy of `normal (3)`.
    """
    base = tmp_path / "raw" / BUSI
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 255
    seed = 0
    for label in CLASSES:
        for n in range(1, PER_CLASS + 1):
            seed += 1
            write_png(base / label / f"{label} ({n}).png", synthetic_image(seed, label, (48, 40)))
            write_png(base / label / f"{label} ({n})_mask.png", mask)
    write_png(base / "benign" / "benign (1)_mask_1.png", mask)
    write_png(base / "benign" / "benign (1)_mask_2.png", mask)
    good = (base / "malignant" / "malignant (1).png").read_bytes()
    (base / "malignant" / "malignant (99).png").write_bytes(good[: len(good) // 2])
    shutil.copyfile(base / "benign" / "benign (2).png", base / "malignant" / "malignant (50).png")
    original = Image.open(base / "normal" / "normal (3).png")
    original.resize((42, 35), Image.Resampling.BILINEAR).save(
        base / "normal" / "normal (40).jpg", quality=85
    )
    return tmp_path / "raw"


def _params(raw_dir, classes=CLASSES, **prepare_params):
    prepare_params = {"image_size": 32} | prepare_params
    return project_params(
        {"classes": list(classes), "data": {"raw_dir": str(raw_dir)}, "prepare": prepare_params}
    )


def _manifest(root: Path = Path(".")) -> list[dict]:
    with open(root / "data/prepared/manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _csv_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _outputs(root: Path) -> dict[str, str]:
    """sha256 of every output file, keyed by its path relative to `root`."""
    files = sorted((root / "data").rglob("*")) + sorted((root / "reports").rglob("*"))
    return {
        f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in files
        if f.is_file()
    }


def test_masks_never_enter_the_image_set(workdir, raw):
    prepare.run(_params(raw))
    rows = _manifest()
    assert not any(is_mask(r["source"]) for r in rows)
    masks = {r["source"]: r["masks"].split(";") for r in rows}
    assert masks[f"{BUSI}/benign/benign (1).png"] == [
        f"{BUSI}/benign/benign (1)_mask.png",
        f"{BUSI}/benign/benign (1)_mask_1.png",
        f"{BUSI}/benign/benign (1)_mask_2.png",
    ]
    assert masks[f"{BUSI}/normal/normal (5).png"] == [f"{BUSI}/normal/normal (5)_mask.png"]


def test_every_prepared_image_is_an_8_bit_rgb_square_png(workdir, raw):
    prepare.run(_params(raw, image_size=40))
    rows = _manifest()
    prepared = Path("data/prepared")
    on_disk = sorted(p.relative_to(prepared).as_posix() for p in prepared.rglob("*.png"))
    assert on_disk == sorted(r["path"] for r in rows)
    for row in rows:
        image = Image.open(Path("data/prepared") / row["path"])
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 40))
        assert row["path"].startswith(f"images/{row['label']}/")


def test_manifest_has_the_contract_columns_and_a_stable_order(workdir, raw):
    prepare.run(_params(raw))
    with open("data/prepared/manifest.csv") as handle:
        assert handle.readline().strip() == ",".join(COLUMNS)
    rows = _manifest()
    keys = [(CLASSES.index(r["label"]), r["source"]) for r in rows]
    assert keys == sorted(keys)
    assert len({r["path"] for r in rows}) == len(rows)
    first = rows[0]
    assert first["source"] == f"{BUSI}/benign/benign (1).png"
    assert (first["width"], first["height"]) == ("48", "40")
    assert len(first["sha256"]) == 64
    assert len(first["phash"]) == 16
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_bad_files_are_rejected_with_a_reason_and_convertible_ones_converted(
    workdir, raw, synthetic_image
):
    folder = raw / BUSI / "benign"
    array = synthetic_image(500, "benign", (48, 40))

    def save(name, image, **options):
        image.save(folder / name, **options)

    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image\n")
    save("tiny.png", Image.fromarray(synthetic_image(501, size=(40, 8))))
    save("huge.png", Image.fromarray(synthetic_image(502, size=(70, 70))))
    save("grey.png", Image.fromarray(synthetic_image(503)[:, :, 0], "L"))
    save("deep.png", Image.fromarray(synthetic_image(504)[:, :, 0].astype(np.uint16) * 257))
    save("alpha.png", Image.fromarray(array).convert("RGBA"))
    save("palette.png", Image.fromarray(synthetic_image(505, "benign")).convert("P"))
    save("cmyk.jpg", Image.fromarray(synthetic_image(506, "benign")).convert("CMYK"))

    summary = prepare.run(_params(raw, max_pixels=64 * 64))

    reasons = {
        r["source"].rsplit("/", 1)[1]: r["reason"] for r in _csv_rows("reports/data/rejects.csv")
    }
    assert reasons["zero.png"].startswith("empty")
    assert reasons["text.png"].startswith("not_an_image")
    assert reasons["tiny.png"].startswith("too_small")
    assert reasons["huge.png"].startswith("too_large")
    assert reasons["malignant (99).png"].split(":")[0] in {"truncated", "corrupt"}
    kept = {r["source"].rsplit("/", 1)[1] for r in _manifest()}
    assert {"grey.png", "deep.png", "alpha.png", "palette.png", "cmyk.jpg"} <= kept
    assert summary["converted"] == {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGBA": 1}
    assert summary["rejects"]["total"] == 5
    assert sum(summary["rejects"]["by_reason"].values()) == 5


def test_hostile_files_are_each_a_reject_row_and_any_file_name_is_taken(
    workdir, raw, synthetic_image
):
    """The files probing found (issue 30): the four malformed DICOM headers and a deflate bomb
    are reject rows with a reason that quotes no header value, a named pipe a skipped row (never
    opened: reading it would wait forever), and a file name that is not UTF-8 is prepared with
    its odd byte written as a backslash escape."""
    folder = raw / BUSI / "benign"
    rgb = synthetic_image(600, "benign", (48, 40))
    for n, data in enumerate(malformed_dicoms(rgb).values()):
        (folder / f"malformed{n}.dcm").write_bytes(data)
    (folder / "bomb.dcm").write_bytes(deflate_bomb(rgb, inflated=64 << 20))
    os.mkfifo(folder / "pipe.png")
    Image.fromarray(synthetic_image(601, "benign")).save(os.fsencode(folder) + b"/x-\xff.png")

    prepare.run(_params(raw, max_pixels=10**6))  # a deflated file may inflate to 6 MB

    reasons = {
        r["source"].rsplit("/", 1)[1]: r["reason"] for r in _csv_rows("reports/data/rejects.csv")
    }
    assert all(reasons[f"malformed{n}.dcm"].startswith("bad_header: ") for n in range(4))
    assert reasons["bomb.dcm"].startswith("too_large: deflated DICOM inflates to over")
    assert reasons["pipe.png"].startswith("not_a_file")
    assert not any(m in text for m in MARKERS.values() for text in reasons.values())
    assert "x-\\xff.png" in {r["source"].rsplit("/", 1)[1] for r in _manifest()}


def test_a_byte_identical_cross_class_pair_is_a_conflict_and_dropped_by_default(workdir, raw):
    summary = prepare.run(_params(raw))
    [conflict] = _csv_rows("reports/data/label_conflicts.csv")
    assert (
        conflict["sources"] == f"{BUSI}/benign/benign (2).png;{BUSI}/malignant/malignant (50).png"
    )
    assert conflict["labels"] == "benign;malignant"
    assert conflict["action"].startswith("dropped")
    sources = {r["source"] for r in _manifest()}
    assert f"{BUSI}/benign/benign (2).png" not in sources
    assert f"{BUSI}/malignant/malignant (50).png" not in sources
    assert summary["conflicts"] == {"groups": 1, "images_dropped": 2}


def test_majority_policy_keeps_the_majority_label(workdir, raw):
    benign = raw / BUSI / "benign"
    shutil.copyfile(benign / "benign (2).png", benign / "benign (60).png")
    prepare.run(_params(raw, conflict_policy="majority"))
    [conflict] = _csv_rows("reports/data/label_conflicts.csv")
    assert conflict["action"].startswith("kept 2 benign, dropped 1")
    rows = {r["source"]: r for r in _manifest()}
    assert f"{BUSI}/malignant/malignant (50).png" not in rows
    kept = [rows[f"{BUSI}/benign/benign ({n}).png"] for n in (2, 60)]
    assert kept[0]["group"] == kept[1]["group"]
    assert kept[0]["split"] == kept[1]["split"]


def test_near_duplicates_share_a_group_and_a_split(workdir, raw):
    summary = prepare.run(_params(raw))
    rows = {r["source"]: r for r in _manifest()}
    original, copy = rows[f"{BUSI}/normal/normal (3).png"], rows[f"{BUSI}/normal/normal (40).jpg"]
    assert original["group"] == copy["group"]
    assert original["split"] == copy["split"]
    assert original["sha256"] != copy["sha256"]
    assert summary["duplicates"]["groups"] == 2  # this pair and the cross-class pair


def test_every_duplicate_group_is_in_exactly_one_split(workdir, raw):
    prepare.run(_params(raw))
    splits_of: dict[str, set[str]] = {}
    for row in _manifest():
        splits_of.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())


def test_split_fractions_are_roughly_honoured(workdir, raw):
    summary = prepare.run(_params(raw, val_fraction=0.2, test_fraction=0.2))
    for label in CLASSES:
        counts = summary["classes"][label]
        assert counts["train"] > counts["val"] >= 1
        assert counts["test"] >= 1
        assert abs(counts["val"] - 0.2 * counts["total"]) <= 1.5


def test_summary_counts_match_the_manifest(workdir, raw):
    summary = prepare.run(_params(raw))
    rows = _manifest()
    assert summary == json.loads(Path("reports/data/summary.json").read_text())
    assert summary["total"] == len(rows)
    for label in CLASSES:
        for split in ("train", "val", "test"):
            n = sum(r["label"] == label and r["split"] == split for r in rows)
            assert summary["classes"][label][split] == n
    assert summary["found"]["images"] == 3 * PER_CLASS + 3  # + corrupt, copy, re-encoded copy
    assert summary["masks"]["attached"] == 3 * PER_CLASS + 2 - 1  # benign (2) dropped


def test_output_names_are_unique_even_for_one_file_copied_under_one_name(workdir, raw):
    benign = raw / BUSI / "benign"
    (benign / "again").mkdir()
    shutil.copyfile(benign / "benign (3).png", benign / "again" / "benign (3).png")
    prepare.run(_params(raw))
    rows = {r["source"]: r for r in _manifest()}
    first, second = (
        rows[f"{BUSI}/benign/benign (3).png"],
        rows[f"{BUSI}/benign/again/benign (3).png"],
    )
    assert first["path"] != second["path"]
    assert first["path"].startswith("images/benign/benign-3-")
    assert (first["group"], first["split"]) == (second["group"], second["split"])


def test_a_contact_sheet_is_written_for_a_human(workdir, raw):
    prepare.run(_params(raw))
    sheet = Image.open("reports/data/contact_sheet.png")
    assert sheet.mode == "RGB"
    assert sheet.height >= 9 * 32


def test_a_rerun_gives_byte_identical_outputs(workdir, raw):
    prepare.run(_params(raw))
    first = _outputs(workdir)
    prepare.run(_params(raw))
    assert _outputs(workdir) == first
    assert "data/prepared/manifest.csv" in first
    assert "reports/data/summary.json" in first


def test_a_failed_run_leaves_previous_outputs_intact(workdir, raw):
    prepare.run(_params(raw))
    before = _outputs(workdir)
    with pytest.raises(UserError, match="no usable image of class 'cyst'"):
        prepare.run(_params(raw, classes=(*CLASSES, "cyst")))
    after = _outputs(workdir)
    assert after.pop("reports/data-failures/rejects.csv")  # the trail, outside DVC's outputs
    assert after == before
    left = sorted(p.name for p in Path("data").iterdir())
    assert left == ["exclude.csv", "prepared"]  # no temp folder left


def test_too_many_rejects_stop_the_stage_and_say_why(workdir, raw):
    with pytest.raises(UserError, match=r"prepare\.max_reject_fraction: 1 of 39 .*truncated"):
        prepare.run(_params(raw, max_reject_fraction=0.01))
    assert not Path("data/prepared").exists()
    assert not Path("reports/data").exists()


def test_a_failed_run_writes_every_reject_where_dvc_does_not_delete_it(workdir, raw):
    with pytest.raises(UserError, match=r"reports/data-failures/rejects\.csv"):
        prepare.run(_params(raw, max_reject_fraction=0.01))
    rejects = _csv_rows("reports/data-failures/rejects.csv")
    assert [r["reason"].split(":")[0] for r in rejects].count("truncated") == 1
    assert {"source", "reason"} <= set(rejects[0])
    prepare.run(_params(raw))  # a later success removes the stale trail
    assert not Path("reports/data-failures").exists()


def test_staging_folders_of_an_interrupted_run_are_removed_at_the_next_start(workdir, raw):
    for stale in ("data/.prepared.abc123", "data/.prepared.old"):
        Path(stale, "scratch").mkdir(parents=True)
    prepare.run(_params(raw))
    assert sorted(p.name for p in Path("data").iterdir()) == ["exclude.csv", "prepared"]


def test_every_duplicate_pair_is_reported_with_how_it_was_found(workdir, raw):
    summary = prepare.run(_params(raw))
    pairs = _csv_rows("reports/data/duplicates.csv")
    assert len(pairs) == sum(summary["duplicates"]["pairs_by_method"].values()) >= 2
    assert {p["method"] for p in pairs} <= {"sha256", "phash", "phash+keypoints", "keypoints"}
    manifest_groups = {r["source"]: r["group"] for r in _manifest()}
    kept = [p for p in pairs if p["source_a"] in manifest_groups]
    assert all(manifest_groups[p["source_a"]] == manifest_groups[p["source_b"]] for p in kept)
    assert Image.open("reports/data/duplicate_groups.png").mode == "RGB"


def test_an_orphan_mask_and_an_unknown_folder_are_reported(
    workdir, raw, write_png, synthetic_image
):
    write_png(raw / BUSI / "normal" / "normal (77)_mask.png", synthetic_image(0))
    write_png(raw / BUSI / "unsure" / "x.png", synthetic_image(1))
    summary = prepare.run(_params(raw))
    reasons = {r["source"]: r["reason"] for r in _csv_rows("reports/data/rejects.csv")}
    assert reasons[f"{BUSI}/normal/normal (77)_mask.png"].startswith("mask_without_image")
    assert reasons[f"{BUSI}/unsure/"].startswith("unknown_folder")
    assert summary["skipped"] == {"mask_without_image": 1, "unknown_folder": 1}
    assert summary["rejects"]["total"] == 1  # skipped files do not count as rejected images


def test_an_image_without_its_mask_is_reported(workdir, raw, capsys):
    (raw / BUSI / "normal" / "normal (4)_mask.png").unlink()
    summary = prepare.run(_params(raw))
    assert summary["masks"]["images_without_mask"] == 2  # normal (4) and the re-encoded copy
    assert "2 images have no mask" in capsys.readouterr().out


def test_lesion_area_is_the_union_of_the_images_masks_and_empty_where_none_is_marked(
    workdir, raw, write_png, capsys
):
    """The image `benign (1)` has three masks: two disjoint quarters of the image and a copy of
    the first, so its lesion area is a half (overlap counted once); a normal image's black mask
    marks nothing. A mask of another size than its image, or an unreadable one, gives no area
    and is counted."""
    folder = raw / BUSI / "benign"
    top = np.zeros((40, 48), np.uint8)
    top[0:10, :] = 255  # 480 of 1920 pixels
    write_png(folder / "benign (1)_mask_1.png", top)  # _mask: rows 10-30 x cols 12-36, also 480
    write_png(raw / BUSI / "normal" / "normal (5)_mask.png", np.zeros((40, 48), np.uint8))
    write_png(folder / "benign (4)_mask.png", np.full((20, 24), 255, np.uint8))
    (raw / BUSI / "malignant" / "malignant (3)_mask.png").write_bytes(b"not a png")
    summary = prepare.run(_params(raw))
    area = {r["source"]: r["mask_area"] for r in _manifest()}
    assert float(area[f"{BUSI}/benign/benign (1).png"]) == 0.5
    assert float(area[f"{BUSI}/benign/benign (5).png"]) == 0.25
    assert area[f"{BUSI}/normal/normal (5).png"] == ""
    assert area[f"{BUSI}/benign/benign (4).png"] == ""
    assert area[f"{BUSI}/malignant/malignant (3).png"] == ""
    assert area[f"{BUSI}/normal/normal (40).jpg"] == ""  # an image without masks
    masks = summary["masks"]
    assert masks["area_not_measured"] == {"mask_size_mismatch": 1, "unreadable_mask": 1}
    assert masks["images_with_lesion_area"] == sum(bool(a) for a in area.values())
    assert "lesion area not measured for 2 images" in capsys.readouterr().out


def test_a_csv_of_paths_and_labels_works(workdir, tmp_path, write_png, synthetic_image):
    lines = ["path,label"]
    for c, label in enumerate(CLASSES):
        for n in range(6):
            write_png(tmp_path / "pool" / f"{label}{n}.png", synthetic_image(100 * c + n, label))
            lines.append(f"pool/{label}{n}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    summary = prepare.run(_params(tmp_path / "labels.csv"))
    assert summary["total"] == 18
    assert _manifest()[0]["source"] == "pool/benign0.png"
    assert {r["mask_area"] for r in _manifest()} == {""}  # no masks: no lesion size


def test_a_csv_masks_column_gives_the_lesion_area(workdir, tmp_path, write_png, synthetic_image):
    lines = ["path,label,masks"]
    mask = np.zeros((48, 48), np.uint8)
    mask[:12, :] = 255
    for c, label in enumerate(CLASSES):
        for n in range(6):
            write_png(tmp_path / "pool" / f"{label}{n}.png", synthetic_image(100 * c + n, label))
            lines.append(f"pool/{label}{n}.png,{label},")
    write_png(tmp_path / "outlines" / "b0.png", mask)  # not named *_mask: listed in the column
    lines[1] = "pool/benign0.png,benign,outlines/b0.png"
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    prepare.run(_params(tmp_path / "labels.csv"))
    area = {r["source"]: r["mask_area"] for r in _manifest()}
    assert float(area["pool/benign0.png"]) == 0.25
    assert sum(bool(a) for a in area.values()) == 1


def test_a_class_too_small_to_reach_every_split_is_warned_about(
    workdir, tmp_path, write_png, synthetic_image, capsys
):
    lines = ["path,label"]
    for c, (label, n_images) in enumerate(zip(CLASSES, (6, 6, 2), strict=True)):
        for n in range(n_images):
            write_png(tmp_path / "pool" / f"{label}{n}.png", synthetic_image(100 * c + n, label))
            lines.append(f"pool/{label}{n}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    summary = prepare.run(_params(tmp_path / "labels.csv"))
    out = capsys.readouterr().out
    empty = [s for s in ("train", "val", "test") if not summary["classes"]["normal"][s]]
    assert len(empty) == 1
    assert f"warning: class 'normal' has no image in {empty[0]}" in out
    assert "class 'benign'" not in out
    assert "class 'malignant'" not in out


def test_main_reports_a_missing_raw_dir_in_one_line(workdir, capsys):
    raw = raw_params({"data": {"raw_dir": "data/raw/nothing-here"}})
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    assert prepare.main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.raw_dir: folder not found: data/raw/nothing-here;")
    assert err.count("\n") == 1


def test_the_real_busi_sample(workdir, busi_sample):
    """Twelve real BUSI images in the download's layout: no mask in the image set."""
    (workdir / "raw").mkdir()
    (workdir / "raw" / BUSI).symlink_to(busi_sample, target_is_directory=True)
    summary = prepare.run(_params(workdir / "raw", image_size=64))
    rows = _manifest()
    assert summary["total"] == len(rows) == 12
    assert not any(is_mask(r["source"]) for r in rows)
    assert summary["rejects"]["total"] == 0
    assert summary["masks"]["images_without_mask"] == 0
    masks = {r["source"]: r["masks"].split(";") for r in rows}
    assert masks[f"{BUSI}/benign/benign (100).png"] == [
        f"{BUSI}/benign/benign (100)_mask.png",
        f"{BUSI}/benign/benign (100)_mask_1.png",
    ]
    assert all(summary["classes"][c]["total"] == 4 for c in CLASSES)
    for row in rows:
        image = Image.open(io.BytesIO(Path("data/prepared", row["path"]).read_bytes()))
        assert (image.mode, image.size) == ("RGB", (64, 64))


def test_the_real_busi_sample_records_each_lesions_area_and_none_for_normal_scans(
    workdir, busi_sample
):
    """Lesion area on the real masks: the union of an image's masks over its pixel count, read
    here independently of prepare; BUSI's normal images come with all-black masks."""
    (workdir / "raw").mkdir()
    (workdir / "raw" / BUSI).symlink_to(busi_sample, target_is_directory=True)
    summary = prepare.run(_params(workdir / "raw", image_size=32))
    rows = {r["source"]: r for r in _manifest()}
    for source, row in rows.items():
        if row["label"] == "normal":
            assert row["mask_area"] == ""
            continue
        union = None
        for mask in row["masks"].split(";"):
            marked = np.asarray(Image.open(busi_sample / Path(mask).relative_to(BUSI)).convert("L"))
            union = marked > 0 if union is None else union | (marked > 0)
        assert float(row["mask_area"]) == pytest.approx(union.mean(), abs=1e-6), source
    two = rows[f"{BUSI}/benign/benign (100).png"]
    assert 0.06 < float(two["mask_area"]) < 0.07  # masks of 4.6% and 1.9%: two lesions
    assert summary["masks"]["images_with_lesion_area"] == 8
    assert summary["masks"]["area_not_measured"] == {}


# --- curation and patient groups (issue 12) -------------------------------------------------------


def test_excluded_files_leave_before_the_split_and_are_counted_by_reason(workdir, raw):
    Path("data/exclude.csv").write_text(
        "path,reason\n"
        f"{BUSI}/benign/benign (3).png,axilla view\n"
        f"{BUSI}/normal/normal (1?).png,annotations drawn\n"  # a glob: normal (10), (11), (12)
        "nowhere/*.png,typo\n"
    )
    summary = prepare.run(_params(raw))
    sources = {r["source"] for r in _manifest()}
    assert f"{BUSI}/benign/benign (3).png" not in sources
    assert not sources & {f"{BUSI}/normal/normal ({n}).png" for n in (10, 11, 12)}
    assert f"{BUSI}/normal/normal (1).png" in sources
    assert summary["excluded"] == {
        "total": 4,
        "by_reason": {"annotations drawn": 3, "axilla view": 1},
        "rules_matching_nothing": 1,
    }
    reasons = {r["source"]: r["reason"] for r in _csv_rows("reports/data/rejects.csv")}
    assert reasons[f"{BUSI}/benign/benign (3).png"] == "excluded: axilla view"
    assert summary["rejects"]["total"] == 1  # exclusions are no rejects


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found; create a CSV"),
        ("file,why\nx,y\n", "starts with"),
        ("path,reason\nx,\n", "line 2"),
    ],
)
def test_a_missing_or_ill_formed_exclusion_list_is_one_line_naming_the_file(
    workdir, raw, content, message
):
    path = Path("data/exclude.csv")
    path.unlink() if content is None else path.write_text(content)
    with pytest.raises(UserError, match=f"data.exclude: data/exclude.csv.*{message}") as error:
        prepare.run(_params(raw))
    assert "\n" not in str(error.value)
    assert "path,reason" in str(error.value)


def _patient_csv(tmp_path, write_png, synthetic_image, column="patient_id") -> Path:
    """Six patients with three images each (distinct images: only the ids tie them together)."""
    lines = [f"path,label,{column}"]
    for n in range(18):
        label = CLASSES[(n // 3) % 3]
        write_png(tmp_path / "pool" / f"i{n}.png", synthetic_image(500 + n, label))
        lines.append(f"pool/i{n}.png,{label},RAWPATIENT{n // 3:03d}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "labels.csv"


def test_a_csv_patient_column_makes_a_patient_level_split_with_hashed_ids(
    workdir, tmp_path, write_png, synthetic_image
):
    labels = _patient_csv(tmp_path, write_png, synthetic_image)
    summary = prepare.run(_params(labels))
    rows = _manifest()
    by_patient: dict[str, set] = {}
    for row in rows:
        n = int(Path(row["source"]).stem[1:])
        by_patient.setdefault(n // 3, set()).add((row["split"], row["group"]))
    assert all(len(seen) == 1 for seen in by_patient.values())  # one split, one group each
    assert len({r["group"] for r in rows}) == 6
    assert all(r["group"].startswith("patient-") for r in rows)
    assert summary["grouping"]["split_level"] == "patient"
    assert summary["grouping"]["id_groups"] == 6
    written = b"".join(
        p.read_bytes()
        for p in Path(".").rglob("*")
        if p.is_file() and "pool" not in p.parts and p.name != "labels.csv"
    )
    assert b"RAWPATIENT" not in written


def test_a_patient_and_a_duplicate_group_merge_into_one_split_group(
    workdir, tmp_path, write_png, synthetic_image
):
    labels = _patient_csv(tmp_path, write_png, synthetic_image)
    shutil.copyfile(tmp_path / "pool" / "i0.png", tmp_path / "pool" / "copy.png")
    with labels.open("a") as handle:
        handle.write("pool/copy.png,benign,\n")  # no id: joined to patient 0 by the copy
    prepare.run(_params(labels))
    group = {Path(r["source"]).name: r["group"] for r in _manifest()}
    assert group["copy.png"] == group["i0.png"] == group["i1.png"] == group["i2.png"]


def test_the_salt_changes_every_patient_group_name(workdir, tmp_path, write_png, synthetic_image):
    labels = _patient_csv(tmp_path, write_png, synthetic_image, column="hospital_number")
    params = project_params(
        {
            "classes": list(CLASSES),
            "prepare": {"image_size": 32},
            "data": {"raw_dir": str(labels), "group_column": "hospital_number"},
        }
    )
    first = {r["group"] for r in (prepare.run(params), _manifest())[1]}
    salted = project_params(
        {
            "classes": list(CLASSES),
            "prepare": {"image_size": 32},
            "data": {
                "raw_dir": str(labels),
                "group_column": "hospital_number",
                "id_salt": "another-site-secret",
            },
        }
    )
    second = {r["group"] for r in (prepare.run(salted), _manifest())[1]}
    assert len(first) == len(second) == 6
    assert not first & second
