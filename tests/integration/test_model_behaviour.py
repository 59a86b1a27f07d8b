"""What the demo model does, tested as behaviour (after Made-With-ML's
tests/model/test_behavioral.py): invariances a scan's reading must have, and obvious cases it
must get right. Metrics say how often a model is right on the test split; these say it is right
for the reasons a sonographer would accept.

The model is the checkout's `models/selected/` when `make demo` has made it there (the release it
makes on the synthetic demo data); in a fresh clone, a small classifier trained here on the demo
generator's scans through the project's own training feed (pipeline.batches, with params.yaml's
augmentation, left-right flips included) and released like one (tests.factories.make_release):
about a minute and a half on two CPU cores. Either is answered through the serving core as every
surface answers (decision rule included). The scans are fresh draws of the demo generator from a
seed no demo or training image uses.

- a left-right mirrored scan keeps its class (every scan the model is sure of): left and right
  carry no meaning in a breast ultrasound image (depth, top to bottom, does), and training flips
  left-right for that reason;
- an unmistakable case of each class is classified as it: the demo generator's benign case with
  the widest, most convex outline, its malignant case with the least convex (most spiculated)
  one, and the normal scan with the faintest dark spot at lesion depths (picked from the
  generator's own mask and pixels, never by the model's answers);
- re-encoding a PNG as a quality-95 JPEG, as a PACS export or a browser upload may, moves no
  probability by more than JPEG_TOLERANCE.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from pipeline import synthetic
from pipeline.batches import TrainBatches, light
from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.release import read_release
from pipeline.serving.rule import calibrate, decide
from pipeline.serving.uploads import decode_upload
from tests.factories import make_release, project_params

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEMO_RELEASE = ROOT / "models" / "selected"
FRESH_SEED = 20261202  # the demo data is drawn from params.yaml's `seed` (42); never this one
SIZE = 128  # demo.size: the generator's side in pixels, as the demo's raw images have it
CANDIDATES = 24  # fresh cases per class among which the unmistakable one is picked
MIRRORED = 24  # fresh cases per class mirrored
SURE = 0.9  # a scan the model is sure of: its class's served probability at least this
# The mirror test checks the scans the model is sure of; at least this share of them must be, so
# that it checks something (the demo model is sure of nearly all; the small one of 15-23 of 24).
SURE_SHARE = 0.5
JPEG_QUALITY = 95
# Largest change of any class probability between the PNG and the JPEG of one scan. Quality 95
# changes pixel values by about 1 grey level; a model whose answer moves more than this on that
# is reading compression noise rather than anatomy. Measured on one demo model: 0.012 at most
# over 72 scans, median 0.
JPEG_TOLERANCE = 0.05


# The small classifier a fresh clone trains: 160 epochs of 90 scans per class, 86 s on this
# machine's 2 loaded CPU cores; every test here passed with training seeds 7 and 3. With 60 scans
# per class (56 s) seed 7 misread the unmistakable benign case and was sure of 15-23 of 24 fresh
# scans per class (every sure one kept its class mirrored).
TRAIN_SEED = 7  # the demo data's seed is 42, FRESH_SEED the tests'
TRAIN_PER_CLASS = 90
TRAIN_EPOCHS = 160
MODEL_SIZE = project_params().prepare.image_size  # the side the demo trains at


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Classifier:
    """The demo's release when `make demo` made one from the synthetic demo data; otherwise a
    small classifier trained here on the same generator's scans."""
    if (DEMO_RELEASE / "release.json").is_file() and read_release(DEMO_RELEASE).synthetic:
        return load_classifier(DEMO_RELEASE)
    folder = tmp_path_factory.mktemp("behaviour") / "release"
    return load_classifier(make_release(folder, trained_small_classifier(), synthetic_data=True))


def small_classifier() -> keras.Model:
    """The layer contract of pipeline.backbones (resize, preprocess, backbone, pool, dropout,
    predictions) around three convolution blocks: small enough to train in a test."""
    blocks = [
        layer
        for filters in (16, 32, 64)
        for layer in (
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
        )
    ]
    backbone = keras.Sequential(
        [keras.Input((MODEL_SIZE, MODEL_SIZE, 3)), *blocks], name="backbone"
    )
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(MODEL_SIZE, MODEL_SIZE, pad_to_aspect_ratio=True, name="resize")(
        inputs
    )
    x = keras.layers.Rescaling(1 / 255, name="preprocess")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(len(synthetic.CLASSES), activation="softmax", name="predictions")(
        x
    )
    return keras.Model(inputs, outputs, name="small_classifier")


