"""Fixtures shared across the unit and integration suites."""

from pathlib import Path

import pytest

from tests.browsers import CHROMIUM, LAUNCH_ARGS

CLASSES = ("benign", "malignant", "normal")

# The longest files, longest first. `make test` runs files on two workers (pytest-xdist,
# --dist loadfile, --no-loadscope-reorder): started first, the long ones overlap and the short
# ones fill the gaps, instead of two long ones queueing on one worker at the end. Ordered by
# `PYTEST_ADDOPTS=--durations=40 make test` in a fresh clone; a file missing here starts later.
LONGEST_FIRST = (
    "test_dvc_repro.py",  # ~14 min: a tiny repro, its checks, a queued experiment, a rerun
    "test_third_backbone.py",  # ~4 min: a tiny repro with three backbones
    "test_dicom_repro.py",  # ~4 min: a tiny repro from a DICOM folder
    "test_backends.py",
    "test_azure_train_job.py",
    "test_model_behaviour.py",
    "test_surfaces.py",
    "test_train.py",
    "test_onnx_parity.py",
    "test_wheel.py",
    "test_distribution.py",
    "test_predict.py",
    "test_mlflow_view.py",
    "test_web_page.py",
    "test_evaluate.py",
    "test_cam.py",
    "test_promote.py",
    "test_select.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sort the files longest first; tests keep their order within a file (stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(folder with model.keras, keras model): an untrained 32 px ResNet50,
    built once per session for the serving tests (building one takes ~20 s here)."""
    from pipeline.backbones import build_classifier

    folder = tmp_path_factory.mktemp("tiny-model")
    model = build_classifier("resnet50", 32, CLASSES)
    model.save(folder / "model.keras")
    return folder, model


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium per test process, shared by every browser test it runs (the page,
    the DVC plots, the MLflow view): a launch costs seconds on a loaded machine."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"chromium not installed at {CHROMIUM}: run `make browser` (apt-get install chromium)"
        )
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield browser
        browser.close()
