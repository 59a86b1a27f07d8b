"""Shared unit-test fixtures: tiny synthetic images written in tmp_path, and the real sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BUSI_SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "busi-sample"


def _synthetic_image(seed: int, label: str = "", size: int | tuple[int, int] = 48) -> np.ndarray:
    """An 8-bit RGB image (H, W, 3) whose content depends on `seed` and `label`.

    A smooth random texture (so different seeds give perceptual hashes far apart, and a resized or
    re-encoded copy stays close), plus a label-dependent lesion: benign a bright round blob,
    malignant a dark irregular one, anything else none.
    """
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L")
    texture = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=float)
    yy, xx = np.mgrid[0:height, 0:width]
    r = np.hypot((xx - width / 2) / width, (yy - height / 2) / height)
    if label == "benign":
        texture = np.where(r < 0.2, 230.0, texture)
    elif label == "malignant":
        wobble = 0.05 * np.sin(8 * np.arctan2(yy - height / 2, xx - width / 2))
        texture = np.where(r < 0.22 + wobble, 20.0, texture)
    grey = np.clip(texture, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8/uint16 array as a PNG (parents created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def synthetic_image():
    """`synthetic_image(seed, label="", size=48)` -> uint8 RGB array (see `_synthetic_image`)."""
    return _synthetic_image


@pytest.fixture
def write_png():
    """`write_png(path, array)` -> path: writes the array as a PNG, creating folders."""
    return _write_png


@pytest.fixture
def busi_sample() -> Path:
    """The twelve real BUSI images in `../shared/busi-sample`; the test skips when it is absent."""
    if not BUSI_SAMPLE.is_dir():
        pytest.skip("../shared/busi-sample is not present")
    return BUSI_SAMPLE.resolve()


@pytest.fixture(scope="session")
def mini_release(tmp_path_factory):
    """(release folder, keras model): version 3 of tumor-classifier, threshold 0.3, synthetic;
    the fast layer-contract model of tests.factories.mini_classifier."""
    from tests.factories import make_release, mini_classifier

    model = mini_classifier()
    folder = make_release(tmp_path_factory.mktemp("release") / "selected", model, 0.3, version="3")
    return folder, model


@pytest.fixture(scope="session")
def onnx_release(mini_release, tmp_path_factory):
    """A copy of the mini release with its model.onnx exported and checked, as select does
    (tests.factories.with_onnx); read it only, or copy it."""
    import shutil

    from tests.factories import scan, with_onnx

    folder = tmp_path_factory.mktemp("onnx") / "selected"
    shutil.copytree(mini_release[0], folder)
    return with_onnx(folder, [scan(seed) for seed in range(6)])