def trained_small_classifier() -> keras.Model:
    """`small_classifier` trained on TRAIN_PER_CLASS demo-generator scans per class, seeded,
    through TrainBatches with params.yaml's augmentation (halved, as train applies it on the
    fly), flips included: a reading that must not depend on left and right is taught so."""
    keras.utils.set_random_seed(TRAIN_SEED)
    labels = np.repeat(np.arange(len(synthetic.CLASSES)), TRAIN_PER_CLASS)
    scans = np.stack([
        synthetic.render_case(label, synthetic.case_rng(TRAIN_SEED, label, i), SIZE)[0]
        for label in synthetic.CLASSES
        for i in range(TRAIN_PER_CLASS)
    ])  # fmt: skip
    augment = light(project_params().augment)
    batches = TrainBatches(scans, labels, len(synthetic.CLASSES), 16, TRAIN_SEED, augment)
    model = small_classifier()
    # cosine decay to 0, as train.schedule: cosine does: the last epochs sharpen the answers
    rate = keras.optimizers.schedules.CosineDecay(0.003, TRAIN_EPOCHS * len(batches))
    model.compile(keras.optimizers.Adam(rate), "categorical_crossentropy")
    model.fit(batches, epochs=TRAIN_EPOCHS, shuffle=False, verbose=0)
    return model


def fresh_cases(label: str, n: int = CANDIDATES) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scan, lesion mask) of `n` fresh demo-generator cases of `label`."""
    return [
        synthetic.render_case(label, synthetic.case_rng(FRESH_SEED, label, i), SIZE)
        for i in range(n)
    ]


def outline(mask: np.ndarray) -> tuple[float, float]:
    """(width / height of the lesion's bounding box, solidity: area / convex hull area)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)
    _, _, width, height = cv2.boundingRect(contour)
    return width / height, cv2.contourArea(contour) / cv2.contourArea(cv2.convexHull(contour))


def faintest_distractor(scan: np.ndarray) -> float:
    """How light the darkest lesion-sized spot is at the depths where the generator puts lesions,
    relative to the scan's median there (gain aside): near 1 for a normal scan whose fat lobules
    and shadows (drawn in every class) are faint."""
    grey = cv2.GaussianBlur(scan[..., 0].astype(np.float32), (0, 0), SIZE / 32)
    band = grey[int(0.3 * SIZE) : int(0.6 * SIZE)]
    return float(band.min() / np.median(band))


def unmistakable(label: str) -> np.ndarray:
    """The class's textbook case among fresh ones: benign the widest, most convex outline;
    malignant the least convex (most spiculated) one; normal the faintest distractors."""
    cases = fresh_cases(label)
    scores = []
    for scan, mask in cases:
        if label == "normal":
            scores.append(faintest_distractor(scan))
            continue
        aspect, solidity = outline(mask)
        scores.append(aspect * solidity if label == "benign" else -solidity)
    return cases[int(np.argmax(scores))][0]


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(
        buffer, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {})
    )
    return buffer.getvalue()


def probabilities(classifier: Classifier, images: list) -> np.ndarray:
    answers = classifier.predict_many(images)
    return np.array([[a["probabilities"][c] for c in classifier.classes] for a in answers])


@pytest.mark.parametrize("label", synthetic.CLASSES)
def test_an_unmistakable_case_of_each_class_is_classified_as_it(demo, label):
    assert demo.predict(unmistakable(label))["class"] == label


def decided(classifier: Classifier, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(class index, its served probability) per image under the decision rule, the OOD refusal
    aside: that is the OOD detector's behaviour, not the classifier's, and it is not
    mirror-invariant yet (measured on one demo model: 4 of 72 scans flip between answered and
    refused when mirrored; the OOD statistics come from the unmirrored train split)."""
    rule = classifier.release.rule
    raw, _ = classifier.forward(np.stack([classifier.engine.prepare(i) for i in images]))
    labels, _ = decide(rule, raw)
    return labels, calibrate(raw, rule.temperature)[np.arange(len(labels)), labels]


@pytest.mark.parametrize("label", synthetic.CLASSES)
def test_a_mirrored_scan_keeps_its_class(demo, label):
    """Every scan the model is sure of keeps its class mirrored; a borderline one may tip either
    way, as under any small change (measured on one demo model: 1 of 72, at p 0.52)."""
    scans = [scan for scan, _ in fresh_cases(label, MIRRORED)]
    labels, p = decided(demo, scans)
    mirrored, _ = decided(demo, [scan[:, ::-1] for scan in scans])
    sure = p >= SURE
    assert sure.mean() >= SURE_SHARE, f"only {sure.sum()} of {len(scans)} answered with p >= {SURE}"
    np.testing.assert_array_equal(mirrored[sure], labels[sure])


def test_a_high_quality_jpeg_of_a_scan_moves_no_probability_by_more_than_the_tolerance(demo):
    scans = [scan for label in synthetic.CLASSES for scan, _ in fresh_cases(label)]
    png = [decode_upload(encoded(scan, "PNG")) for scan in scans]
    jpeg = [decode_upload(encoded(scan, "JPEG")) for scan in scans]
    assert all(
        np.array_equal(np.asarray(p.convert("RGB")), s) for p, s in zip(png, scans, strict=True)
    )
    change = np.abs(probabilities(demo, png) - probabilities(demo, jpeg))
    assert change.max() < JPEG_TOLERANCE, (
        f"largest change {change.max():.4f} (scan {change.max(1).argmax()})"
    )
