"""pipeline.serving.classifier: one core, one answer, from every kind of model source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import images
from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.engine import KerasEngine
from pipeline.serving.release import read_release
from pipeline.serving.uploads import decode_upload
from tests.dicoms import make_dicom, ultrasound
from tests.factories import CLASSES, encode, enter_project, scan
from tests.registry_models import register_model


@pytest.fixture(scope="module")
def classifier(mini_release) -> Classifier:
    return load_classifier(mini_release[0])


def test_an_answer_has_the_rules_class_the_probabilities_and_the_identity(classifier):
    result = classifier.predict(scan())
    probabilities = result["probabilities"]
    assert list(probabilities) == list(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    decision = result["decision"]
    assert decision["threshold"] == 0.3
    assert decision["positive_class"] == "malignant"
    assert result["class"] == max(probabilities, key=probabilities.get)
    assert decision["refer"] == (
        probabilities["malignant"] >= 0.3 or result["class"] == "malignant"
    )
    assert result["model"] == {"name": "tumor-classifier", "version": "3", "arch": "resnet50"}
    assert result["synthetic_data"] is True
    json.dumps(result)  # JSON-ready: plain floats, bools and strings


def test_a_batch_gives_the_answers_of_its_images_one_by_one(classifier):
    images = [scan(seed) for seed in range(4)]
    together = classifier.predict_many(images)
    for image, result in zip(images, together, strict=True):
        alone = classifier.predict(image)
        assert result["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-6)
        assert result["class"] == alone["class"]


def test_a_grey_upload_gets_the_same_answer_as_its_rgb_copy(classifier):
    rgb = scan(3)
    from_grey = classifier.predict(decode_upload(encode(rgb[:, :, 0])))
    assert from_grey["probabilities"] == pytest.approx(classifier.predict(rgb)["probabilities"])


def test_images_are_fitted_like_prepare_does_so_any_size_gives_one_input_shape(classifier):
    engine = classifier.engine
    assert engine.input_size == (32, 32)
    assert engine.keep_aspect
    for shape in ((40, 56, 3), (300, 120, 3), (32, 32, 3)):
        assert engine.prepare(np.zeros(shape, np.uint8)).shape == (32, 32, 3)


@pytest.mark.parametrize("shape", [(90, 130), (131, 77), (64, 64), (20, 33)])
def test_a_grey_scan_is_fitted_as_grey_to_exactly_the_pixels_of_its_rgb_fit(classifier, shape):
    """The fast path (one channel resized, then copied) against Pillow's RGB resize and RGB
    letterbox, value for value; a colour image takes the RGB path."""
    grey = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    rgb = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    size, keep = classifier.engine.input_size[0], classifier.engine.keep_aspect
    reference = np.asarray(images.fit(rgb, size, keep_aspect=keep), dtype=np.float32)
    np.testing.assert_array_equal(classifier.engine.prepare(rgb), reference)
    np.testing.assert_array_equal(classifier.engine.prepare(Image.fromarray(grey)), reference)
    tinted = np.asarray(rgb).copy()
    tinted[0, 0, 2] ^= 1
    colour = np.asarray(images.fit(Image.fromarray(tinted), size, keep), dtype=np.float32)
    np.testing.assert_array_equal(classifier.engine.prepare(tinted), colour)


def test_a_rule_whose_classes_do_not_match_the_model_is_an_error(mini_release):
    release = read_release(mini_release[0])
    wrong = type(release)(release.folder, type(release.rule)(("a", "malignant")), {})
    with pytest.raises(ValueError, match="3 outputs"):
        Classifier(KerasEngine(mini_release[1]), wrong)


def test_missing_sources_say_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="models:/"):
        load_classifier(tmp_path / "nothing")


def test_registry_alias_version_and_run_sources_give_the_same_answer(tmp_path, monkeypatch):
    enter_project(monkeypatch, tmp_path)
    version = register_model("good", alias="champion", threshold=0.25)
    answers = []
    for source in ("models:/tumor-classifier@champion", f"models:/tumor-classifier/{version}"):
        loaded = load_classifier(source)
        assert loaded.release.identity()["version"] == version
        assert loaded.release.rule.threshold == 0.25
        answers.append(loaded.predict(scan())["probabilities"])
    assert answers[0] == pytest.approx(answers[1], abs=1e-9)


def test_a_dicom_upload_gets_the_same_answer_as_a_png_of_its_region(classifier):
    """The page, API, pyfunc and batch scorer decode through decode_upload: one answer."""
    region = ultrasound("malignant", 160, 120)
    png = decode_upload(encode(region, "PNG"))
    for photometric in ("RGB", "MONOCHROME2"):
        dicom_image = decode_upload(make_dicom(region, photometric=photometric, syntax="rle"))
        want = png if photometric == "RGB" else decode_upload(encode(np.asarray(png.convert("L"))))
        got, expected = classifier.predict(dicom_image), classifier.predict(want)
        assert got["class"] == expected["class"]
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
