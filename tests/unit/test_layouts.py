"""Finding images, labels and masks in the three input layouts (pipeline/layouts.py)."""

from __future__ import annotations

import pytest

from pipeline.errors import UserError
from pipeline.layouts import discover, is_mask

CLASSES = ("benign", "malignant", "normal")


def _busi_download(root, write_png, synthetic_image):
    """A miniature BUSI download: wrapper folder, class folders, `_mask`, `_mask_1`, `_mask_2`."""
    base = root / "Dataset_BUSI_with_GT"
    for c, label in enumerate(CLASSES):
        for n in (1, 2):
            write_png(base / label / f"{label} ({n}).png", synthetic_image(10 * c + n, label))
            write_png(base / label / f"{label} ({n})_mask.png", synthetic_image(0))
    write_png(base / "benign" / "benign (2)_mask_1.png", synthetic_image(0))
    write_png(base / "benign" / "benign (2)_mask_2.png", synthetic_image(0))
    return base


def test_mask_names_follow_busi():
    assert is_mask("benign (1)_mask.png")
    assert is_mask("benign (100)_mask_1.png")
    assert is_mask("x/malignant (3)_MASK_2.png")
    assert not is_mask("benign (1).png")
    assert not is_mask("no_mask_here.png")


def test_busi_download_is_found_through_its_wrapper_folder(tmp_path, write_png, synthetic_image):
    _busi_download(tmp_path, write_png, synthetic_image)
    found = discover(tmp_path, CLASSES)
    assert found.kind == "folders"
    assert [r.source for r in found.records][:2] == [
        "Dataset_BUSI_with_GT/benign/benign (1).png",
        "Dataset_BUSI_with_GT/benign/benign (2).png",
    ]
    assert found.skipped == ()
    assert found.uses_masks


def test_masks_never_enter_the_image_set(tmp_path, write_png, synthetic_image):
    _busi_download(tmp_path, write_png, synthetic_image)
    found = discover(tmp_path, CLASSES)
    assert len(found.records) == 6
    assert not any(is_mask(r.source) for r in found.records)
    masks = {r.source.rsplit("/", 1)[1]: r.masks for r in found.records}
    assert masks["benign (2).png"] == (
        "Dataset_BUSI_with_GT/benign/benign (2)_mask.png",
        "Dataset_BUSI_with_GT/benign/benign (2)_mask_1.png",
        "Dataset_BUSI_with_GT/benign/benign (2)_mask_2.png",
    )
    assert masks["normal (1).png"] == ("Dataset_BUSI_with_GT/normal/normal (1)_mask.png",)


def test_a_mask_without_its_image_is_reported(tmp_path, write_png, synthetic_image):
    base = _busi_download(tmp_path, write_png, synthetic_image)
    write_png(base / "malignant" / "malignant (9)_mask.png", synthetic_image(0))
    found = discover(tmp_path, CLASSES)
    assert len(found.records) == 6
    [(source, reason)] = found.skipped
    assert source == "Dataset_BUSI_with_GT/malignant/malignant (9)_mask.png"
    assert reason.startswith("mask_without_image")


def test_an_unknown_folder_is_reported_not_guessed(tmp_path, write_png, synthetic_image):
    base = _busi_download(tmp_path, write_png, synthetic_image)
    write_png(base / "suspicious" / "x.png", synthetic_image(1))
    found = discover(tmp_path, CLASSES)
    assert {r.label for r in found.records} == set(CLASSES)
    [(source, reason)] = found.skipped
    assert source == "Dataset_BUSI_with_GT/suspicious/"
    assert reason.startswith("unknown_folder")
    assert "suspicious" in reason


def test_any_folder_of_class_subfolders_works_without_masks(tmp_path, write_png, synthetic_image):
    for label in CLASSES:
        write_png(tmp_path / label.capitalize() / "a.png", synthetic_image(1, label))
        write_png(tmp_path / label.capitalize() / "deeper" / "b.jpg.png", synthetic_image(2))
    (tmp_path / "README.txt").write_text("not data")
    (tmp_path / "Benign" / ".DS_Store").write_bytes(b"\0")
    found = discover(tmp_path, CLASSES)
    assert [(r.label, r.source) for r in found.records] == [
        ("benign", "Benign/a.png"),
        ("benign", "Benign/deeper/b.jpg.png"),
        ("malignant", "Malignant/a.png"),
        ("malignant", "Malignant/deeper/b.jpg.png"),
        ("normal", "Normal/a.png"),
        ("normal", "Normal/deeper/b.jpg.png"),
    ]
    assert not found.uses_masks
    assert found.skipped == ()


def test_records_follow_class_order_from_params(tmp_path, write_png, synthetic_image):
    for label in CLASSES:
        write_png(tmp_path / label / "a.png", synthetic_image(1))
    found = discover(tmp_path, ("normal", "benign", "malignant"))
    assert [r.label for r in found.records] == ["normal", "benign", "malignant"]


