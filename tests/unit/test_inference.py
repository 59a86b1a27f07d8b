"""pipeline.inference: careless uploads become clean refusals; every model source loads the same."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.inference import (
    Classifier,
    InvalidInput,
    decode_upload,
    load_classifier,
    sniff_format,
)

CLASSES = ("benign", "malignant", "normal")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """(folder with model.keras + classes.json, model): the layer contract of pipeline.backbones
    (resize, preprocess, backbone sub-model, pool, dropout, predictions) with a two-layer backbone,
    so the loader tests save and load in a second instead of ResNet50's ten."""
    import keras

    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, strides=4, activation="relu")],
        name="backbone",
    )
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(32, 32, pad_to_aspect_ratio=True, name="resize")(inputs)
    x = keras.layers.Rescaling(1 / 255, name="preprocess")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(x))
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="resnet50_classifier")
    folder = tmp_path_factory.mktemp("mini-model")
    model.save(folder / "model.keras")
    (folder / "classes.json").write_text(json.dumps(list(CLASSES)))
    return folder, model


@pytest.fixture(scope="module")
def classifier(tiny) -> Classifier:
    folder, model = tiny
    return Classifier(model, CLASSES, 0.5, "tiny", "1", "resnet50", True)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming `width` x `height` with one short IDAT: a decompression bomb's header, a few
    dozen bytes that would decode to width x height x 3 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def scan(seed: int = 0, height: int = 40, width: int = 56) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


# --- decode_upload ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"])
def test_supported_formats_decode_to_rgb_by_content(fmt):
    data = encode(scan(), fmt)
    assert sniff_format(data) == fmt
    image = decode_upload(data, 10**6, 10**6)
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8


def test_grey_rgba_palette_and_16bit_uploads_become_rgb():
    grey = scan()[:, :, 0]
    rgba = np.dstack([scan(), np.full((40, 56), 255, np.uint8)])
    deep = (grey.astype(np.uint16) * 257).astype(np.uint16)
    palette = Image.fromarray(grey).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    for data in (encode(grey), encode(rgba), encode(deep), buffer.getvalue()):
        image = decode_upload(data, 10**6, 10**6)
        assert image.shape == (40, 56, 3)
        assert np.array_equal(image[:, :, 0], grey)  # the same pixels whatever the encoding


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"just some text, named scan.png by its sender", 415, "not a supported image"),
        (b"%PDF-1.7\n" + b"0" * 100, 415, "not a supported image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"0" * 100, 415, "not a supported image"),
        (png_header_only(100_000, 100_000), 413, "too_large"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, 400, ""),
    ],
    ids=["empty", "text", "pdf", "eps", "pixel-bomb-header", "broken-png"],
)
def test_bad_uploads_are_refused_with_a_status_and_reason(data, status, words):
    with pytest.raises(InvalidInput) as refused:
        decode_upload(data, max_bytes=10**6, max_pixels=10**6)
    assert refused.value.status == status
    assert words in refused.value.reason and refused.value.reason


def test_uploads_over_the_byte_limit_are_413_before_decoding():
    data = encode(scan())
    with pytest.raises(InvalidInput) as refused:
        decode_upload(data, max_bytes=len(data) - 1, max_pixels=10**6)
    assert refused.value.status == 413 and "limit" in refused.value.reason


