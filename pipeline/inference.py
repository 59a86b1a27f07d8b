"""Serving-side inference shared by the local service (pipeline.serve) and the Azure scoring script.

Three steps, each usable alone:
- `decode_upload`: untrusted bytes -> uint8 RGB array, or `InvalidInput(status, reason)` (413 too
  big, 415 not a supported image by its content, 400 broken). Built on `pipeline.images.decode`,
  which guards decompression bombs from the header and converts grey / RGBA / 16-bit / palette.
- `load_classifier`: a `models:/` URI, a `runs:/` URI, an MLflow model folder or a `.keras` file ->
  `Classifier`, with its classes, the malignant operating-point threshold and the model's identity.
- `Classifier.predict`: one image -> a JSON-ready dict of probabilities and the decision.

Why the image is fitted here and not only inside the model: the model's own `resize` layer takes
any size, but the training images were fitted by `prepare` with Pillow's Lanczos filter to the
same square size (letterboxed), and the model's bilinear resize of a full-size upload would alias.
Fitting the same way makes a served image look like a training image, and a fixed input shape
means the compiled predict function is traced once, not once per upload size. Preprocessing
(normalisation) still lives in the model.

Dependency-light on purpose (numpy, Pillow, keras, mlflow): the Azure environment installs it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image

from pipeline import images

MALIGNANT = "malignant"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # a BUSI PNG is ~0.3 MB; DICOM exports as PNG stay far below
DEFAULT_MAX_PIXELS = 50_000_000  # the same bomb guard as prepare.max_pixels
DEFAULT_MIN_SIDE = 16  # smaller than this is not an ultrasound frame

# Formats accepted, by their leading bytes (the content decides, never a file name or a header a
# client sends). Pillow opens more (EPS, PSD, ICO, ...), some through external programs: not here.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("BMP", b"BM", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
    ("WEBP", b"WEBP", 8),  # RIFF....WEBP
)
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")

# RejectedImage kinds (pipeline.images) -> HTTP status
_STATUS = {"too_large": 413, "not_an_image": 415, "unsupported_mode": 415}


class InvalidInput(Exception):
    """An upload the service refuses: `status` the HTTP status, `reason` a sentence for the user."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes, or None when it is not one we accept."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def decode_upload(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Untrusted upload bytes -> uint8 RGB array (H, W, 3), or InvalidInput with status and reason.

    413 for more than `max_bytes` bytes or `max_pixels` pixels (from the header, before decoding),
    415 when the content is not PNG / JPEG / BMP / TIFF / GIF / WebP or has an unusable pixel
    format, 400 for an empty, truncated, corrupt or tiny (side < `min_side`) image.
    """
    if not data:
        raise InvalidInput(400, "empty upload: send the image file's bytes")
    if len(data) > max_bytes:
        raise InvalidInput(
            413, f"upload of {len(data)} bytes is over the limit of {max_bytes} bytes"
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidInput(
            415, f"not a supported image by its content; send one of {', '.join(SUPPORTED_FORMATS)}"
        )
    try:
        decoded = images.decode(data, max_pixels=max_pixels, min_side=min_side)
    except images.RejectedImage as exc:
        if exc.kind == "not_an_image":  # it starts like one of ours, so it is a broken one
            raise InvalidInput(
                400, f"corrupt: starts like a {fmt} file but cannot be read"
            ) from None
        raise InvalidInput(_STATUS.get(exc.kind, 400), f"{exc.kind}: {exc.detail}") from None
    return np.asarray(decoded.image, dtype=np.uint8)


@dataclass
class Classifier:
    """A loaded model and what a caller needs to interpret it.

    `threshold` is the malignant-probability operating point chosen on validation (None: the
    decision falls back to argmax, and the result says so).
    """

    model: keras.Model
    classes: tuple[str, ...]
    threshold: float | None
    name: str
    version: str
    arch: str
    synthetic: bool
    source: str = ""
    data_kind: str = ""
    input_size: tuple[int, int] | None = field(init=False, default=None)
    keep_aspect: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        units = self.model.outputs[0].shape[-1]
        if units != len(self.classes):
            raise ValueError(
                f"model has {units} outputs but {len(self.classes)} classes {self.classes}"
            )
        try:
            resize = self.model.get_layer("resize")
        except ValueError:
            return  # not a pipeline.backbones model: the raw image goes in as it is
        config = resize.get_config()
        self.input_size = (int(config["height"]), int(config["width"]))
        self.keep_aspect = bool(config.get("pad_to_aspect_ratio", False))

    def prepare(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """An RGB image -> the float32 batch (1, H, W, 3) of 0-255 values the model takes."""
        pil = (
            image
            if isinstance(image, Image.Image)
            else Image.fromarray(np.asarray(image, np.uint8))
        )
        pil = images.to_rgb(pil)
        if self.input_size is not None:
            height, width = self.input_size
            if height == width:
                pil = images.fit(pil, height, keep_aspect=self.keep_aspect)
            elif pil.size != (width, height):
                pil = pil.resize((width, height), Image.Resampling.LANCZOS)
        return np.asarray(pil, dtype=np.float32)[None]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of a prepared batch. `predict_on_batch` skips the dataset
        machinery of `model.predict`, which costs more than a small model's forward pass."""
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float64)

    def describe(self, probabilities: np.ndarray) -> dict[str, Any]:
        """One image's probabilities (K,) -> the JSON-ready result (see `predict`)."""
        p = [float(v) for v in np.asarray(probabilities, dtype=np.float64).reshape(-1)]
        predicted = self.classes[int(np.argmax(p))]
        result: dict[str, Any] = {
            "probabilities": dict(zip(self.classes, p, strict=True)),
            "predicted_class": predicted,
            "malignant_probability": None,
            "malignant_decision": None,
            "model": {"name": self.name, "version": self.version, "arch": self.arch},
            "synthetic_data": self.synthetic,
        }
        if MALIGNANT in self.classes:
            pm = p[self.classes.index(MALIGNANT)]
            result["malignant_probability"] = pm
            if self.threshold is None:
                result["malignant_decision"] = {
                    "threshold": None,
                    "positive": predicted == MALIGNANT,
                    "rule": "argmax: this model version has no operating_point_threshold",
                }
            else:
                result["malignant_decision"] = {
                    "threshold": self.threshold,
                    "positive": pm >= self.threshold,
                    "rule": "malignant probability >= the operating point chosen on validation",
                }
        return result

    def predict(self, image: np.ndarray | Image.Image) -> dict[str, Any]:
        """An RGB image (uint8 H x W x 3 or PIL) -> {probabilities, predicted_class,
        malignant_probability, malignant_decision {threshold, positive, rule}, model {name,
        version, arch}, synthetic_data}."""
        return self.describe(self.probabilities(self.prepare(image))[0])

    def warm_up(self) -> None:
        """Trace the predict function once, so the first request is not the slow one."""
        size = self.input_size or (64, 64)
        self.probabilities(np.zeros((1, *size, 3), dtype=np.float32))