def test_csv_layout_reads_paths_relative_to_the_csv(tmp_path, write_png, synthetic_image):
    write_png(tmp_path / "imgs" / "a.png", synthetic_image(1))
    write_png(tmp_path / "imgs" / "a_mask.png", synthetic_image(0))
    write_png(tmp_path / "imgs" / "b.png", synthetic_image(2))
    write_png(tmp_path / "imgs" / "c.png", synthetic_image(3))
    write_png(tmp_path / "imgs" / "c-outline.png", synthetic_image(0))
    (tmp_path / "labels.csv").write_text(
        "path,label,masks\n"
        "imgs/b.png,malignant,\n"
        "imgs/a.png,benign,\n"
        "imgs/a_mask.png,benign,\n"
        "imgs/c.png,Normal,imgs/c-outline.png\n"
        "imgs/missing.png,normal,\n"
    )
    found = discover(tmp_path / "labels.csv", CLASSES)
    assert found.kind == "csv"
    got = [(r.source, r.label, r.masks) for r in found.records]
    assert got == [
        ("imgs/a.png", "benign", ("imgs/a_mask.png",)),
        ("imgs/b.png", "malignant", ()),
        ("imgs/c.png", "normal", ("imgs/c-outline.png",)),
        ("imgs/missing.png", "normal", ()),  # validation reports it missing, not discovery
    ]
    assert found.records[0].path == tmp_path / "imgs" / "a.png"


def test_csv_label_not_in_classes_names_file_and_line(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.png,benign\nb.png,cyst\n")
    with pytest.raises(UserError, match=r"labels\.csv: line 3: label 'cyst' is not one of"):
        discover(tmp_path / "labels.csv", CLASSES)


def test_csv_without_label_column_is_a_user_error(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class\na.png,benign\n")
    with pytest.raises(UserError, match="needs columns path,label"):
        discover(tmp_path / "labels.csv", CLASSES)


def test_missing_raw_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"^data\.raw_dir: folder not found: .*BUSI download"):
        discover(tmp_path / "nowhere", CLASSES)


def test_a_folder_without_class_folders_is_a_user_error(tmp_path, write_png, synthetic_image):
    write_png(tmp_path / "a" / "x.png", synthetic_image(1))
    write_png(tmp_path / "b" / "y.png", synthetic_image(2))
    with pytest.raises(UserError, match="no class folder"):
        discover(tmp_path, CLASSES)


def test_real_busi_sample_has_12_images_and_no_mask_among_them(busi_sample):
    found = discover(busi_sample, CLASSES)
    assert len(found.records) == 12
    assert not any(is_mask(r.source) for r in found.records)
    assert found.skipped == ()
    by_source = {r.source: r.masks for r in found.records}
    assert by_source["benign/benign (100).png"] == (
        "benign/benign (100)_mask.png",
        "benign/benign (100)_mask_1.png",
    )
    assert all(len(m) >= 1 for m in by_source.values())


# --- file walking that links cannot fool -------------------------------------------------------


def _class_folders(root, write_png, synthetic_image):
    for n, label in enumerate(CLASSES_3):
        write_png(root / label / f"{label} (1).png", synthetic_image(n, label))
    return root


CLASSES_3 = ("benign", "malignant", "normal")


def _skipped(found) -> dict[str, str]:
    return {source: reason.split(":")[0] for source, reason in found.skipped}


def test_a_link_back_up_the_tree_is_reported_not_followed(tmp_path, write_png, synthetic_image):
    raw = _class_folders(tmp_path / "raw", write_png, synthetic_image)
    (raw / "normal" / "loop").symlink_to("..")
    found = discover(raw, CLASSES_3)
    assert [r.label for r in found.records] == list(CLASSES_3)  # nothing imported twice
    assert _skipped(found) == {"normal/loop": "link_to_ancestor"}
    assert "loop -> .." in found.skipped[0][1]


def test_links_outside_raw_dangling_and_self_links_are_reported(
    tmp_path, write_png, synthetic_image
):
    raw = _class_folders(tmp_path / "raw", write_png, synthetic_image)
    elsewhere = write_png(tmp_path / "elsewhere" / "x.png", synthetic_image(9, "benign"))
    (raw / "benign" / "outside.png").symlink_to(elsewhere)
    (raw / "benign" / "outside-folder").symlink_to(elsewhere.parent)
    (raw / "malignant" / "gone.png").symlink_to(tmp_path / "raw" / "missing.png")
    (raw / "malignant" / "self.png").symlink_to(raw / "malignant" / "self.png")
    (raw / "normal-link").symlink_to(tmp_path / "elsewhere")
    found = discover(raw, CLASSES_3)
    assert len(found.records) == 3
    assert _skipped(found) == {
        "benign/outside.png": "link_outside",
        "benign/outside-folder": "link_outside",
        "malignant/gone.png": "dangling_link",
        "malignant/self.png": "link_loop",
        "normal-link": "link_outside",
    }


def test_a_link_to_a_file_inside_raw_is_an_ordinary_file(tmp_path, write_png, synthetic_image):
    raw = _class_folders(tmp_path / "raw", write_png, synthetic_image)
    (raw / "benign" / "copy.png").symlink_to(raw / "benign" / "benign (1).png")
    found = discover(raw, CLASSES_3)
    assert {r.source for r in found.records} >= {"benign/copy.png", "benign/benign (1).png"}
    assert found.skipped == ()  # prepare groups the two as byte-identical


def test_two_files_with_one_stem_are_both_kept_with_the_mask(tmp_path, write_png, synthetic_image):
    raw = _class_folders(tmp_path / "raw", write_png, synthetic_image)
    write_png(raw / "benign" / "benign (1).jpg", synthetic_image(5, "benign"))
    write_png(raw / "benign" / "benign (1)_mask.png", synthetic_image(6))
    found = discover(raw, CLASSES_3)
    benign = {r.source: r.masks for r in found.records if r.label == "benign"}
    assert set(benign) == {"benign/benign (1).png", "benign/benign (1).jpg"}
    assert all(masks == ("benign/benign (1)_mask.png",) for masks in benign.values())
