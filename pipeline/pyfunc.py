"""The serving flavor: the registered model as an MLflow pyfunc that takes image bytes or arrays.

`log_model` writes one MLflow model with two flavors: `keras` (what `mlflow.keras.load_model`
and the pipeline's own evaluation use) and `python_function`, whose loader is this module. So
`mlflow models serve -m models:/tumor-classifier@champion --env-manager local` answers

    {"dataframe_records": [{"image": "<base64 PNG/JPEG>"}]}      encoded images, one per row
    {"inputs": {"image": ["<base64>", ...]}}                       the same, as a column
    {"inputs": [[[r, g, b], ...]]}                                 one H x W x 3 array, or N

with one record per image: `probabilities` ({class: p}), `predicted_class`,
`malignant_probability`, `malignant_decision`, `model`, `synthetic_data`. A bad image is refused
as an MLflow `INVALID_PARAMETER_VALUE` (HTTP 400) whose message starts with the status the Azure
scoring script would give (413 too big, 415 not an image, 400 broken).

Why the model carries no signature: MLflow enforces one input schema before `predict` runs, and no
schema covers "base64 strings or pixel arrays"; the input is validated here instead, by content.
It does carry an input example (`input_example.json`, `serving_input_example.json`): one synthetic
scan as base64 PNG, so `mlflow models predict --input-path serving_input_example.json` and the
MLflow UI show the request format. Synthetic on purpose: a validation image would copy a
patient's scan into every registered and deployed version of the model.
Why the serving code travels inside the model (`code/pipeline/`): a served version keeps the
decoding and preprocessing it was validated with, whatever the project's code has become since.
Decoding, fitting and the result's shape are `pipeline.inference`'s, shared with Azure's score.py.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.utils import _save_example
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from pipeline import images, inference

IMAGE_COLUMN = "image"
# What the python_function flavor needs besides the Keras flavor's own requirements.
SERVING_MODULES = ("__init__.py", "pyfunc.py", "inference.py", "images.py", "files.py")
_PACKAGE_DIR = Path(__file__).resolve().parent


def save_model(
    model: Any,
    path: str | Path,
    metadata: dict[str, Any],
    run_id: str | None = None,
    example: np.ndarray | None = None,
) -> Path:
    """Save `model` at `path` as an MLflow model with the keras and the serving pyfunc flavors.

    `example`, an RGB uint8 image, becomes the model's input example in the serving format.
    """
    path = Path(path)
    mlflow.keras.save_model(
        model, str(path), metadata=metadata, pip_requirements=serving_requirements()
    )
    code = path / "code" / "pipeline"
    code.mkdir(parents=True)
    for name in SERVING_MODULES:
        shutil.copyfile(_PACKAGE_DIR / name, code / name)
    mlmodel = Model.load(str(path / "MLmodel"))
    keras_pyfunc = mlmodel.flavors["python_function"]
    mlmodel.flavors["python_function"] = {
        **keras_pyfunc,
        "loader_module": __name__,
        "code": "code",
    }
    mlmodel.run_id = run_id
    if example is not None:
        # MLflow's own writer (private but what every flavor calls): it also writes the
        # serving payload, {"inputs": {"image": [...]}}, one of the forms `predict` accepts
        _save_example(mlmodel, image_example(example), str(path))
    mlmodel.save(str(path / "MLmodel"))
    return path


def image_example(image: np.ndarray) -> dict[str, list[str]]:
    """An RGB uint8 image as this flavor's input: {"image": [base64 PNG]}."""
    encoded = images.png_bytes(Image.fromarray(np.asarray(image, dtype=np.uint8)))
    return {IMAGE_COLUMN: [base64.b64encode(encoded).decode("ascii")]}


def serving_requirements() -> list[str]:
    """The pinned packages the serving flavor imports. Given explicitly because MLflow's inference
    of requirements loads the model in a subprocess, which costs ~30 s per logged model."""
    names = ["mlflow", "keras", "numpy", "pandas", "pillow"]
    backend = {"tensorflow": ("tensorflow-cpu", "tensorflow"), "jax": ("jax",), "torch": ("torch",)}
    for candidate in backend.get(keras.backend.backend(), ()):
        try:
            importlib_metadata.version(candidate)
        except importlib_metadata.PackageNotFoundError:
            continue
        names.append(candidate)
        break
    return [f"{name}=={importlib_metadata.version(name)}" for name in names]


