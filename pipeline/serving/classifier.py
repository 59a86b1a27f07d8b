"""The serving core: a released model (engine + decision rule + provenance) -> answers.

Every surface builds one `Classifier` with `load_classifier(source)` and asks it for answers, so
one image gets the same probabilities and the same decision on the page, the API, the MLflow
pyfunc, the Azure scoring script and the batch scorer. An answer is

    {"class", "probabilities" {class: p}, "decision" {positive_class, refer,
     positive_probability, threshold, temperature, rule[, out_of_scope, ood_score, ood_threshold,
     reason]}, "model" {name, version, arch}, "synthetic_data"}

With OOD statistics in the release, the one forward pass also gives the pooled backbone
features, and the answer of an input beyond the OOD threshold is `out_of_scope` (rule.answer).

`source` is a released-model folder (models/selected/), an MLflow model folder holding one, or a
`models:/<name>@<alias>`, `models:/<name>/<version>` or `runs:/` URI, downloaded with MLflow from
`tracking_uri` (default: MLFLOW_TRACKING_URI, as MLflow itself reads it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.serving.engine import KerasEngine, OnnxEngine
from pipeline.serving.ood import pool
from pipeline.serving.release import (
    INT8_FILE,
    ONNX_FILE,
    NotARelease,
    Release,
    find_release,
    read_release,
)
from pipeline.serving.rule import answer

PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# auto: the ONNX file the release serves (release.json `onnx.served`), else model.keras;
# keras: model.keras; onnx: model.onnx in ONNX Runtime (no Keras); onnx-int8: model.int8.onnx
ENGINES = ("auto", "keras", "onnx", "onnx-int8")


@dataclass
class Classifier:
    """An engine and the release it came from: every surface answers through this one object."""

    engine: KerasEngine | OnnxEngine
    release: Release

    def __post_init__(self) -> None:
        classes = self.release.rule.classes
        if self.engine.n_outputs != len(classes):
            raise ValueError(
                f"model has {self.engine.n_outputs} outputs but the rule names {len(classes)} "
                f"classes {classes}"
            )

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names in the model's output order, from the release's rule."""
        return self.release.rule.classes

    def describe(self, probabilities: np.ndarray, ood_score: float | None = None) -> dict[str, Any]:
        """One image's model probabilities (K,) and OOD score -> the answer (see the module doc)."""
        result = answer(self.release.rule, probabilities, ood_score)
        result["model"] = self.release.identity()
        result["synthetic_data"] = self.release.synthetic
        return result

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, K), OOD scores (N,) or None without OOD statistics), one pass."""
        if self.release.ood is None:
            return self.engine.probabilities(batch), None
        pooled, proba = self.engine.pooled_and_probabilities(batch)
        return proba, self.release.ood.scores(pooled)

    def ood_scores(self, feature_maps: np.ndarray) -> np.ndarray | None:
        """OOD scores (N,) of backbone feature maps (N, h, w, C) (the heat mapper has them)."""
        return None if self.release.ood is None else self.release.ood.scores(pool(feature_maps))

    def answer_batch(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """Answers for a prepared batch (N, H, W, 3) (engine.prepare of each image)."""
        proba, scores = self.forward(batch)
        return [
            self.describe(row, None if scores is None else float(scores[i]))
            for i, row in enumerate(proba)
        ]

    def predict_many(self, images: Iterable[Image.Image | np.ndarray]) -> list[dict[str, Any]]:
        """Answers for decoded images, in one forward pass."""
        return self.answer_batch(np.stack([self.engine.prepare(image) for image in images]))

    def predict(self, image: Image.Image | np.ndarray) -> dict[str, Any]:
        """The answer for one decoded image (a batch of one through `predict_many`)."""
        return self.predict_many([image])[0]

    def health(self) -> dict[str, Any]:
        """What a caller needs to know about the loaded model, without images."""
        return {
            "model": self.release.identity(),
            "classes": list(self.classes),
            "rule": self.release.rule.to_dict() | {"description": self.release.rule.describe()},
            "provenance": self.release.provenance,
            "synthetic_data": self.release.synthetic,
        }


def load_classifier(
    source: str | Path, tracking_uri: str | None = None, engine: str = "keras"
) -> Classifier:
    """A warmed-up Classifier from a release folder, an MLflow model folder or a model URI,
    running its model on `engine` (one of ENGINES; the decision rule is the same on all)."""
    if engine not in ENGINES:
        raise ValueError(f"engine: {engine!r} is not one of {list(ENGINES)}")
    text = str(source)
    if text.startswith(("models:/", "runs:/")):
        with tempfile.TemporaryDirectory() as tmp:
            classifier = _from_folder(download_release(text, tmp, tracking_uri), engine)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"model source {text!r}: not found; give a released-model folder "
                "(models/selected), models:/<name>@<alias>, models:/<name>/<version> or runs:/..."
            )
        classifier = _from_folder(find_release(path) if path.is_dir() else path, engine)
    classifier.engine.warm_up(features=classifier.release.ood is not None)
    return classifier


def download_release(uri: str, into: str | Path, tracking_uri: str | None = None) -> Path:
    """Download a `models:/` or `runs:/` model into `into`; return its release folder."""
    import mlflow  # only for registry sources; a packaged release needs no MLflow at all

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    quiet = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = quiet or "false"  # one line per file is noise in a terminal
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into))
    finally:
        if quiet is None:
            del os.environ[PROGRESS_BAR]
    return find_release(Path(local))


def _from_folder(folder: Path, engine: str = "keras") -> Classifier:
    release = read_release(folder)
    if engine == "auto":
        served = release.served_onnx
        if served is None:
            return Classifier(KerasEngine.load(release.model_path), release)
        return Classifier(OnnxEngine.load(served), release)
    if engine == "keras":
        return Classifier(KerasEngine.load(release.model_path), release)
    name = INT8_FILE if engine == "onnx-int8" else ONNX_FILE
    path = release.folder / name
    if not path.is_file():
        why = _why_not(release, engine)
        raise NotARelease(f"{release.folder}: no {name} for the {engine} engine; {why}")
    return Classifier(OnnxEngine.load(path), release)


def _why_not(release: Release, engine: str) -> str:
    """What to do about a missing ONNX file: the INT8 verdict, or how to export."""
    if engine == "onnx-int8":
        int8 = (release.onnx or {}).get("int8") or {}
        return int8.get("reason") or "release it with select.int8: true (params.yaml)"
    return (
        "releases from `select` carry it; for an older release folder run "
        "`python -m pipeline.export <release folder>`"
    )
