"""Small on-disk data sets that tests build in tmp_path, with label-dependent content."""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pipeline import synthetic
from pipeline.config import AugmentParams, Params, parse_params
from pipeline.prepare import MANIFEST_COLUMNS
from tests.repos import ROOT, merge

if TYPE_CHECKING:
    import pytest

CLASSES = ("benign", "malignant", "normal")
# XLA set to compile quickly and run slower: right for a test that compiles a backbone to run it
# a step or two (JAX's CPU compile of DenseNet121 + ResNet50, one train step each: 126 -> 82
# CPU-seconds, same losses). Pass as XLA_FLAGS to a JAX subprocess.
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def raw_params(overrides: dict | None = None) -> dict:
    """The project's params.yaml as a dict with `overrides` merged in (nested sections key by
    key): what a test writes as a project's params.yaml."""
    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides or {})


def project_params(overrides: dict | None = None) -> Params:
    """`raw_params(overrides)` parsed and validated: the one place a test's parameters get the
    values it does not set."""
    return parse_params(raw_params(overrides))


def augment_params(**changes: object) -> AugmentParams:
    """params.yaml's `augment:` section with `changes`."""
    return dataclasses.replace(project_params().augment, **changes)  # type: ignore[arg-type]


def enter_project(mp: pytest.MonkeyPatch, root: Path) -> str:
    """Work from `root` as from a fresh checkout: stages read and write there, and MLflow uses
    `root`/mlflow.db (its tracking URI is returned), never the developer's own store.

    The store starts as a copy of an empty, already-migrated one: MLflow creates and migrates a
    new SQLite store in 5-10 s, which dozens of tests would otherwise pay one by one."""
    mp.chdir(root)
    database = root / "mlflow.db"
    if not database.exists():
        shutil.copyfile(_empty_store(), database)
    uri = f"sqlite:///{database}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@functools.cache
def _empty_store() -> Path:
    """An empty MLflow SQLite store with every migration applied, made once per test session."""
    from mlflow import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def label_image(label_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey speckled square whose bright blob's position encodes the label: learnable."""
    image = rng.normal(90, 20, size=(size, size)).clip(0, 255)
    corners = [(size // 4, size // 4), (size // 2, 3 * size // 4), (3 * size // 4, size // 2)]
    centre = corners[label_index % 3]
    cv2.circle(image, centre, max(2, size // 6), 220, -1)
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)


def make_prepared(
    root: Path,
    per_split: dict[str, int] | None = None,
    size: int = 32,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
) -> Path:
    """Write `root/data/prepared/` (images + manifest in the prepare stage's format)."""
    per_split = per_split or {"train": 6, "val": 3, "test": 3}
    rng = np.random.default_rng(seed)
    folder = root / "data" / "prepared"
    rows = []
    for label_index, label in enumerate(classes):
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        for split, count in per_split.items():
            for i in range(count):
                rel = f"images/{label}/{label}-{split}-{i}.png"
                cv2.imwrite(str(folder / rel), label_image(label_index, size, rng))
                group = f"g-{label}-{split}-{i}"
                sha = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
                rows.append([rel, label, split, group, sha, "0" * 16, rel, "", "", size, size])
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(folder / "manifest.csv", index=False)
    return folder


def mini_classifier(seed: int = 0, classes: tuple[str, ...] = CLASSES, staged: bool = False):
    """The layer contract of pipeline.backbones (resize, preprocess, backbone sub-model, pool,
    dropout, predictions) with a one-layer backbone: saves and loads in a second, draws CAMs.
    `staged`: a backbone of two stages named as keras.applications names them (`conv4_...`,
    then `conv5_...` with a convolution, batch norm and ReLU)."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = (
        [
            keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv4_block1_conv"),
            keras.layers.Conv2D(6, 3, strides=2, name="conv5_block1_1_conv"),
            keras.layers.BatchNormalization(name="conv5_block1_1_bn"),
            keras.layers.ReLU(name="conv5_block1_1_relu"),
        ]
        if staged
        else [keras.layers.Conv2D(4, 3, strides=4, activation="relu")]
    )
    base = keras.Sequential([keras.Input((32, 32, 3)), *layers], name="backbone")
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(32, 32, pad_to_aspect_ratio=True, name="resize")(inputs)
    x = keras.layers.Rescaling(1 / 255, name="preprocess")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(x))
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet50_classifier")


def make_release(
    folder: Path,
    model,
    threshold: float | None = 0.5,
    classes: tuple[str, ...] = CLASSES,
    temperature: float | None = None,
    trained_on: tuple[str, ...] = (),
    **provenance,
) -> Path:
    """Save `model` as a released-model folder (model.keras + release.json) at `folder`."""
    from pipeline.serving.release import write_release
    from pipeline.serving.rule import DecisionRule

    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "source.keras")
    rule = DecisionRule(classes, "malignant", threshold, temperature, "test rule", "test data")
    defaults = {"model_name": "tumor-classifier", "version": "1", "arch": "resnet50"}
    write_release(
        folder,
        folder / "source.keras",
        rule,
        defaults | {"synthetic_data": True} | provenance,
        trained_on=trained_on,
    )
    (folder / "source.keras").unlink()
    return folder


def with_onnx(folder: Path, images) -> Path:
    """Export model.onnx into a release folder and record its parity on `images`, as select
    does (pipeline.export.add_onnx; no INT8)."""
    from pipeline.export import PARITY_TOLERANCE, add_onnx
    from pipeline.serving.classifier import load_classifier
    from pipeline.serving.release import ONNX_FILE, record_onnx

    parity = add_onnx(folder, load_classifier(folder), images, PARITY_TOLERANCE)
    record_onnx(folder, {"served": ONNX_FILE, "parity": parity, "int8": None})
    return folder


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """An array as the bytes of an image file in `fmt`."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def scan(seed: int = 0, height: int = 40, width: int = 56) -> np.ndarray:
    """A random grey scan as uint8 RGB."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def ultrasound_scans(n: int, size: int = 500) -> list[Image.Image]:
    """Synthetic ultrasound-like scans at BUSI's size, one seed each, classes in turn (the
    duplicate detector's test material: distinct scans that must never be paired)."""
    labels = synthetic.CLASSES
    return [
        Image.fromarray(
            synthetic.render_case(labels[i % 3], synthetic.case_rng(5, labels[i % 3], i), size)[0]
        )
        for i in range(n)
    ]


def benchmark_originals(source: str, request: pytest.FixtureRequest) -> list[Image.Image]:
    """Twelve scans: synthetic ones (always), or the real BUSI sample (skips where it is absent)."""
    if source == "synthetic":
        return ultrasound_scans(12)
    folder = request.getfixturevalue("busi_sample")
    files = sorted(p for p in folder.glob("*/*.png") if "_mask" not in p.name)
    return [Image.open(p).convert("RGB") for p in files]


def left_out_pairs(root: Path, site: str) -> dict[str, dict[str, str]]:
    """An external site's left_out.csv as external stage wrote it, by external source file:
    which development image each left-out image repeats, and how."""
    with (root / "reports/external/sites" / site / "left_out.csv").open(newline="") as handle:
        return {row["external_source"]: row for row in csv.DictReader(handle)}
