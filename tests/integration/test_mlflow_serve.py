"""`mlflow models serve -m models:/tumor-classifier@champion` answers real HTTP requests."""

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import promote
from pipeline.config import parse_params
from tests.factories import CLASSES, enter_project, label_image, make_prepared
from tests.registry_models import register_model
from tests.servers import free_port, running

pytestmark = pytest.mark.slow


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def champion_server(tmp_path, monkeypatch):
    enter_project(monkeypatch, tmp_path)
    make_prepared(tmp_path, per_split={"train": 1, "val": 1, "test": 3})
    register_model("good")
    promote.run(parse_params({"mlflow": {"experiment": "tests"}}))
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve"]
    command += ["-m", "models:/tumor-classifier@champion", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    url = f"http://127.0.0.1:{port}"
    with running(command, f"{url}/ping", tmp_path / "serve.log", env=env, startup_seconds=120):
        yield url


def test_the_champion_answers_a_posted_image_and_refuses_a_bad_one(champion_server):
    image = label_image(1, 48, np.random.default_rng(3))  # a malignant demo image, 48 px
    png = base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode()
    body = json.dumps({"dataframe_records": [{"image": png}]}).encode()
    status, answer = post(f"{champion_server}/invocations", body, "application/json")
    assert status == 200, answer
    (prediction,) = answer["predictions"]
    assert prediction["predicted_class"] == "malignant"
    assert set(prediction["probabilities"]) == set(CLASSES)
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    pixels = json.dumps({"inputs": image.tolist()}).encode()
    status, answer = post(f"{champion_server}/invocations", pixels, "application/json")
    assert status == 200 and answer["predictions"][0]["predicted_class"] == "malignant"

    junk = base64.b64encode(b"GIF89a but not really").decode()
    body = json.dumps({"dataframe_records": [{"image": junk}]}).encode()
    status, answer = post(f"{champion_server}/invocations", body, "application/json")
    assert status == 400
    assert "400: " in answer["message"] or "415: " in answer["message"]
