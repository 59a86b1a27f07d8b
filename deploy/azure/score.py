"""Azure ML scoring script: `init()` loads the packaged release, `run(request)` scores one image.

Runs under azureml-inference-server-http (`azmlinfsrv`, `POST /score`) with raw HTTP access
(`@rawhttp`), so image bytes arrive untouched. `python -m pipeline.package` lays out `code/`
(this file + `pipeline/serving/` and the base modules it imports) and `model/` (the released
model: model.keras + release.json with the decision rule); Azure sets AZUREML_MODEL_DIR.
SERVING_ENGINE picks the engine: `auto` (default: the ONNX model the release serves, else Keras),
`keras`, `onnx` or `onnx-int8`; `python -m pipeline.package` writes it into deployment.yml, and
ships the ONNX engines with an environment without TensorFlow (conda-onnx.yml).

Accepted bodies, decided by Content-Type:
- `multipart/form-data`: the file field `file` or `image` (or the only file sent);
- `application/json`: `{"image": "<base64>"}` (a `data:image/png;base64,` prefix is allowed);
- anything else (`image/png`, `application/octet-stream`, none): the body is the image file.
Answers 200 with the serving core's answer (the same as every other surface); 4xx
`{"error": reason, "status": code}` for bad input (400 broken or empty, 405 not POST, with
`Allow`, 413 over MAX_UPLOAD_BYTES, 415 not an image).

Each answer is also handed to Azure ML's data collector (deployment.yml `data_collector:`) as
the prediction log's summary of it, never the image (pipeline.serving.collection); without a
data collector, or when it fails, the answer is the same and the reason is logged once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.collection import DataCollection
from pipeline.serving.uploads import FILE_FIELDS, InvalidInput, Limits, decode_upload, from_base64

logger = logging.getLogger("score")
classifier: Classifier | None = None
collection: DataCollection | None = None
LIMITS = Limits.from_env()
CHUNK = 64 * 1024


def init() -> None:
    """Azure ML's start hook: load the release once and open the data collector."""
    global classifier, collection
    root = Path(os.environ.get("AZUREML_MODEL_DIR", "model"))
    classifier = load_classifier(root, engine=os.environ.get("SERVING_ENGINE", "auto"))
    collection = DataCollection()
    identity = classifier.release.identity()
    logger.info(
        "loaded %s version %s (%s)", identity["name"], identity["version"], identity["arch"]
    )


def error(status: int, reason: str, headers: dict[str, str] | None = None) -> AMLResponse:
    """A JSON error answer `{error, status}` with extra headers, as the local service gives."""
    response = AMLResponse({"error": reason, "status": status}, status, json_str=True)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


@rawhttp
def run(request):
    """Azure ML's request hook: answer a POSTed image as the local service would.

    The same limits, decoding and answer as `pipeline.serving`; inputs and outputs go to the data
    collector without the image."""
    if request.method != "POST":
        return error(405, "POST an image to /score", {"Allow": "POST"})
    if request.content_length is not None and request.content_length > LIMITS.max_bytes:
        return error(
            413,
            f"body of {request.content_length} bytes is over {LIMITS.max_bytes} bytes "
            "(MAX_UPLOAD_BYTES)",
        )
    try:
        image = decode_upload(upload_bytes(request), LIMITS)
    except InvalidInput as exc:
        return error(exc.status, exc.reason)
    batch = classifier.engine.prepare(image)[None]
    result = classifier.answer_batch(batch)[0]
    collection.collect(result, batch[0], image.width, image.height)
    return AMLResponse(result, 200, json_str=True)


def upload_bytes(request) -> bytes:
    """The image file's bytes from whichever body shape the client sent (see the module doc)."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        files = request.files
        upload = next((files[name] for name in FILE_FIELDS if name in files), None)
        upload = upload or (next(iter(files.values())) if len(files) == 1 else None)
        if upload is None:
            raise InvalidInput(400, "multipart upload without a file field 'file' or 'image'")
        return upload.read(LIMITS.max_bytes + 1)
    body = read_limited(request.stream)
    if mimetype != "application/json":
        return body  # decode_upload says 413 when it is over the limit
    if len(body) > LIMITS.max_bytes:
        raise InvalidInput(413, f"body is over {LIMITS.max_bytes} bytes (MAX_UPLOAD_BYTES)")
    try:
        payload = json.loads(body)
        text = payload["image"]
    except (ValueError, KeyError, TypeError):
        raise InvalidInput(
            400, 'JSON body must be {"image": "<base64-encoded image file>"}'
        ) from None
    return from_base64(text)


def read_limited(stream) -> bytes:
    """At most MAX_UPLOAD_BYTES + 1 bytes of a body, chunked transfer included: never the rest."""
    chunks, size = [], 0
    while size <= LIMITS.max_bytes:
        chunk = stream.read(min(CHUNK, LIMITS.max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
