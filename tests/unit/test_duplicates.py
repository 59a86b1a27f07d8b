"""Exact and near-duplicate groups and label conflicts (pipeline/duplicates.py)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pipeline.duplicates import group, hamming, phash, resolve_conflicts, sha256


def _reencoded(image: Image.Image, scale: float = 0.85, quality: int = 80) -> Image.Image:
    """A near-duplicate: slightly resized and saved as JPEG, as copies in BUSI are."""
    size = (round(image.width * scale), round(image.height * scale))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_a_resized_reencoded_copy_has_a_close_phash_and_other_images_do_not(synthetic_image):
    images = [Image.fromarray(synthetic_image(s, "benign")) for s in range(20)]
    copy_distance = hamming(phash(images[0]), phash(_reencoded(images[0])))
    others = [hamming(phash(images[0]), phash(other)) for other in images[1:]]
    assert copy_distance <= 4
    assert min(others) > 6


def test_byte_identical_files_share_a_group_whatever_the_threshold():
    groups = group([sha256(b"a"), sha256(b"b"), sha256(b"a")], [0, 2**64 - 1, 2**63], 0)
    assert groups[0] == groups[2] != groups[1]


def test_near_duplicates_group_within_the_hamming_threshold(synthetic_image):
    originals = [Image.fromarray(synthetic_image(s, "malignant")) for s in range(5)]
    images = originals + [_reencoded(originals[2])]
    shas = [sha256(im.tobytes()) for im in images]
    hashes = [phash(im) for im in images]
    groups = group(shas, hashes, threshold=6)
    assert groups[5] == groups[2]
    assert len(set(groups)) == 5


def test_threshold_zero_groups_only_identical_hashes():
    groups = group(["1", "2", "3"], [0b1, 0b1, 0b11], threshold=0)
    assert groups[0] == groups[1] != groups[2]


def test_grouping_is_transitive():
    a, b, c = 0, 0b111, 0b111111  # a-b 3 bits, b-c 3 bits, a-c 6 bits
    groups = group(["1", "2", "3"], [a, b, c], threshold=3)
    assert len(set(groups)) == 1


def test_group_ids_do_not_depend_on_item_order():
    shas = ["ff" * 32, "11" * 32, "aa" * 32]
    hashes = [0, 1, 2**40 - 1]
    forward = dict(zip(shas, group(shas, hashes, 2), strict=True))
    backward = dict(zip(shas[::-1], group(shas[::-1], hashes[::-1], 2), strict=True))
    assert forward == backward
    assert forward["ff" * 32] == forward["11" * 32] == "g-" + "11" * 6


def test_a_cross_class_pair_is_a_conflict_and_drop_removes_both():
    labels = ["benign", "benign", "malignant", "normal"]
    groups = ["g-1", "g-2", "g-2", "g-3"]
    keep, conflicts = resolve_conflicts(labels, groups, "drop")
    assert keep == [True, False, False, True]
    [conflict] = conflicts
    assert conflict.group == "g-2" and conflict.members == (1, 2)
    assert conflict.labels == ("benign", "malignant") and conflict.kept_label is None
    assert conflict.action.startswith("dropped all 2")


def test_majority_keeps_the_majority_label_and_drops_the_rest():
    labels = ["benign", "malignant", "benign", "normal"]
    keep, [conflict] = resolve_conflicts(labels, ["g", "g", "g", "h"], "majority")
    assert keep == [True, False, True, True]
    assert conflict.kept_label == "benign"
    assert conflict.action.startswith("kept 2 benign, dropped 1")


def test_majority_without_a_majority_drops_the_group():
    keep, [conflict] = resolve_conflicts(["benign", "malignant"], ["g", "g"], "majority")
    assert keep == [False, False]
    assert conflict.kept_label is None and "no majority" in conflict.action


def test_groups_with_one_label_are_not_conflicts():
    keep, conflicts = resolve_conflicts(["benign", "benign"], ["g", "g"], "drop")
    assert keep == [True, True] and conflicts == []


def test_unknown_policy_is_a_bug():
    with pytest.raises(ValueError):
        resolve_conflicts(["a"], ["g"], "coin-flip")
