"""The released model: one self-describing folder that every serving surface loads.

    model.keras     the Keras model (resizing and normalisation are layers inside it)
    release.json    {"format": 1, "model_file", "rule": DecisionRule, "provenance": {...}}
    ood.npz         the OOD score's statistics (pipeline.serving.ood), when the rule has an OOD
                    threshold: class means and precision of the train split's pooled features
    reference.csv   what the validation images looked like through this release (the monitor's
                    reference: pipeline.serving.predlog records, no images, no file names)
    model.onnx      the same model for ONNX Runtime (pipeline.export, written by `select`), its
                    answers checked against Keras' on the validation split (release.json `onnx`)
    model.int8.onnx with `select.int8`: its static INT8 quantization, present only when its served
                    decisions on validation kept the flag's sensitivity (pipeline.quantize)

release.json's `onnx` record says which ONNX file is served (`served`: the INT8 one when it was
accepted, else model.onnx), the parity check and the INT8 comparison; the `auto` engine
(pipeline.serving.classifier) serves that file, and Keras when the release has none.

Provenance says what a served answer came from: registered name and version (None for a model
that was never registered, such as a DVC experiment's), architecture, training run, data manifest
hash, git commit, the kind of data (synthetic demo or user data) and the DVC experiment name.
`select` writes this folder (models/selected/), logs it inside the MLflow pyfunc and registers it;
the Azure package ships it as the model. Nothing here reads registry tags: a surface that holds
the folder holds everything an answer depends on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.files import write_json, write_text
from pipeline.serving.ood import OOD_FILE, OodStatistics
from pipeline.serving.rule import DecisionRule

FORMAT = 1
RELEASE_FILE = "release.json"
MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"  # pipeline.export writes it beside model.keras
INT8_FILE = "model.int8.onnx"  # pipeline.quantize, with select.int8
TRAINED_ON_FILE = "trained_on.txt"  # SHA-256 of every image the model was fitted or chosen on
PROVENANCE_KEYS = (
    "model_name",
    "version",
    "arch",
    "run_id",
    "manifest_sha256",
    "git_commit",
    "data_kind",
    "synthetic_data",
    "dvc_experiment",
)


class NotARelease(ValueError):
    """A path that is not a released model folder, with what to do instead."""


@dataclass(frozen=True)
class Release:
    """A released model folder: the model file, its decision rule, provenance and OOD statistics."""

    folder: Path
    rule: DecisionRule
    provenance: dict[str, Any] = field(default_factory=dict)
    model_file: str = MODEL_FILE
    ood: OodStatistics | None = None
    onnx: dict[str, Any] | None = None  # release.json's `onnx` record (None: no ONNX export)

    @property
    def model_path(self) -> Path:
        """Where the model file of this release is."""
        return self.folder / self.model_file

    @property
    def synthetic(self) -> bool:
        """True when the model was trained on the synthetic demo data (every surface says so)."""
        return bool(self.provenance.get("synthetic_data", False))

    @property
    def served_onnx(self) -> Path | None:
        """The ONNX file this release serves on ONNX Runtime (the INT8 one when it was accepted),
        or None when it carries no ONNX export (a release from before select exported)."""
        if self.onnx is not None:
            path = self.folder / str(self.onnx.get("served", ONNX_FILE))
            return path if path.is_file() else None
        path = self.folder / ONNX_FILE  # exported by hand (python -m pipeline.export)
        return path if path.is_file() else None

    def trained_on(self) -> frozenset[str]:
        """Content hashes of the train and validation images (empty when not recorded), so a
        promotion can score it on images it never saw."""
        path = self.folder / TRAINED_ON_FILE
        return frozenset(path.read_text().split()) if path.is_file() else frozenset()

    def identity(self) -> dict[str, str]:
        """{name, version, arch} as answers report them ("unregistered" for experiments)."""
        p = self.provenance
        version = p.get("version")
        return {
            "name": str(p.get("model_name") or "unnamed"),
            "version": str(version) if version is not None else "unregistered",
            "arch": str(p.get("arch") or "unknown"),
        }


def write_release(
    folder: Path,
    model_file: Path,
    rule: DecisionRule,
    provenance: dict[str, Any],
    *,
    ood_file: Path | None = None,
    trained_on: Iterable[str] = (),
) -> Release:
    """Copy `model_file` (and `ood_file`, the OOD statistics the rule's OOD threshold needs) into
    `folder` and write release.json beside them (folder must exist); `trained_on`: content
    hashes of the images the model was trained and selected on (trained_on.txt)."""
    unknown = sorted(set(provenance) - set(PROVENANCE_KEYS))
    if unknown:
        raise ValueError(f"provenance: unknown keys {unknown}; allowed {list(PROVENANCE_KEYS)}")
    if (rule.ood_threshold is None) != (ood_file is None):
        raise ValueError("an OOD threshold and its statistics file go together, or neither")
    shutil.copyfile(model_file, folder / MODEL_FILE)
    ood = None
    if ood_file is not None:
        shutil.copyfile(ood_file, folder / OOD_FILE)
        ood = OodStatistics.load(folder / OOD_FILE)
    record: dict[str, Any] = {
        "format": FORMAT,
        "model_file": MODEL_FILE,
        "rule": rule.to_dict(),
        "provenance": {key: provenance.get(key) for key in PROVENANCE_KEYS},
    }
    write_json(folder / RELEASE_FILE, record)
    hashes = sorted(set(trained_on))
    if hashes:
        write_text(folder / TRAINED_ON_FILE, "\n".join(hashes) + "\n")
    return Release(Path(folder), rule, record["provenance"], ood=ood)


def read_release(folder: Path) -> Release:
    """The release in `folder` (or in the folder of a release.json / model.keras path given)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / RELEASE_FILE
    if not path.is_file():
        raise NotARelease(
            f"{folder}: no {RELEASE_FILE}; serve a released model (models/selected/, "
            "models:/<name>@<alias>), not a training output"
        )
    try:
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT:
            raise NotARelease(f"{path}: release format {record.get('format')!r}, expected {FORMAT}")
        release = Release(
            folder,
            DecisionRule.from_dict(record["rule"]),
            dict(record["provenance"]),
            onnx=dict(record["onnx"]) if record.get("onnx") else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, NotARelease):
            raise
        raise NotARelease(
            f"{path}: not a valid release record ({type(exc).__name__}: {exc})"
        ) from None
    if not release.model_path.is_file():
        raise NotARelease(f"{folder}: {release.model_file} is missing")
    if release.rule.ood_threshold is None:
        return release
    try:
        return replace(release, ood=OodStatistics.load(folder / OOD_FILE))
    except (OSError, ValueError, KeyError) as exc:
        raise NotARelease(
            f"{folder}: the rule has an OOD threshold but {OOD_FILE} is unreadable "
            f"({type(exc).__name__}: {exc})"
        ) from None


def record_onnx(folder: Path, onnx: dict[str, Any]) -> None:
    """Add the `onnx` record (served file, parity, INT8 comparison) to a release's release.json."""
    path = Path(folder) / RELEASE_FILE
    record = json.loads(path.read_text())
    served = Path(folder) / str(onnx.get("served", ""))
    if not served.is_file():
        raise ValueError(f"onnx record: served file {served} is missing")
    write_json(path, record | {"onnx": onnx})


def find_release(root: Path) -> Path:
    """The one folder under `root` holding a release.json (MLflow and Azure nest it)."""
    root = Path(root)
    if (root / RELEASE_FILE).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(RELEASE_FILE))
    if len(found) != 1:
        raise NotARelease(f"{root}: expected one {RELEASE_FILE} inside, found {len(found)}")
    return found[0]
