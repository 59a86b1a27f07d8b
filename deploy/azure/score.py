"""Azure ML scoring script: `init()` loads the packaged champion, `run(request)` scores one image.

Runs under azureml-inference-server-http (`azmlinfsrv`, `POST /score`) with raw HTTP access
(`@rawhttp`), so image bytes arrive untouched. `python -m pipeline.package` lays out
`code/` (this file + `pipeline/inference.py` and what it needs) and `model/` (model.keras,
classes.json, registration.json); Azure sets AZUREML_MODEL_DIR to the model's folder.

Accepted bodies, decided by Content-Type:
- `multipart/form-data`: the file field `image` (or the only file sent);
- `application/json`: `{"image": "<base64>"}` (a `data:image/png;base64,` prefix is allowed);
- anything else (`image/png`, `application/octet-stream`, none): the body is the image file.
Answers 200 `{probabilities, predicted_class, malignant_probability, malignant_decision, model
{name, version, arch}, synthetic_data}`; 4xx `{"error": reason, "status": code}` for bad input
(400 broken or empty, 405 not POST, 413 over MAX_UPLOAD_BYTES, 415 not an image).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

from pipeline import inference

logger = logging.getLogger("score")
classifier: inference.Classifier | None = None
MAX_UPLOAD_BYTES = int(os.environ.get("MAX_UPLOAD_BYTES", inference.DEFAULT_MAX_BYTES))
MAX_IMAGE_PIXELS = int(os.environ.get("MAX_IMAGE_PIXELS", inference.DEFAULT_MAX_PIXELS))


def model_file() -> Path:
    """`model.keras` under AZUREML_MODEL_DIR (Azure nests a registered folder under its name)."""
    root = Path(os.environ.get("AZUREML_MODEL_DIR", "model"))
    for candidate in (root / "model.keras", root / "model" / "model.keras"):
        if candidate.is_file():
            return candidate
    found = sorted(root.rglob("model.keras"))
    if not found:
        raise FileNotFoundError(f"no model.keras under AZUREML_MODEL_DIR={root}")
    return found[0]


def init() -> None:
    global classifier
    path = model_file()
    classifier = inference.load_classifier(str(path))
    classifier.warm_up()
    logger.info(
        "loaded %s version %s (%s) from %s",
        classifier.name,
        classifier.version,
        classifier.arch,
        path,
    )


def error(status: int, reason: str) -> AMLResponse:
    return AMLResponse({"error": reason, "status": status}, status, json_str=True)


@rawhttp
def run(request):
    if request.method != "POST":
        return error(405, "POST an image to /score")
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
        return error(
            413, f"body of {request.content_length} bytes is over {MAX_UPLOAD_BYTES} bytes"
        )
    try:
        data = upload_bytes(request)
        image = inference.decode_upload(
            data, max_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_IMAGE_PIXELS
        )
    except inference.InvalidInput as exc:
        return error(exc.status, exc.reason)
    return AMLResponse(classifier.predict(image), 200, json_str=True)


def upload_bytes(request) -> bytes:
    """The image file's bytes from whichever body shape the client sent (see the module doc)."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        files = request.files
        upload = files.get("image") or (next(iter(files.values())) if len(files) == 1 else None)
        if upload is None:
            raise inference.InvalidInput(400, "multipart upload without a file field 'image'")
        return upload.read(MAX_UPLOAD_BYTES + 1)
    if mimetype == "application/json":
        try:
            payload = json.loads(request.get_data(cache=False))
            text = payload["image"]
            text = text.split(",", 1)[1] if text.startswith("data:") else text
            return base64.b64decode(text, validate=True)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise inference.InvalidInput(
                400, 'JSON body must be {"image": "<base64-encoded image file>"}'
            ) from None
    return request.stream.read(MAX_UPLOAD_BYTES + 1)  # +1: decode_upload then says 413
