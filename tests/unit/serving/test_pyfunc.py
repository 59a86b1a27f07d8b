"""The MLflow pyfunc: logged through the public API, it answers like every other surface."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from PIL import Image

from pipeline import tracking
from pipeline.serving import pyfunc
from pipeline.serving.classifier import load_classifier
from pipeline.serving.engine import OnnxEngine
from pipeline.serving.release import find_release
from pipeline.serving.uploads import decode_upload
from tests.factories import encode, enter_project, label_image, scan

EXAMPLE = label_image(1, 32, np.random.default_rng(0))


@pytest.fixture(scope="module")
def logged(mini_release, tmp_path_factory):
    root = tmp_path_factory.mktemp("pyfunc")
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        tracking.setup("tests")
        with mlflow.start_run():
            info = pyfunc.log_release(mini_release[0], EXAMPLE)
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "dl")))
        yield info, local, mlflow.pyfunc.load_model(str(local))


def b64(image: np.ndarray) -> str:
    return base64.b64encode(encode(image)).decode()


def answers_beside(served, reference) -> list[tuple[dict, dict]]:
    """(the pyfunc's row, `reference`'s answer) for each of three scans, sent as one request."""
    images = [scan(seed) for seed in range(3)]
    out = served.predict(pd.DataFrame({"image": [b64(i) for i in images]}))
    expected = [reference.predict(decode_upload(encode(image))) for image in images]
    return list(zip(out.to_dict("records"), expected, strict=True))


def test_the_model_ships_the_serving_package_and_the_release_not_the_pipeline(logged):
    _, local, _ = logged
    mlmodel = Model.load(str(local / "MLmodel"))
    assert "python_function" in mlmodel.flavors
    assert mlmodel.model_id
    code = local / "code" / "pipeline"
    shipped = {p.relative_to(code).as_posix() for p in code.rglob("*.py")}
    assert {"serving/rule.py", "serving/classifier.py", "images.py"} <= shipped
    assert not {"train.py", "config.py", "tracking.py", "select.py"} & shipped
    assert find_release(local / "artifacts").name == "selected"  # the folder, as select wrote it
    assert not list(local.rglob("*.pkl"))  # models from code: nothing pickled
    requirements = (local / "requirements.txt").read_text()
    assert "keras==" in requirements
    assert "pillow==" in requirements
    assert "onnxruntime==" in requirements  # the engine a release with model.onnx serves on


def test_the_signature_and_input_example_show_the_request_format(logged):
    _, local, _ = logged
    mlmodel = Model.load(str(local / "MLmodel"))
    assert mlmodel.signature.inputs.input_names() == ["image"]
    request = json.loads((local / "serving_input_example.json").read_text())
    decoded = Image.open(io.BytesIO(base64.b64decode(request["inputs"]["image"][0])))
    assert np.array_equal(np.asarray(decoded), EXAMPLE)


def test_it_answers_exactly_as_the_serving_core(logged, mini_release):
    _, _, served = logged
    for row, expected in answers_beside(served, load_classifier(mini_release[0])):
        assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
        assert row["class"] == expected["class"]
        assert row["decision"] == expected["decision"]
        assert row["model"] == {"name": "tumor-classifier", "version": "3", "arch": "resnet50"}


def test_a_release_with_model_onnx_is_served_on_onnx_runtime_with_the_keras_answers(
    onnx_release, tmp_path, monkeypatch
):
    enter_project(monkeypatch, tmp_path)
    tracking.setup("tests")
    with mlflow.start_run():
        info = pyfunc.log_release(onnx_release, EXAMPLE)
    served = mlflow.pyfunc.load_model(info.model_uri)
    assert isinstance(served.unwrap_python_model().classifier.engine, OnnxEngine)
    keras = load_classifier(onnx_release, engine="keras")
    for row, expected in answers_beside(served, keras):
        assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)
        assert row["class"] == expected["class"]


@pytest.mark.parametrize(
    ("value", "status"),
    [("data:xyz", "400"), ("not base64!", "400"), (base64.b64encode(b"%PDF-1.7").decode(), "415")],
)
def test_bad_images_are_400_class_errors_with_the_status_first(logged, value, status):
    _, _, served = logged
    with pytest.raises(MlflowException) as refused:
        served.predict(pd.DataFrame({"image": [value]}))
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert str(refused.value.message).startswith(f"{status}: ")


def _scoring_server_answer(served, body: dict) -> tuple[int, bytes]:
    """What `mlflow models serve` sends back for `body`, from MLflow's own request handler."""
    from mlflow.pyfunc import scoring_server

    schema = served.metadata.get_input_schema()
    try:
        response = scoring_server.invocations(json.dumps(body), "application/json", served, schema)
    except MlflowException as exc:
        return exc.get_http_status_code(), exc.serialize_as_json().encode()
    return response.status, str(response.response).encode()


def test_a_refused_upload_is_never_sent_back(logged):
    """Issue 30: MLflow rewrote the refusal as "Failed to predict data '<request>'", so a refused
    CT file came back whole, base64 with its patient's name in it."""
    from tests.dicoms import MARKERS, make_dicom

    _, _, served = logged
    upload = base64.b64encode(make_dicom(scan(0), modality="CT")).decode()
    status, body = _scoring_server_answer(served, {"inputs": {"image": [upload]}})
    assert status == 400
    assert len(body) < 1024
    assert json.loads(body)["message"].startswith("422: not_ultrasound")
    runs = {upload[i : i + 16] for i in range(0, len(upload) - 16)}
    assert not any(run in body.decode() for run in runs)
    assert not any(marker in body.decode() for marker in MARKERS.values())


def test_images_per_request_and_bytes_per_image_are_capped(logged, monkeypatch):
    _, _, served = logged
    model = served.unwrap_python_model()
    monkeypatch.setattr(model, "max_images", 2)
    status, body = _scoring_server_answer(served, {"inputs": {"image": [b64(scan())] * 3}})
    assert status == 400
    assert json.loads(body)["message"].startswith("413: 3 images in one request")
    monkeypatch.setattr(model, "limits", pyfunc.Limits(max_bytes=20_000))
    long = "A" * 40_000  # decoded only after the length check: 413, not a 400 for bad base64
    status, body = _scoring_server_answer(served, {"inputs": {"image": [b64(scan()), long]}})
    assert json.loads(body)["message"].startswith("413: image 2 of 2: base64 image of 40000")
