"""A local classification service: FastAPI on uvicorn, with a page that shows what the model sees.

`make serve` (or `python -m pipeline.serve --model <source>`) loads the model once, then serves
- `GET /`: a page to pick or drop an image; probabilities as bars, a class-activation heat map
  (exact Grad-CAM for the GAP -> Dense head, see pipeline.cam) and a research-use-only notice;
  every asset comes from this app (no CDN), and a Content-Security-Policy holds it to that;
- `POST /predict`: the image as a multipart `file` field or as the raw request body; the answer
  is `Classifier.predict`'s dict plus `inference_ms` (and `heatmap`, a PNG data URL, on
  `?heatmap=true`);
- `GET /health` and the OpenAPI schema at `/openapi.json`. Swagger's `/docs` is off: it loads
  its scripts from a CDN.

Uploads are read into memory with a byte limit (413 before reading when Content-Length says so),
never written to disk (the multipart parser's spool is sized to stay in memory), and every refusal
is JSON: `{"error": <reason>, "status": <code>}`.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from pipeline import cam
from pipeline.inference import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    Classifier,
    InvalidInput,
    decode_upload,
    load_classifier,
)

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MODEL = "models:/tumor-classifier@champion"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers on top of the image's own bytes
HEATMAP_MAX_SIDE = 512  # the overlay is sent at most this many pixels on its longer side
NOTICE = "Research use only. Not a medical device; not for diagnosis or treatment decisions."
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_ERROR = {
    "description": "Refused: JSON `{error, status}`",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                "required": ["error", "status"],
            }
        }
    },
}


class HeatMapper:
    """Class activation maps of a classifier's predicted class, as a transparent PNG overlay.

    The feature model (image -> feature map, probabilities) shares the classifier's weights and is
    traced once at start; one forward pass gives both the probabilities and the map.
    """

    def __init__(self, classifier: Classifier, max_side: int = HEATMAP_MAX_SIDE):
        self.classifier = classifier
        self.max_side = max_side
        self.features = cam.feature_model(classifier.model)

    def __call__(self, batch: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str]:
        """(probabilities (K,), PNG data URL of the heat map at the image's aspect ratio)."""
        maps, proba = cam.class_activation_maps(self.classifier.model, batch, cam=self.features)
        return proba[0], _png_data_url(self.overlay(maps[0], height, width))

    def overlay(self, cam_map: np.ndarray, height: int, width: int) -> Image.Image:
        """RGBA image: JET colours with opacity rising with the map, cropped to the image.

        The model saw the image letterboxed in a square (Classifier.prepare), so the map covers
        that square; the image's own box is cut out of its centre.
        """
        import cv2  # through pipeline.cam's dependency; the shared inference module stays cv2-free

        scale = min(1.0, self.max_side / max(height, width))
        out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
        side = max(out_h, out_w)
        square = cam.heatmap(cam_map, side, side)
        if self.classifier.keep_aspect:
            top, left = (side - out_h) // 2, (side - out_w) // 2
            heat = square[top : top + out_h, left : left + out_w]
        else:
            heat = cv2.resize(square, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        colour = cv2.cvtColor(
            cv2.applyColorMap(np.uint8(heat * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
        )
        alpha = np.uint8(np.clip(heat, 0, 1) * 200)
        return Image.fromarray(np.dstack([colour, alpha]), "RGBA")


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason, "status": status}, status_code=status)


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a request (multipart `file` field, or the whole body), in memory only."""
    limit = max_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidInput(
            413, f"upload of {declared} bytes is over the limit of {max_bytes} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidInput(413, f"upload is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body  # the body is the image; its declared type is ignored, the content decides

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16)
    # keep the file part in memory: Starlette's default spools parts over 1 MB to a temporary file
    parser.spool_max_size = limit + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(400, f"malformed multipart body: {exc.message}") from None
    except Exception as exc:  # python-multipart raises assorted errors on garbage
        raise InvalidInput(400, f"malformed multipart body: {type(exc).__name__}") from None
    upload = form.get("file")
    if upload is None:  # accept a file under any field name, as long as there is one
        upload = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
    if not isinstance(upload, UploadFile):
        raise InvalidInput(
            400, "multipart upload has no file: send the image in a field named 'file'"
        )
    data = await upload.read()
    await upload.close()
    return data


def create_app(
    classifier: Classifier,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    heatmaps: bool = True,
) -> FastAPI:
    """The service around one loaded classifier (warmed up here, so requests never trace)."""
    classifier.warm_up()
    mapper = HeatMapper(classifier) if heatmaps else None
    if mapper is not None:
        size = classifier.input_size or (64, 64)
        mapper(np.zeros((1, *size, 3), np.float32), 8, 8)
    app = FastAPI(
        title="Breast-ultrasound tumour classifier",
        version="1",
        description=NOTICE,
        docs_url=None,
        redoc_url=None,
    )
    app.state.classifier = classifier
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    lock = threading.Lock()  # heat maps: one at a time (the feature model is shared)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(InvalidInput)
    async def invalid_input(_request: Request, exc: InvalidInput) -> JSONResponse:
        return _error(exc.status, exc.reason)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health", summary="Liveness and the loaded model")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": {
                "name": classifier.name,
                "version": classifier.version,
                "arch": classifier.arch,
            },
            "classes": list(classifier.classes),
            "threshold": classifier.threshold,
            "synthetic_data": classifier.synthetic,
            "data_kind": classifier.data_kind,
            "heatmaps": mapper is not None,
            "max_bytes": max_bytes,
            "notice": NOTICE,
        }

    @app.post(
        "/predict",
        summary="Classify one ultrasound image",
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses={code: _ERROR for code in (400, 413, 415, 422)},
    )
    async def predict(request: Request, heatmap: bool = False) -> dict[str, Any]:
        data = await read_upload(request, max_bytes)
        return await run_in_threadpool(_classify, data, heatmap)

    def _classify(data: bytes, heatmap: bool) -> dict[str, Any]:
        started = time.perf_counter()
        image = decode_upload(data, max_bytes=max_bytes, max_pixels=max_pixels)
        batch = classifier.prepare(image)
        decoded = time.perf_counter()
        if heatmap and mapper is not None:
            with lock:
                proba, overlay = mapper(batch, *image.shape[:2])
        else:
            proba, overlay = classifier.probabilities(batch)[0], None
        inferred = time.perf_counter()
        result = classifier.describe(proba)
        result["image"] = {"width": int(image.shape[1]), "height": int(image.shape[0])}
        result["decode_ms"] = round((decoded - started) * 1000, 3)
        result["inference_ms"] = round((inferred - decoded) * 1000, 3)
        if heatmap:
            result["heatmap"] = overlay  # None when the service runs without heat maps
        return result

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("MODEL") or DEFAULT_MODEL,
        help=f"models:/<name>@<alias>, runs:/<id>/model, an MLflow model folder or a .keras file "
        f"(default: $MODEL or {DEFAULT_MODEL})",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--no-heatmaps", action="store_true", help="skip the class activation maps")
    args = parser.parse_args(argv)

    import uvicorn

    try:
        classifier = load_classifier(args.model)
    except Exception as exc:  # a missing alias / file is the usual cause: one line, not a trace
        print(
            f"serve: cannot load model {args.model!r}: {type(exc).__name__}: {exc}\n"
            "serve: run `make demo` (registers @challenger), promote it to @champion, or pick one: "
            "make serve MODEL=models:/tumor-classifier@challenger "
            "(or MODEL=models/selected/model.keras)",
            file=sys.stderr,
        )
        return 2
    app = create_app(
        classifier,
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        heatmaps=not args.no_heatmaps,
    )
    data_note = " [synthetic demo data]" if classifier.synthetic else ""
    print(
        f"Serving {classifier.name} version {classifier.version} ({classifier.arch}){data_note}\n"
        f"  open http://{args.host}:{args.port}/   "
        "(API: POST /predict, GET /health, /openapi.json)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
