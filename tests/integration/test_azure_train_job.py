"""The Azure ML training job: its YAML loads offline with azure-ai-ml, and its command runs here.

The command runs in `.venv-azureml-train`, built by `make azure-train-env` from the same pins as
the job's conda file (requirements-train.txt; only jax's `cuda12` extra differs), on a copy of
the project without `.git` (as Azure ML uploads it), on tiny params and one training stage.
"""

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.factories import CLASSES, QUICK_XLA_FLAGS, label_image
from tests.repos import clean_env, project_copy, write_params

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT / "deploy" / "azure"
AZURE_ML_PYTHON = ROOT / ".venv-azure-ai-ml" / "bin" / "python"
TRAIN_ENV = ROOT / ".venv-azureml-train"


def check(job_file: Path) -> subprocess.CompletedProcess:
    if not AZURE_ML_PYTHON.is_file():
        pytest.skip("azure-ai-ml not installed: run `make azure-ml-env` (.venv-azure-ai-ml)")
    command = [str(AZURE_ML_PYTHON), str(AZURE / "submit_train.py"), "--check"]
    return subprocess.run(
        [*command, "--file", str(job_file)], capture_output=True, text=True, timeout=120
    )


def test_the_training_job_loads_offline_with_its_gpu_compute_data_and_jax():
    result = check(AZURE / "train-job.yml")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["type"] == "command"
    assert job["compute"].startswith("azureml:")
    assert job["environment_variables"]["KERAS_BACKEND"] == "jax"
    assert job["inputs"]["raw"]["type"] == "uri_folder"
    assert job["inputs"]["raw"]["path"].startswith("azureml:")
    assert "pipeline" in job["outputs"]
    assert job["component"]["command"].startswith("bash deploy/azure/train-job.sh ")
    assert Path(job["component"]["code"]) == ROOT  # the whole project goes up, as a laptop has it


def test_a_broken_training_job_is_refused(tmp_path):
    for name in ("train-job.yml", "train-conda.yml"):
        shutil.copyfile(AZURE / name, tmp_path / name)
    job = yaml.safe_load((tmp_path / "train-job.yml").read_text())
    job["resources"]["instance_count"] = "two"
    job["code"] = str(ROOT)
    (tmp_path / "train-job.yml").write_text(yaml.safe_dump(job))
    result = check(tmp_path / "train-job.yml")
    assert result.returncode == 1
    assert "invalid:" in result.stderr


def test_the_job_environment_pins_the_local_requirements_plus_cuda_only():
    conda = yaml.safe_load((AZURE / "train-conda.yml").read_text())
    (pip,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    lines = (AZURE / "requirements-train.txt").read_text().splitlines()
    local = [line for line in lines if line.strip() and not line.startswith("#")]
    assert sorted(p.replace("jax[cuda12]==", "jax==") for p in pip) == sorted(local)
    assert "jax[cuda12]==" in " ".join(pip)
    assert all("==" in pin for pin in pip)
    assert not any(p.startswith(("tensorflow", "torch")) for p in pip)  # JAX only: small env


def raw_images(folder: Path, per_class: int = 30, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for index, label in enumerate(CLASSES):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / label / f"{label}-{i}.png"), label_image(index, size, rng))
    return folder


def trial_command(sweep: dict, values: dict) -> str:
    """The sweep trial's command with its search-space expressions replaced by `values`."""
    command = sweep["trial"]["command"]
    for name, value in values.items():
        command = command.replace("${{search_space." + name + "}}", str(value))
    return command


