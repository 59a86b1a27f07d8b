"""The packaged champion served by azureml-inference-server-http (`azmlinfsrv`) on loopback.

Needs `.venv-azureml-server` (`make azure-server-env`): the inference server cannot share the
project's environment (it pins opentelemetry and pydantic below MLflow 3's).
"""

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import package, promote
from pipeline.config import parse_params
from tests.factories import CLASSES, enter_project, label_image, make_prepared
from tests.registry_models import register_model
from tests.servers import free_port, running

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / ".venv-azureml-server" / "bin" / "azmlinfsrv"
AZURE_ML_PYTHON = ROOT / ".venv-azure-ai-ml" / "bin" / "python"
MAX_UPLOAD_BYTES = 200_000


def png(label_index: int, size: int = 48) -> bytes:
    image = label_image(label_index, size, np.random.default_rng(label_index))
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("azure")
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        make_prepared(root, per_split={"train": 1, "val": 1, "test": 3})
        register_model("good", tags={"operating_point_threshold": "0.300000"})
        raw = {"mlflow": {"experiment": "tests"}}
        (root / "params.yaml").write_text(json.dumps(raw))  # JSON is YAML
        promote.run(parse_params(raw))
        assert package.main([]) == 0  # the real CLI, as `make package-azure` runs it
    return root / "build" / "azure"


@pytest.fixture(scope="module")
def scoring_url(packaged, tmp_path_factory):
    if not SERVER.is_file():
        pytest.skip("azmlinfsrv not installed: run `make azure-server-env` (.venv-azureml-server)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES), TF_CPP_MIN_LOG_LEVEL="2", WORKER_COUNT="1")
    command = [str(SERVER), "--entry_script", "score.py", "--model_dir", str(packaged / "model")]
    command += ["--port", str(port)]
    log_path = tmp_path_factory.mktemp("logs") / "azmlinfsrv.log"
    ready = f"http://127.0.0.1:{port}/"
    with running(command, ready, log_path, env=env, cwd=packaged / "code", startup_seconds=120):
        yield f"http://127.0.0.1:{port}/score"


def post(url: str, body: bytes, content_type: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_the_package_holds_the_champion_its_identity_and_only_the_scoring_code(packaged):
    registration = json.loads((packaged / "model" / "registration.json").read_text())
    assert registration["version"] == "1" and registration["alias"] == "champion"
    assert registration["operating_point_threshold"] == pytest.approx(0.3)
    assert json.loads((packaged / "model" / "classes.json").read_text()) == list(CLASSES)
    code = sorted(p.name for p in (packaged / "code" / "pipeline").iterdir())
    assert code == ["__init__.py", "files.py", "images.py", "inference.py"]
    for name in ("endpoint.yml", "deployment.yml", "conda.yml", "code/score.py"):
        assert (packaged / name).is_file(), name


def test_the_packaged_yamls_validate_with_azure_ai_ml(packaged):
    if not AZURE_ML_PYTHON.is_file():
        pytest.skip("azure-ai-ml not installed: run `make azure-ml-env` (.venv-azure-ai-ml)")
    validate = [str(AZURE_ML_PYTHON), str(ROOT / "deploy" / "azure" / "validate.py"), str(packaged)]
    result = subprocess.run(validate, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert Path(summary["deployment"]["model_path"]) == packaged / "model"


def test_a_good_image_as_raw_bytes_multipart_or_base64_json_is_scored(scoring_url):
    image = png(1)
    answers = [post(scoring_url, image, "image/png")]
    answers.append(post(scoring_url, *multipart("image", "case.png", image)))
    body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
    answers.append(post(scoring_url, body, "application/json"))
    for status, answer in answers:
        assert status == 200, answer
        assert answer["predicted_class"] == "malignant"
        assert set(answer["probabilities"]) == set(CLASSES)
        assert answer["model"]["name"] == "tumor-classifier"
        assert answer["model"]["version"] == "1"
        assert answer["malignant_decision"]["threshold"] == pytest.approx(0.3)
        assert answer["malignant_decision"]["positive"] is True


@pytest.mark.parametrize(
    "body, content_type, status, words",
    [
        (png(0)[:60], "image/png", 400, "truncated"),  # a corrupt file: the PNG cut short
        (b"%PDF-1.7\n1 0 obj << >> endobj\n", "application/pdf", 415, "not a supported image"),
        (b"just some text, not a picture", None, 415, "not a supported image"),
        (b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES), "image/png", 413, "over"),
        (b'{"picture": "abc"}', "application/json", 400, "JSON body must be"),
        (b"", "image/png", 400, "empty"),
    ],
    ids=["corrupt", "pdf", "text", "oversize", "bad-json", "empty"],
)
def test_bad_input_gets_a_4xx_with_a_reason(scoring_url, body, content_type, status, words):
    got, answer = post(scoring_url, body, content_type)
    assert got == status, answer
    assert answer["status"] == status and words in answer["error"]
