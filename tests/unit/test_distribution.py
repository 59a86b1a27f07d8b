"""`train.distribution: data_parallel`: every local device, the same training as on one device.

The two-device check runs in a subprocess: the backend (JAX) and the two virtual CPU devices are
fixed when Keras and JAX are imported, and the test process keeps its own backend.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from pipeline import distribution
from pipeline.errors import UserError
from tests.factories import QUICK_XLA_FLAGS, project_params

ROOT = Path(__file__).resolve().parents[2]
# Measured: 3e-8 on weights, 1.2e-7 on losses (float32 reductions in another order); a sharding
# mistake (per-device BatchNorm statistics, a gradient summed instead of averaged) is far larger.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def two_device_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    devices = "--xla_force_host_platform_device_count=2"
    env |= {"KERAS_BACKEND": "jax", "XLA_FLAGS": f"{devices} {QUICK_XLA_FLAGS}"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.data_parallel_fit"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_devices_train_as_one_within_tolerance(two_device_run):
    assert two_device_run["devices"] == 2
    assert two_device_run["max_weight_diff"] < TOLERANCE
    for column, diff in two_device_run["max_history_diff"].items():
        assert diff < TOLERANCE, column


@pytest.mark.slow
def test_the_global_distribution_is_restored_after_training(two_device_run):
    assert two_device_run["restored"]


def test_data_parallel_on_another_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    params = project_params({"train": {"distribution": "data_parallel"}})
    with (
        pytest.raises(UserError, match="train.distribution: data_parallel runs on the JAX"),
        distribution.data_parallel(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), params.train
        ),
    ):
        pass


def test_an_unknown_distribution_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"train.distribution: .*data_parallel"):
        project_params({"train": {"distribution": "ddp"}})
