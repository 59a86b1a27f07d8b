"""A released model with an OOD check, for the tests: statistics fitted on in-distribution scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.serving import ood
from pipeline.serving.engine import KerasEngine
from pipeline.serving.release import write_release
from pipeline.serving.rule import DecisionRule
from pipeline.synthetic import case_rng, render_case
from tests.factories import CLASSES


def scans(n: int, seed: int = 0, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(n synthetic ultrasound-like scans (n, size, size, 3), their class indices)."""
    labels = np.arange(n) % len(CLASSES)
    images = [render_case(CLASSES[k], case_rng(seed, CLASSES[k], i), size)[0]
              for i, k in enumerate(labels)]  # fmt: skip
    return np.stack(images), labels


def make_ood_release(folder: Path, model, accept: float = 0.95) -> Path:
    """`model` released with OOD statistics fitted on 60 scans, class scales and the threshold
    accepting `accept` of 90 others (what evaluate and select do, in small)."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = KerasEngine(model)
    train, labels = scans(60, seed=1)
    val, val_labels = scans(90, seed=2)
    pooled = {
        name: engine.pooled_and_probabilities(np.stack([engine.prepare(x) for x in images]))[0]
        for name, images in (("train", train), ("val", val))
    }
    fitted = ood.fit(pooled["train"], labels).with_class_scales(pooled["val"], val_labels)
    fitted.save(folder / "stats.npz")
    threshold = ood.accept_threshold(fitted.scores(pooled["val"]), accept)
    rule = DecisionRule(CLASSES, "malignant", 0.3, ood_threshold=threshold, ood_method="test")
    model.save(folder / "source.keras")
    provenance = {"model_name": "tumor-classifier", "version": "7", "arch": "resnet50"}
    write_release(folder, folder / "source.keras", rule, provenance, ood_file=folder / "stats.npz")
    (folder / "source.keras").unlink()
    (folder / "stats.npz").unlink()
    return folder