def test_a_sweep_trial_trains_in_the_jobs_own_environment_and_reports_to_its_run(tmp_path):
    if not (TRAIN_ENV / ".installed-stamp").is_file():
        pytest.skip("the job's environment is missing: run `make azure-train-env`")
    project = project_copy(tmp_path / "code")
    # JAX compiles each step once (about a CPU-minute here); op by op it would take minutes a step
    write_params(project, {"train": {"run_eagerly": False}}, name="tiny.yaml")
    store = f"sqlite:///{tmp_path / 'workspace.db'}"  # Azure ML sets its own URI in the job
    job_run = in_job_env(  # Azure ML's run for the job, made by the job's own MLflow version
        "c = mlflow.MlflowClient(); print(c.create_run(c.create_experiment('sweep')).info.run_id)",
        store,
    ).strip()
    env = clean_env(project, TRAIN_ENV / "bin")
    env |= {"KERAS_BACKEND": "jax", "MLFLOW_TRACKING_URI": store, "XLA_FLAGS": QUICK_XLA_FLAGS}
    env |= {"MLFLOW_RUN_ID": job_run, "KERAS_HOME": str(tmp_path / ".keras")}
    job = yaml.safe_load((AZURE / "train-job.yml").read_text())
    sweep = yaml.safe_load((AZURE / "sweep-job.yml").read_text())
    assert sweep["trial"]["command"].startswith(job["command"])  # the training job's command
    values = {name: 0.001 for name in sweep["search_space"]}  # the learning rates
    values |= {"resnet_learning_rate": 0.002, "label_smoothing": 0.05, "batch_size": 16}
    values |= {"image_size": 32}
    command = trial_command(sweep, values).replace(
        "${{inputs.raw}}", str(raw_images(tmp_path / "raw"))
    )
    command = command.replace("${{outputs.pipeline}}", str(tmp_path / "out"))
    command = command.replace("${{inputs.params}}", "tiny.yaml")
    command = command.replace("${{inputs.target}}", "train@resnet50")  # one stage is proof enough
    for name, value in {
        "commit": "abc123",
        "dvc_lock": "f00d",
        "data_version": "busi-raw@3",
    }.items():
        command = command.replace("${{inputs." + name + "}}", value)
    result = subprocess.run(
        ["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "models/trained/resnet50/model.keras").is_file()
    assert "train@resnet50" in yaml.safe_load((out / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert params["data"]["raw_dir"] == "data/raw/input"
    assert (
        params["train"]["backbones"]["resnet50"]["learning_rate"] == 0.002
    )  # the sampled values were used
    assert params["train"]["label_smoothing"] == 0.05
    run_id = json.loads((out / "models/trained/resnet50/run.json").read_text())["run_id"]
    assert run_id != job_run  # the stage keeps its own run
    read = (
        "import json; c = mlflow.MlflowClient(); r = c.get_run('{}');"
        "print(json.dumps([r.data.params, r.data.tags, r.data.metrics,"
        " [a.path for a in c.list_artifacts(r.info.run_id, 'pipeline')]]))"
    )
    params, tags, _, _ = json.loads(in_job_env(read.format(run_id), store))
    assert params["keras_backend"] == "jax"
    assert tags["data_kind"] == "user-data"
    _, tags, metrics, artifacts = json.loads(in_job_env(read.format(job_run), store))
    assert 0.0 <= metrics["val_macro_f1"] <= 1.0  # what the sweep reads, and where from
    assert tags["commit"] == "abc123"
    assert tags["data_version"] == "busi-raw@3"
    assert "-S train.backbones.resnet50.learning_rate=0.002" in tags["reproduce"]
    assert {"pipeline/models", "pipeline/dvc.lock", "pipeline/params.yaml"} <= set(artifacts)


def in_job_env(code: str, store: str) -> str:
    """Run `code` (with mlflow imported) in the job's environment against `store`."""
    result = subprocess.run(
        [str(TRAIN_ENV / "bin" / "python"), "-c", "import mlflow\n" + code],
        env={"MLFLOW_TRACKING_URI": store, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_sweep_loads_offline_and_searches_existing_params():
    result = check(AZURE / "sweep-job.yml")
    assert result.returncode == 0, result.stderr
    sweep = json.loads(result.stdout)
    assert sweep["type"] == "sweep"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert sweep["objective"]["primary_metric"] == "val_" + params["select"]["metric"]
    assert sweep["early_termination"]["type"] in ("bandit", "median_stopping")
    assert sweep["limits"]["max_concurrent_trials"] <= sweep["limits"]["max_total_trials"]
    command = sweep["trial"]["command"]
    for name in sweep["search_space"]:
        assert "${{search_space." + name + "}}" in command
    for argument in command.split():
        key = argument.partition("=")[0]
        if "=" in argument and not key.startswith("tag."):
            node = params
            for part in key.split("."):
                node = node[part]  # KeyError: the sweep searches a param that does not exist
    assert len(sweep["inputs"]["commit"]) >= 40  # filled from the checkout by submit_train.py
    assert len(sweep["inputs"]["dvc_lock"]) == 64


def test_a_broken_sweep_is_refused(tmp_path):
    for name in ("sweep-job.yml", "train-conda.yml"):
        shutil.copyfile(AZURE / name, tmp_path / name)
    sweep = yaml.safe_load((tmp_path / "sweep-job.yml").read_text())
    sweep["sampling_algorithm"] = "sideways"
    sweep["trial"]["code"] = str(ROOT)
    (tmp_path / "sweep-job.yml").write_text(yaml.safe_dump(sweep))
    result = check(tmp_path / "sweep-job.yml")
    assert result.returncode == 1
    assert "invalid:" in result.stderr