def load_classifier(source: str) -> Classifier:
    """Load a model for serving from a `models:/name@alias` or `models:/name/version` URI, a
    `runs:/<id>/model` URI, an MLflow model folder (with `MLmodel`) or a `.keras` file.

    Registry sources take the threshold and identity from the version's tags; a `.keras` file
    takes its classes from `classes.json` beside it (else params.yaml) and its identity from a
    `registration.json` beside it when there is one (models/selected/).
    """
    source = str(source)
    if source.startswith(("models:/", "runs:/")):
        return _load_from_mlflow(source)
    path = Path(source).expanduser()
    if path.is_dir() and (path / "MLmodel").is_file():
        return _from_mlflow_folder(path, source, name=path.name, version="local", tags={})
    if path.is_file() and path.suffix == ".keras":
        return _from_keras_file(path)
    raise ValueError(
        f"model source {source!r}: not found; give models:/<name>@<alias>, "
        "models:/<name>/<version>, runs:/<run_id>/model, an MLflow model folder or a .keras file"
    )


def _load_from_mlflow(source: str) -> Classifier:
    import mlflow
    from mlflow import MlflowClient

    from pipeline.tracking import tracking_uri

    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags: dict[str, str] = {}
    name, version = source, "run"
    if source.startswith("models:/"):
        ref = source.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.split("/", 1)
            found = client.get_model_version(name, number)
        else:
            raise ValueError(
                f"model source {source!r}: expected models:/<name>@<alias> or "
                "models:/<name>/<version>"
            )
        version, tags, artifact = str(found.version), dict(found.tags), found.source
    else:
        artifact = source
        run_id = source.removeprefix("runs:/").split("/", 1)[0]
        versions = client.search_model_versions(f"run_id='{run_id}'")
        if versions:  # the run was registered: take the newest version's identity and threshold
            newest = max(versions, key=lambda v: int(v.version))
            name, version, tags = newest.name, str(newest.version), dict(newest.tags)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact, dst_path=tmp, tracking_uri=uri
        )
        return _from_mlflow_folder(Path(local), source, name=name, version=version, tags=tags)


def _from_mlflow_folder(path: Path, source: str, name: str, version: str, tags: dict) -> Classifier:
    import mlflow
    from mlflow.models import Model

    metadata = Model.load(str(path / "MLmodel")).metadata or {}
    model = mlflow.keras.load_model(str(path))
    classes = metadata.get("classes") or _classes_from_params()
    synthetic = bool(metadata.get("synthetic_data", tags.get("data_kind") == "synthetic-demo"))
    threshold = tags.get("operating_point_threshold")
    return Classifier(
        model=model,
        classes=tuple(classes),
        threshold=float(threshold) if threshold not in (None, "") else None,
        name=name,
        version=version,
        arch=str(tags.get("arch") or metadata.get("arch") or _arch_of(model)),
        synthetic=synthetic,
        source=source,
        data_kind=tags.get("data_kind") or ("synthetic-demo" if synthetic else "user-data"),
    )


def _from_keras_file(path: Path) -> Classifier:
    model = keras.models.load_model(path, compile=False)
    beside = path.parent / "classes.json"
    classes = json.loads(beside.read_text()) if beside.is_file() else _classes_from_params()
    registration = path.parent / "registration.json"
    info = json.loads(registration.read_text()) if registration.is_file() else {}
    synthetic = bool(info.get("synthetic_data", False))
    threshold = info.get("operating_point_threshold")
    return Classifier(
        model=model,
        classes=tuple(classes),
        threshold=float(threshold) if threshold is not None else None,
        name=str(info.get("model_name") or path.stem),
        version=str(info.get("version") or "local"),
        arch=str(info.get("winner") or _arch_of(model)),
        synthetic=synthetic,
        source=str(path),
        data_kind="synthetic-demo" if synthetic else ("user-data" if info else "unknown"),
    )


def _classes_from_params() -> tuple[str, ...]:
    from pipeline.config import load_params

    return tuple(load_params().classes)


def _arch_of(model: keras.Model) -> str:
    """`resnet50_classifier` -> `resnet50` (pipeline.backbones names its models so)."""
    return model.name.removesuffix("_classifier")