def log_model(model: Any, metadata: dict[str, Any], example: np.ndarray | None = None) -> str:
    """Log `model` as the active run's `model` artifact (see `save_model`); return its runs:/ URI.

    Saved locally and uploaded, not through `mlflow.keras.log_model`, whose `input_example`
    handling is broken in MLflow 3.17 (it writes the example before it creates the model folder:
    FileNotFoundError) and which offers no way to swap in this loader. No signature (see the
    module doc); `example` as in `save_model`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        run_id = mlflow.active_run().info.run_id
        local = save_model(model, Path(tmp) / "model", metadata, run_id=run_id, example=example)
        mlflow.log_artifacts(str(local), artifact_path="model")
    return f"runs:/{mlflow.active_run().info.run_id}/model"


class ServingModel:
    """What `mlflow.pyfunc.load_model` returns the implementation of: images in, records out."""

    def __init__(self, classifier: inference.Classifier, max_bytes: int) -> None:
        self.classifier = classifier
        self.max_bytes = max_bytes

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            images = list(self._images(model_input))
        except inference.InvalidInput as exc:
            raise MlflowException(
                f"{exc.status}: {exc.reason}", error_code=INVALID_PARAMETER_VALUE
            ) from None
        if not images:
            raise MlflowException(
                "400: no image in the request", error_code=INVALID_PARAMETER_VALUE
            )
        batch = np.concatenate([self.classifier.prepare(image) for image in images])
        proba = self.classifier.probabilities(batch)
        return pd.DataFrame([self.classifier.describe(row) for row in proba])

    def _images(self, data: Any):
        """Yield uint8 RGB arrays from any of the accepted input shapes (see the module doc)."""
        if isinstance(data, pd.DataFrame):
            column = IMAGE_COLUMN if IMAGE_COLUMN in data.columns else None
            if column is None and len(data.columns) == 1:
                column = data.columns[0]
            if column is None:
                raise inference.InvalidInput(
                    400, f"expected a column {IMAGE_COLUMN!r} of base64-encoded images"
                )
            for value in data[column]:
                yield from self._images(value)
        elif isinstance(data, dict):
            if IMAGE_COLUMN not in data:
                raise inference.InvalidInput(400, f"expected the key {IMAGE_COLUMN!r}")
            yield from self._images(data[IMAGE_COLUMN])
        elif isinstance(data, str | bytes | bytearray):
            yield inference.decode_upload(_bytes(data), max_bytes=self.max_bytes)
        elif isinstance(data, np.ndarray) and data.dtype.kind in "OUS":
            for value in data.reshape(-1):
                yield from self._images(value)
        elif isinstance(data, list | tuple) and data and isinstance(data[0], str | bytes):
            for value in data:
                yield from self._images(value)
        else:
            yield from _arrays(data)


def _bytes(value: str | bytes | bytearray) -> bytes:
    """A base64 string (or raw bytes, as a Python caller may pass) -> the encoded image bytes."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    try:
        return base64.b64decode(
            value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True
        )
    except (binascii.Error, ValueError):
        raise inference.InvalidInput(400, "image is not valid base64") from None


def _arrays(data: Any):
    """Pixel arrays: (H, W, 3) one image, (N, H, W, 3) a batch, values 0-255."""
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise inference.InvalidInput(400, "expected base64 images or H x W x 3 arrays") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape[1:3]) < 1:
        raise inference.InvalidInput(
            400, f"pixel arrays must be H x W x 3 or N x H x W x 3, got shape {array.shape}"
        )
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise inference.InvalidInput(400, "pixel values must be finite and within 0-255")
    yield from (image.astype(np.uint8) for image in np.rint(array))


def _load_pyfunc(path: str) -> ServingModel:
    """MLflow's entry point for the python_function flavor: `path` is the model folder."""
    mlmodel = Model.load(str(Path(path) / "MLmodel"))
    info = mlmodel.metadata or {}
    classifier = inference.Classifier(
        model=mlflow.keras.load_model(str(path)),
        classes=tuple(info["classes"]),
        threshold=None,  # chosen after training, kept as a registry tag (see pipeline.package)
        name=str(info.get("model_name", "tumor-classifier")),
        version=f"run:{mlmodel.run_id}" if mlmodel.run_id else "local",
        arch=str(info.get("arch", "unknown")),
        synthetic=bool(info.get("synthetic_data", False)),
        source=str(path),
    )
    classifier.warm_up()
    return ServingModel(classifier, max_bytes=inference.DEFAULT_MAX_BYTES)
