"""The synthetic demo data: BUSI layout, BUSI proportions, reproducible, marked, with real cues."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.synthetic import CLASSES, case_rng, class_counts, generate, render_case

NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)(_mask)?\.png$")


def cases(label: str, n: int = 30, size: int = 64, seed: int = 0):
    return [render_case(label, case_rng(seed, label, i), size) for i in range(1, n + 1)]


def box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the nonzero pixels, bottom and right exclusive."""
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def solidity(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    return cv2.contourArea(outline) / cv2.contourArea(cv2.convexHull(outline))


def below_to_beside(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean brightness in the band just below the lesion over the same band left and right of it."""
    gray = image[:, :, 0].astype(float)
    top, bottom, left, right = box(mask)
    band = slice(bottom, bottom + (bottom - top))
    width = right - left
    beside = np.concatenate(
        [gray[band, max(0, left - width) : left].ravel(), gray[band, right : right + width].ravel()]
    )
    return gray[band, left:right].mean() / beside.mean()


@pytest.mark.parametrize("n", [30, 31, 100, 420, 779])
def test_class_counts_follow_busi_proportions_and_sum_to_the_total(n):
    counts = class_counts(n)
    assert sum(counts.values()) == n
    for label, busi in {"benign": 437, "malignant": 210, "normal": 133}.items():
        assert abs(counts[label] - n * busi / 780) < 1


def test_class_counts_at_busi_size_are_busi_counts():
    assert class_counts(780) == {"benign": 437, "malignant": 210, "normal": 133}


def test_generate_writes_busi_layout_with_each_mask_beside_its_image(tmp_path):
    counts = generate(tmp_path, 30, 32, seed=1)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", *CLASSES]
    for label in CLASSES:
        names = sorted(p.name for p in (tmp_path / label).iterdir())
        assert all(NAME.match(name) and name.startswith(label) for name in names)
        images = [n for n in names if not n.endswith("_mask.png")]
        numbers = sorted(int(NAME.match(n).group(2)) for n in images)
        assert numbers == list(range(1, counts[label] + 1))
        assert len(names) == 2 * len(images)
        assert all(n.replace(".png", "_mask.png") in names for n in images)


def test_images_are_rgb_with_equal_channels_and_masks_are_binary_of_the_same_size(tmp_path):
    generate(tmp_path, 30, 48, seed=2)
    for image_path in tmp_path.glob("*/* ([0-9]*).png"):
        image = Image.open(image_path)
        mask = Image.open(image_path.with_name(image_path.stem + "_mask.png"))
        assert image.mode == "RGB"
        assert image.size == (48, 48)
        assert mask.mode == "L"
        assert mask.size == (48, 48)
        pixels = np.asarray(image)
        assert (pixels[:, :, 0] == pixels[:, :, 1]).all()
        assert (pixels[:, :, 1] == pixels[:, :, 2]).all()
        assert set(np.unique(np.asarray(mask))) <= {0, 255}


def read_all(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    generate(tmp_path / "a", 30, 32, seed=5)
    generate(tmp_path / "b", 30, 32, seed=5)
    generate(tmp_path / "c", 30, 32, seed=6)
    a, b, c = (read_all(tmp_path / x) for x in "abc")

    assert a == b
    assert a.keys() == c.keys()
    pngs = [name for name in a if name.endswith(").png")]
    assert all(a[name] != c[name] for name in pngs)


def test_an_image_does_not_depend_on_how_many_others_are_generated(tmp_path):
    generate(tmp_path / "small", 30, 32, seed=3)
    generate(tmp_path / "large", 60, 32, seed=3)
    for name in ("benign/benign (1).png", "malignant/malignant (3).png", "normal/normal (2).png"):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


def test_every_png_and_the_readme_say_the_data_is_synthetic(tmp_path):
    generate(tmp_path, 30, 32, seed=4)

    for path in tmp_path.rglob("*.png"):
        assert "not patient" in Image.open(path).text["Source"]
    readme = (tmp_path / "README.md").read_text()
    assert "SYNTHETIC" in readme
    assert "NOT PATIENT IMAGES" in readme
    assert "seed 4" in readme
    assert "pipeline/synthetic.py" in readme


def test_render_case_rejects_an_unknown_class():
    with pytest.raises(ValueError, match="label"):
        render_case("cyst", np.random.default_rng(0), 32)


def test_normal_cases_have_empty_masks_and_lesion_cases_do_not():
    assert all(not mask.any() for _, mask in cases("normal"))
    for label in ("benign", "malignant"):
        for _, mask in cases(label):
            top, bottom, left, right = box(mask)
            # Big enough to survive downscaling to 64 px, small enough to leave tissue around it
            # (spicules may reach a little further than the body of the lesion).
            assert 0.1 <= (right - left) / 64 <= 0.6


def test_benign_lesions_are_wider_than_tall_and_malignant_ones_taller_than_wide():
    def width_over_height(mask):
        top, bottom, left, right = box(mask)
        return (right - left) / (bottom - top)

    assert np.mean([width_over_height(m) for _, m in cases("benign")]) > 1.3
    assert np.mean([width_over_height(m) for _, m in cases("malignant")]) < 1.0


def test_benign_margins_are_smooth_and_malignant_margins_irregular():
    benign = np.mean([solidity(m) for _, m in cases("benign")])
    malignant = np.mean([solidity(m) for _, m in cases("malignant")])
    assert benign > 0.93
    assert malignant < benign - 0.1


def test_malignant_lesions_cast_a_shadow_and_benign_ones_do_not():
    malignant = [below_to_beside(image, mask) for image, mask in cases("malignant")]
    benign = [below_to_beside(image, mask) for image, mask in cases("benign")]
    assert np.mean(malignant) < 0.7
    assert np.mean(benign) > 1.0


def test_lesions_are_darker_than_the_tissue_around_them():
    for label in ("benign", "malignant"):
        for image, mask in cases(label, n=10):
            ring = cv2.dilate(mask, np.ones((9, 9), np.uint8)) & ~mask
            gray = image[:, :, 0]
            assert gray[mask > 0].mean() < gray[ring > 0].mean()


def test_overall_brightness_alone_does_not_tell_the_classes_apart():
    means = {label: [image.mean() for image, _ in cases(label, n=40)] for label in CLASSES}
    spread = min(np.std(m) for m in means.values())
    centres = [np.mean(m) for m in means.values()]
    assert max(centres) - min(centres) < spread
