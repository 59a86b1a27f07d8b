"""The serving flavor: encoded images or pixel arrays in, probabilities and the class out."""

import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from PIL import Image

from pipeline import pyfunc
from tests.factories import CLASSES, label_image
from tests.registry_models import disk_model

EXAMPLE = label_image(1, 32, np.random.default_rng(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("serving") / "model"
    metadata = {"classes": list(CLASSES), "arch": "disk-good", "synthetic_data": True}
    return pyfunc.save_model(disk_model("good"), path, metadata, run_id="abc123", example=EXAMPLE)


@pytest.fixture(scope="module")
def served(saved):
    return mlflow.pyfunc.load_model(str(saved))


def png_b64(label_index: int, size: int = 32) -> str:
    import cv2

    image = label_image(label_index, size, np.random.default_rng(label_index))
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return base64.b64encode(encoded.tobytes()).decode()


def test_one_model_has_both_the_keras_and_the_serving_flavor_with_its_code(saved):
    mlmodel = Model.load(str(saved / "MLmodel"))
    assert {"keras", "python_function"} <= set(mlmodel.flavors)
    assert mlmodel.flavors["python_function"]["loader_module"] == "pipeline.pyfunc"
    assert (saved / "code" / "pipeline" / "inference.py").is_file()
    requirements = (saved / "requirements.txt").read_text()
    assert "keras==" in requirements and "pillow==" in requirements
    assert mlflow.keras.load_model(str(saved)).output_shape == (None, len(CLASSES))


def test_the_input_example_is_the_given_image_in_the_serving_format_and_it_predicts(saved, served):
    mlmodel = Model.load(str(saved / "MLmodel"))
    assert mlmodel.signature is None  # on purpose: see pipeline/pyfunc.py
    example = mlmodel.load_input_example(str(saved))
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(example["image"][0]))))
    assert np.array_equal(decoded, EXAMPLE)
    request = json.loads((saved / "serving_input_example.json").read_text())
    assert request == {"inputs": {"image": example["image"]}}
    result = served.predict(request["inputs"])
    assert len(result) == 1 and result["predicted_class"][0] in CLASSES


def test_base64_images_in_a_dataframe_get_one_record_each(served):
    frame = pd.DataFrame({"image": [png_b64(k) for k in range(3)]})
    result = served.predict(frame)
    assert result["predicted_class"].tolist() == list(CLASSES)
    for probabilities in result["probabilities"]:
        assert set(probabilities) == set(CLASSES)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result["model"][0]["version"] == "run:abc123"


def test_pixel_arrays_and_a_dict_of_base64_give_the_same_answer(served):
    rng = np.random.default_rng(7)
    batch = np.stack([label_image(k, 32, rng) for k in range(3)])
    by_array = served.predict(batch)
    assert by_array["predicted_class"].tolist() == list(CLASSES)
    one = served.predict(batch[1].astype(float))
    assert one["predicted_class"].tolist() == ["malignant"]
    by_dict = served.predict({"image": [png_b64(1)]})
    assert by_dict["predicted_class"].tolist() == ["malignant"]


@pytest.mark.parametrize(
    "bad, status",
    [
        ("not base64!", "400"),
        (base64.b64encode(b"%PDF-1.4 not an image").decode(), "415"),
        (base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode(), "400"),
    ],
)
def test_a_bad_image_is_refused_with_the_status_and_the_reason(served, bad, status):
    with pytest.raises(MlflowException) as caught:
        served.predict(pd.DataFrame({"image": [bad]}))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert caught.value.message.startswith(f"{status}: ")


def test_arrays_of_the_wrong_shape_or_range_are_refused(served):
    with pytest.raises(MlflowException, match="H x W x 3"):
        served.predict(np.zeros((4, 4)))
    with pytest.raises(MlflowException, match="0-255"):
        served.predict(np.full((8, 8, 3), 300.0))