def test_truncated_and_tiny_images_are_400():
    data = encode(scan(height=200, width=200))
    for bad in (data[: len(data) // 2], encode(scan(height=8, width=8))):
        with pytest.raises(InvalidInput) as refused:
            decode_upload(bad, 10**6, 10**6)
        assert refused.value.status == 400


# --- Classifier ---------------------------------------------------------------------------------


def test_predict_returns_probabilities_decision_and_identity(classifier):
    result = classifier.predict(scan())
    probabilities = result["probabilities"]
    assert list(probabilities) == list(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result["predicted_class"] == max(probabilities, key=probabilities.get)
    assert result["malignant_probability"] == probabilities["malignant"]
    decision = result["malignant_decision"]
    assert decision["threshold"] == 0.5
    assert decision["positive"] == (probabilities["malignant"] >= 0.5)
    assert result["model"] == {"name": "tiny", "version": "1", "arch": "resnet50"}
    assert result["synthetic_data"] is True
    json.dumps(result)  # JSON-ready: plain floats, bools and strings


def test_the_operating_point_decides_and_its_absence_is_said(tiny):
    model = tiny[1]
    always = Classifier(model, CLASSES, 0.0, "m", "1", "resnet50", False).predict(scan())
    assert always["malignant_decision"]["positive"] is True
    argmax = Classifier(model, CLASSES, None, "m", "1", "resnet50", False).predict(scan())
    assert argmax["malignant_decision"]["threshold"] is None
    assert "argmax" in argmax["malignant_decision"]["rule"]
    assert argmax["malignant_decision"]["positive"] == (argmax["predicted_class"] == "malignant")


def test_a_grey_upload_gets_the_same_answer_as_its_rgb_copy(classifier):
    rgb = scan(3)
    from_grey = classifier.predict(decode_upload(encode(rgb[:, :, 0]), 10**6, 10**6))
    assert from_grey["probabilities"] == pytest.approx(classifier.predict(rgb)["probabilities"])


def test_images_are_fitted_like_prepare_does_so_any_size_gives_one_input_shape(classifier):
    assert classifier.input_size == (32, 32) and classifier.keep_aspect
    for shape in ((40, 56, 3), (300, 120, 3), (32, 32, 3)):
        assert classifier.prepare(np.zeros(shape, np.uint8)).shape == (1, 32, 32, 3)


def test_a_class_list_that_does_not_match_the_model_is_an_error(tiny):
    with pytest.raises(ValueError, match="3 outputs"):
        Classifier(tiny[1], ("a", "b"), None, "m", "1", "resnet50", False)


# --- load_classifier ----------------------------------------------------------------------------


def test_a_keras_file_loads_with_classes_json_beside_it(mini):
    loaded = load_classifier(str(mini[0] / "model.keras"))
    assert loaded.classes == CLASSES and loaded.arch == "resnet50" and loaded.version == "local"
    assert loaded.threshold is None
    expected = Classifier(mini[1], CLASSES, None, "m", "1", "x", False).predict(scan())
    assert loaded.predict(scan())["probabilities"] == pytest.approx(expected["probabilities"])


def test_the_selected_model_folder_names_its_registered_version(mini, tmp_path):
    selected = tmp_path / "selected"
    selected.mkdir()
    (selected / "model.keras").write_bytes((mini[0] / "model.keras").read_bytes())
    (selected / "classes.json").write_text(json.dumps(list(CLASSES)))
    registration = {
        "model_name": "tumor-classifier",
        "version": "7",
        "winner": "resnet50",
        "synthetic_data": True,
    }
    (selected / "registration.json").write_text(json.dumps(registration))
    loaded = load_classifier(str(selected / "model.keras"))
    assert (loaded.name, loaded.version, loaded.synthetic) == ("tumor-classifier", "7", True)


def test_unknown_sources_say_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="models:/"):
        load_classifier(str(tmp_path / "nothing.keras"))


def test_registry_alias_run_and_folder_sources_load_with_tags_and_metadata(
    mini, tmp_path, monkeypatch
):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment(
        "serve-test", artifact_location=(tmp_path / "art").as_uri()
    )
    folder = tmp_path / "mlflow-model"
    metadata = {"classes": list(CLASSES), "arch": "resnet50", "synthetic_data": True}
    mlflow.keras.save_model(mini[1], str(folder), metadata=metadata)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(folder), "model")
    tags = {
        "arch": "resnet50",
        "operating_point_threshold": "0.250000",
        "data_kind": "synthetic-demo",
    }
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "tumor-classifier", tags=tags)
    MlflowClient().set_registered_model_alias("tumor-classifier", "champion", version.version)

    expected = Classifier(mini[1], CLASSES, None, "m", "1", "x", False).predict(scan())[
        "probabilities"
    ]
    for source in (
        "models:/tumor-classifier@champion",
        f"models:/tumor-classifier/{version.version}",
        f"runs:/{run.info.run_id}/model",
    ):
        loaded = load_classifier(source)
        assert (loaded.name, loaded.version, loaded.arch) == ("tumor-classifier", "1", "resnet50")
        assert loaded.threshold == 0.25 and loaded.synthetic and loaded.classes == CLASSES
        assert loaded.predict(scan())["probabilities"] == pytest.approx(expected, abs=1e-5)
    local = load_classifier(str(folder))
    assert local.classes == CLASSES and local.threshold is None and local.synthetic
