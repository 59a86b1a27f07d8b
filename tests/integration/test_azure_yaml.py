"""The Azure ML YAMLs validate offline with azure-ai-ml's own loaders, and the pins agree.

Needs `.venv-azure-ai-ml` (`make azure-ml-env`): azure-ai-ml is kept out of the project's
environment (its opentelemetry pins drift from MLflow's; the design keeps deploy tooling apart).
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.serving.collection import INPUTS, OUTPUTS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT / "deploy" / "azure"
PYTHON = ROOT / ".venv-azure-ai-ml" / "bin" / "python"


def validate(folder: Path) -> subprocess.CompletedProcess:
    if not PYTHON.is_file():
        pytest.skip("azure-ai-ml not installed: run `make azure-ml-env` (.venv-azure-ai-ml)")
    command = [str(PYTHON), str(AZURE / "validate.py"), str(folder)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def loaded() -> dict:
    """deploy/azure/ as azure-ai-ml loads it (validate.py's summary), read once."""
    result = validate(AZURE)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_endpoint_and_deployment_load_with_probes_limits_and_settings(loaded):
    deployment = loaded["deployment"]
    assert deployment["endpoint_name"] == loaded["endpoint"]["name"]
    assert deployment["instance_count"] >= 1
    assert deployment["instance_type"]
    assert deployment["request_timeout_ms"] > 0
    assert deployment["liveness_period"]
    assert deployment["readiness_period"]
    assert deployment["scoring_script"] == "score.py"
    settings = deployment["environment_variables"]
    assert int(settings["WORKER_COUNT"]) == deployment["max_concurrent_requests_per_instance"]
    assert int(settings["MAX_UPLOAD_BYTES"]) > 0


def test_the_data_collector_takes_what_score_py_collects_and_never_the_request_payload(loaded):
    """The section survives azure-ai-ml's loader; the collections it enables are the names
    score.py collects under; payload logging (request: the image itself) stays off."""
    collector = loaded["deployment"]["data_collector"]
    assert collector is not None, "deployment.yml lost its data_collector section"
    collections = collector["collections"]
    assert {name for name, on in collections.items() if on == "true"} == {INPUTS, OUTPUTS}
    assert collections["request"] == collections["response"] == "false"
    assert collector["sampling_rate"] == 1.0
    assert collector["rolling_rate"] == "hour"


def test_a_broken_deployment_yaml_is_refused(tmp_path):
    for name in ("endpoint.yml", "deployment.yml", "conda.yml"):
        shutil.copyfile(AZURE / name, tmp_path / name)
    broken = yaml.safe_load((tmp_path / "deployment.yml").read_text())
    broken["instance_count"] = "two"
    (tmp_path / "deployment.yml").write_text(yaml.safe_dump(broken))
    result = validate(tmp_path)
    assert result.returncode == 1
    assert "invalid:" in result.stderr


def conda_and_requirements(conda_file: str, requirements_file: str) -> tuple[list, list]:
    """(the pip pins of a conda file, the lines of a requirements file), comments left out."""
    conda = yaml.safe_load((AZURE / conda_file).read_text())
    (pip,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    lines = (AZURE / requirements_file).read_text().splitlines()
    return pip, [line for line in lines if line.strip() and not line.startswith("#")]


def test_the_conda_environment_pins_exactly_the_local_scoring_requirements():
    pip, required = conda_and_requirements("conda.yml", "requirements.txt")
    assert sorted(pip) == sorted(required)
    assert all("==" in pin for pin in pip)


def test_the_onnx_conda_environment_pins_exactly_its_requirements_and_no_tensorflow():
    pip, required = conda_and_requirements("conda-onnx.yml", "requirements-onnx.txt")
    assert sorted(pip) == sorted(required)
    assert all("==" in pin for pin in pip)
    names = {pin.split("==")[0] for pin in pip}
    assert "onnxruntime" in names
    assert not names & {"tensorflow", "tensorflow-cpu", "keras"}
