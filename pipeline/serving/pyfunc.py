"""The released model as an MLflow pyfunc: base64 images in, the serving core's answers out.

`log_release` logs a released-model folder (pipeline.serving.release) through MLflow's public
`mlflow.pyfunc.log_model`: the folder is the pyfunc's artifact `release`, the model is
`pyfunc_model.py` (MLflow's "models from code": nothing pickled), this package is its code
(`code_paths`, derived by pipeline.serving.shipping, nothing listed by hand), the signature is one
string column `image` and the input example one synthetic scan. It answers on the ONNX model the
release serves when it has one (ONNX Runtime, no Keras at answer time), else on model.keras. So
`mlflow models serve -m models:/tumor-classifier@champion --env-manager local` answers

    {"dataframe_records": [{"image": "<base64 PNG/JPEG>"}, ...]}
    {"inputs": {"image": ["<base64>", ...]}}

with one record per image, the same answer (and the same decision rule) as every other surface.
A bad image is refused as an MLflow `INVALID_PARAMETER_VALUE` (HTTP 400) whose message starts
with the status the other surfaces give (413 too big, 415 not an image, 400 broken) and never
holds the request: MLflow's server rewrites a failed prediction's message as "Failed to predict
data '<the whole request>'", which sent a refused DICOM back with its patient's name in it, so
the refusal (`Refused`) keeps its own message. At most `MAX_IMAGES_PER_REQUEST` images (default
64) of at most `MAX_UPLOAD_BYTES` each are taken in one request, and each is fitted to the
model's input as it is decoded, so memory does not grow with the images' resolution.
The example is synthetic on purpose: a validation image would copy a patient's scan into every
registered and deployed version of the model.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema
from PIL import Image

from pipeline import environment, images
from pipeline.serving import shipping
from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.uploads import InvalidInput, Limits, decode_upload, from_base64

IMAGE_COLUMN = "image"
MAX_IMAGES_ENV = "MAX_IMAGES_PER_REQUEST"
MAX_IMAGES = 64  # images in one request: each becomes a model-sized array before the next
RELEASE_ARTIFACT = "release"
MODEL_SCRIPT = Path(__file__).with_name("pyfunc_model.py")  # models from code: no pickle
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", IMAGE_COLUMN)]))


class Refused(MlflowException):
    """A refused request, as MLflow's INVALID_PARAMETER_VALUE (HTTP 400), whose message is
    `<status>: <reason>` and stays so: MLflow's scoring server assigns `message` a text with the
    whole request in it, and that assignment is dropped here."""

    def __init__(self, status: int, reason: str) -> None:
        self._text = f"{status}: {reason}"
        super().__init__(self._text, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        """`<status>: <reason>`, as the other surfaces word the refusal."""
        return self._text

    @message.setter
    def message(self, _rewritten: str) -> None:
        """Drop MLflow's rewrite ("Failed to predict data '<request>'"): it echoes the upload."""


class ServingModel(PythonModel):
    """What `mlflow.pyfunc.load_model` wraps: decode, answer with the release's own rule."""

    max_images = MAX_IMAGES  # load_context reads MAX_IMAGES_PER_REQUEST over it

    def load_context(self, context: Any) -> None:
        """Load the release from the model's artifacts once, when MLflow loads the model, on the
        engine it serves (ONNX Runtime when it carries model.onnx; SERVING_ENGINE overrides)."""
        engine = os.environ.get("SERVING_ENGINE", "auto")
        self.classifier: Classifier = load_classifier(
            context.artifacts[RELEASE_ARTIFACT], engine=engine
        )
        self.limits = Limits.from_env()
        self.max_images = int(os.environ.get(MAX_IMAGES_ENV, MAX_IMAGES))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """Answer each row's image (base64 or bytes) with the release's rule, one row per image.

        A bad image fails the whole call with MLflow's INVALID_PARAMETER_VALUE and the reason
        (`Refused`, which names the image by its position, never by its content)."""
        try:
            values = _column(model_input)
            if not values:
                raise InvalidInput(400, "no image in the request")
            if len(values) > self.max_images:
                raise InvalidInput(
                    413,
                    f"{len(values)} images in one request; this server takes at most "
                    f"{self.max_images} ({MAX_IMAGES_ENV})",
                )
            batch = np.stack(
                [self._fitted(value, n, len(values)) for n, value in enumerate(values)]
            )
        except InvalidInput as exc:
            raise Refused(exc.status, exc.reason) from None
        return pd.DataFrame(self.classifier.answer_batch(batch))

    def _fitted(self, value: Any, n: int, total: int) -> np.ndarray:
        """One request value -> the model's input array (the full-size image is dropped here)."""
        try:
            return self.classifier.engine.prepare(
                decode_upload(_bytes(value, self.limits), self.limits)
            )
        except InvalidInput as exc:
            where = f"image {n + 1} of {total}: " if total > 1 else ""
            raise InvalidInput(exc.status, where + exc.reason) from None


def _column(data: Any) -> list[Any]:
    """The `image` values of a DataFrame (what MLflow passes once the signature is enforced)."""
    if isinstance(data, pd.DataFrame):
        if IMAGE_COLUMN not in data.columns:
            raise InvalidInput(400, f"expected a column {IMAGE_COLUMN!r} of base64-encoded images")
        return list(data[IMAGE_COLUMN])
    if isinstance(data, dict) and IMAGE_COLUMN in data:
        values = data[IMAGE_COLUMN]
        return list(values) if isinstance(values, list | tuple | np.ndarray) else [values]
    raise InvalidInput(400, f"expected {{{IMAGE_COLUMN!r}: [<base64 image>, ...]}}")


def _bytes(value: Any, limits: Limits) -> bytes:
    """A base64 string (or raw bytes, as a Python caller may pass) -> the image file's bytes;
    a string too long to hold at most `limits.max_bytes` is 413 before it is decoded."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return from_base64(value, limits)


def image_example(image: np.ndarray) -> dict[str, list[str]]:
    """An RGB uint8 image as this flavor's input: {"image": [base64 PNG]}."""
    encoded = images.png_bytes(Image.fromarray(np.asarray(image, dtype=np.uint8)))
    return {IMAGE_COLUMN: [base64.b64encode(encoded).decode("ascii")]}


def requirements() -> list[str]:
    """Pinned packages the pyfunc imports (see pipeline.environment)."""
    import keras

    return environment.pins(
        [
            "mlflow",
            "keras",
            "numpy",
            "pandas",
            "pillow",
            "pydicom",
            "pylibjpeg",
            "pylibjpeg-libjpeg",
            "onnxruntime",
        ],
        keras.backend.backend(),
    )


def log_release(
    release_folder: Path, example: np.ndarray, name: str = "model", tags: dict | None = None
) -> Any:
    """Log a released-model folder as the active run's pyfunc model; return MLflow's ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp:
        code = shipping.stage_package(Path(tmp))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_SCRIPT),
            artifacts={RELEASE_ARTIFACT: str(release_folder)},
            code_paths=[str(code)],
            signature=SIGNATURE,
            input_example=image_example(example),
            pip_requirements=requirements(),
            tags=tags,
        )
