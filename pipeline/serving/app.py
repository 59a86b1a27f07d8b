"""The local service: FastAPI around one Classifier, with a page that shows what the model sees.

- `GET /`: a page to pick or drop an image; the answer in words (the class with its probability,
  the referral flag, what the probabilities and the threshold mean; an image out of scope gets
  the refusal and why, no class), the probabilities as bars, the rule behind a details toggle,
  an optional class-activation heat map (with a warning when its grid is coarse) and a
  research-use-only notice;
  every asset comes from this app (no CDN), and a Content-Security-Policy holds it to that;
- `POST /predict`: the image as a multipart field (`file` or `image`) or as the raw request body;
  the answer is the serving core's (pipeline.serving.classifier) plus timings and, on
  `?heatmap=true`, a PNG data URL of the heat map and its grid (`heatmap_grid`: rows, columns);
- `GET /health` (the model, its rule and provenance) and the OpenAPI schema at `/openapi.json`.

Uploads are read into memory with a byte limit (413 before reading when Content-Length says so),
never written to disk, before an inference slot is taken: at most `max_uploads` are read at once
and each must arrive within `body_timeout` seconds (408 past it), so clients that send slowly hold
no slot and cannot starve the others. At most `max_concurrent` images are scored at once with
`max_waiting` queued behind them: beyond either cap the answer is 503 with `Retry-After`, never an
unbounded queue. Every refusal is JSON: `{"error": <reason>, "status": <code>}`.

With `ServiceSettings.log_dir`, every answer is appended to the prediction log
(pipeline.serving.predlog: the decision, scores, image size and intensity statistics; never the
image or its file name); `python -m pipeline.serve` turns it on by default.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.serving.classifier import Classifier
from pipeline.serving.predlog import PredictionLog, record
from pipeline.serving.uploads import FILE_FIELDS, InvalidInput, Limits, decode_upload

if TYPE_CHECKING:
    from pipeline.serving.heatmaps import HeatMapper  # Keras: imported only when drawing

STATIC_DIR = Path(__file__).parent / "static"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers on top of the image's own bytes
RETRY_AFTER_SECONDS = 1
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


@dataclass(frozen=True)
class ServiceSettings:
    """The service's limits and options, fixed at start (upload limits, heat maps, queue, log)."""

    limits: Limits = Limits()
    heatmaps: bool = True
    max_concurrent: int = 2  # inferences at once: about the cores a CPU host gives the model
    max_waiting: int = 8  # requests queued behind them before 503
    max_uploads: int = 32  # uploads being received at once before 503 (slow clients included)
    body_timeout: float = 30.0  # seconds to receive one whole upload before 408
    log_dir: Path | None = None  # the prediction log's folder; None: answers are not logged


class Saturated(Exception):
    """More requests than the service runs and queues: answered 503 with Retry-After."""


class Admission:
    """At most `running` requests work at once and `waiting` more wait; the rest are refused.
    Apart from them, at most `uploads` bodies are received at once.

    Counted on the event loop (no lock needed). A body is read under `receiving`, before `slot`:
    a slot is held only while an image is scored, so a client that sends one byte a second holds
    no slot, and the cap on uploads in flight bounds the memory they take while they arrive.
    """

    def __init__(self, running: int, waiting: int, uploads: int) -> None:
        self.capacity = running + waiting
        self.inside = 0
        self.slots = asyncio.Semaphore(running)
        self.uploads = uploads
        self.receiving_now = 0

    @asynccontextmanager
    async def receiving(self) -> AsyncIterator[None]:
        """Count one upload being received; Saturated (503) when `uploads` already are."""
        if self.receiving_now >= self.uploads:
            raise Saturated
        self.receiving_now += 1
        try:
            yield
        finally:
            self.receiving_now -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one inference slot while the body runs; Saturated (503) when the queue is full.

        A bounded queue answers an overloaded service with a quick 503 instead of a growing wait."""
        if self.inside >= self.capacity:
            raise Saturated
        self.inside += 1
        try:
            async with self.slots:
                yield
        finally:
            self.inside -= 1


def _swagger_assets() -> Path:
    """Swagger UI's script and style, as the fastapi-offline package ships them (offline)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "status": status}, status_code=status, headers=headers)


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a request (a multipart file field, or the whole body), in memory."""
    limit = max_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidInput(
            413,
            f"upload of {declared} bytes is over this server's limit of {max_bytes} bytes "
            "(--max-bytes)",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidInput(
                413, f"upload is over this server's limit of {max_bytes} bytes (--max-bytes)"
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return body  # the body is the image; its declared type is ignored, the content decides
    return await _multipart_file(request, body, limit)


async def _receive(request: Request, settings: ServiceSettings) -> bytes:
    """The upload's bytes, received within `settings.body_timeout` seconds or 408."""
    try:
        async with asyncio.timeout(settings.body_timeout):
            return await read_upload(request, settings.limits.max_bytes)
    except TimeoutError:
        raise InvalidInput(
            408,
            f"the upload did not arrive within {settings.body_timeout:g} s (--body-timeout): "
            "send the whole image in one request",
        ) from None


