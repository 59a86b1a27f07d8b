"""Fixtures shared across the unit and integration suites."""

import pytest

CLASSES = ("benign", "malignant", "normal")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(folder with model.keras, keras model): an untrained 32 px ResNet50,
    built once per session for the serving tests (building one takes ~20 s here)."""
    from pipeline.backbones import build_classifier

    folder = tmp_path_factory.mktemp("tiny-model")
    model = build_classifier("resnet50", 32, CLASSES)
    model.save(folder / "model.keras")
    return folder, model