async def _multipart_file(request: Request, body: bytes, limit: int) -> bytes:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16)
    parser.spool_max_size = limit + 1  # keep the part in memory (Starlette spools over 1 MB)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(400, f"malformed multipart body: {exc.message}") from None
    except Exception as exc:  # python-multipart raises assorted errors on garbage
        raise InvalidInput(400, f"malformed multipart body: {type(exc).__name__}") from None
    named = [form.get(name) for name in FILE_FIELDS]
    upload = next((v for v in named if isinstance(v, UploadFile)), None)
    upload = upload or next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
    if upload is None:
        raise InvalidInput(
            400, "multipart upload has no file: send the image in a field named 'file'"
        )
    data = await upload.read()
    await upload.close()
    return data


def create_app(classifier: Classifier, settings: ServiceSettings = ServiceSettings()) -> FastAPI:
    """The service around one loaded classifier (warmed up, so requests never trace)."""
    mapper = None
    if settings.heatmaps and classifier.engine.draws_heatmaps:  # not the ONNX engine: no Keras
        from pipeline.serving.heatmaps import HeatMapper

        mapper = HeatMapper(classifier)
    app = FastAPI(
        title="Breast-ultrasound tumour classifier",
        version="1",
        description=NOTICE,
        docs_url=None,
        redoc_url=None,
    )
    app.state.classifier = classifier
    app.state.log = PredictionLog(settings.log_dir) if settings.log_dir else None
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=_swagger_assets()), name="docs-assets")
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app)
    _add_routes(app, classifier, mapper, settings, app.state.log)
    return app


class SecurityHeaders:
    """SECURITY_HEADERS on every response that does not set them itself.

    A plain ASGI middleware that edits the response's first message: `@app.middleware("http")`
    (Starlette's BaseHTTPMiddleware) runs each request in a task and streams the response back
    through a queue: fixed cost on every request (docs/benchmarks.md, `make bench-engines`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the response's start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidInput)
    async def invalid_input(_request: Request, exc: InvalidInput) -> JSONResponse:
        return _error(exc.status, exc.reason)

    @app.exception_handler(Saturated)
    async def saturated(_request: Request, _exc: Saturated) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return _error(503, "the service is busy with other images; retry shortly", headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")


def _add_routes(
    app: FastAPI,
    classifier: Classifier,
    mapper: HeatMapper | None,
    settings: ServiceSettings,
    log: PredictionLog | None,
) -> None:
    admission = Admission(settings.max_concurrent, settings.max_waiting, settings.max_uploads)

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        """Swagger UI from the app itself: assets from the fastapi-offline package, no CDN."""
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health", summary="Liveness, the loaded model, its decision rule and limits")
    def health() -> dict[str, Any]:
        return classifier.health() | {
            "status": "ok",
            "heatmaps": mapper is not None,
            "max_bytes": settings.limits.max_bytes,
            "max_concurrent": settings.max_concurrent,
            "prediction_log": log is not None,
            "notice": NOTICE,
        }

    @app.post(
        "/predict",
        summary="Classify one ultrasound image",
        openapi_extra={"requestBody": _UPLOAD_BODY},
        response_model=dict[str, Any],
        responses={code: _ERROR for code in (400, 408, 413, 415, 422, 503)},
    )
    async def predict(request: Request, heatmap: bool = False) -> JSONResponse:
        """The answer as JSON as it is: FastAPI's response-model pass (validation, then
        jsonable_encoder) costs time and changes nothing in plain dicts, strings and floats."""
        async with admission.receiving():
            data = await _receive(request, settings)
        async with admission.slot():
            result = await run_in_threadpool(
                classify, classifier, mapper if heatmap else None, data, settings.limits, log
            )
        return JSONResponse(result)


_heatmap_lock = threading.Lock()  # the feature model is shared: one heat map at a time


def classify(
    classifier: Classifier,
    mapper: HeatMapper | None,
    data: bytes,
    limits: Limits,
    log: PredictionLog | None = None,
) -> dict[str, Any]:
    """Decode, answer, log (without the image), and (with a mapper) draw the heat map of the
    answered class."""
    started = time.perf_counter()
    image = decode_upload(data, limits)
    batch = classifier.engine.prepare(image)[None]
    decoded = time.perf_counter()
    overlay = None
    if mapper is not None:
        with _heatmap_lock:
            result, overlay = mapper(batch, image.height, image.width)
    else:
        result = classifier.answer_batch(batch)[0]
    inferred = time.perf_counter()
    if log is not None:
        log.append(record(result, batch[0], image.width, image.height, dt.datetime.now(dt.UTC)))
    result["image"] = {"width": image.width, "height": image.height}
    result["decode_ms"] = round((decoded - started) * 1000, 3)
    result["inference_ms"] = round((inferred - decoded) * 1000, 3)
    if mapper is not None:
        result["heatmap"] = _png_data_url(overlay)
        result["heatmap_grid"] = list(mapper.grid_shape)
    return result


def _png_data_url(image: Image.Image | None) -> str | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
