"""The released model as ONNX, for ONNX Runtime serving: `select` exports every release.

`add_onnx` writes `model.onnx` beside `model.keras` in a release folder being built, checks that
ONNX Runtime answers the validation images as Keras does (probabilities within `tolerance`, OOD
scores within it relatively) and refuses the release otherwise; the check goes into release.json
(`onnx`), so the MLflow pyfunc, the registry and the Azure package carry both. `python -m
pipeline.export RELEASE` exports a release folder made before select did (a downloaded registry
version); it writes nothing where model.onnx exists (models/selected is a DVC output: writing into
it would make `dvc status` report select as changed).

The graph is the Keras model itself, resizing and normalisation included (pipeline.backbones writes
them as layers that export), with a dynamic batch and image size, and two outputs: the pooled
backbone features (`pooled`, what the OOD score reads) and the class probabilities
(`probabilities`). The input geometry the serving engine fits images to (the `resize` layer's size
and letterboxing) goes into the file's metadata, so ONNX Runtime serving needs neither Keras nor
TensorFlow.

Why Keras' `model.export(format="onnx")` on the TensorFlow backend (tf2onnx): it is the documented
route, and on JAX it would need jax2onnx, another converter; a model trained on JAX loads under
TensorFlow (tests/unit/test_backends.py), so on any other backend the export runs in a
subprocess with KERAS_BACKEND=tensorflow. The model is frozen (`trainable = False`) first: traced
as it is, a from-scratch model's BatchNorm updates stayed in the graph and tf2onnx's freezing
failed, falling back to a slow repair.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.cli import exit_code
from pipeline.errors import UserError
from pipeline.layers import INPUT, POOL, RESIZE
from pipeline.paths import SELECTED
from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.engine import ONNX_OUTPUTS as OUTPUTS
from pipeline.serving.release import ONNX_FILE
from pipeline.serving.rule import serve

if TYPE_CHECKING:
    import keras

PARITY_TOLERANCE = 1e-4  # largest |ONNX - Keras| probability (and relative OOD score) released
PARITY_BATCH = 64


def export_onnx(keras_file: Path, onnx_file: Path, model: keras.Model | None = None) -> Path:
    """Export a pipeline.backbones model saved at `keras_file` to `onnx_file` (atomically);
    `model`: that file already loaded (select has it: loading DenseNet121 again takes seconds)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow(keras_file, onnx_file)
    if model is None:
        model = keras.saving.load_model(keras_file, compile=False)
    graph = _serving_graph(model)
    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=onnx_file.parent, prefix=f".{onnx_file.name}.", suffix=".tmp")
    os.close(fd)
    try:
        spec = keras.InputSpec(shape=(None, None, None, 3), dtype="float32", name=INPUT)
        with warnings.catch_warnings():  # Keras' tf2onnx shim probes np.object: a FutureWarning
            warnings.simplefilter("ignore", FutureWarning)
            graph.export(tmp, format="onnx", verbose=False, input_signature=[spec])
        _finish(Path(tmp), _geometry(model))
        os.replace(tmp, onnx_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return onnx_file


def _serving_graph(model: keras.Model) -> keras.Model:
    """Image -> (pooled features, probabilities), the model's own layers, frozen for inference."""
    import keras

    names = [layer.name for layer in model.layers]
    if POOL not in names:
        raise UserError(f"model {model.name}: no {POOL!r} layer; not a pipeline model")
    graph = keras.Model(model.inputs, [model.get_layer(POOL).output, model.outputs[0]])
    graph.trainable = False
    return graph


def _geometry(model: keras.Model) -> dict[str, str]:
    """The `resize` layer's target size and letterboxing, as ONNX metadata (strings)."""
    try:
        config = model.get_layer(RESIZE).get_config()
    except ValueError:
        return {}
    return {
        "input_height": str(int(config["height"])),
        "input_width": str(int(config["width"])),
        "keep_aspect": str(bool(config.get("pad_to_aspect_ratio", False))).lower(),
    }


def _finish(path: Path, metadata: dict[str, str]) -> None:
    """Name the outputs, add the metadata, and refuse a graph that asks for more than the image.

    A layer whose constants are not variables (Keras' `Normalization`) becomes an extra graph
    input that nothing can feed: such a model must be rebuilt with pipeline.backbones.
    """
    import onnx

    proto = onnx.load(str(path))
    extra = [i.name for i in proto.graph.input if i.name != INPUT]
    if extra:
        raise UserError(
            f"ONNX export asks for inputs {extra} besides {INPUT!r}: the model's "
            "preprocessing does not export; retrain it with the current pipeline.backbones"
        )
    for out, name in zip(proto.graph.output, OUTPUTS, strict=True):  # tf2onnx: "Identity:0"
        proto.graph.node.append(onnx.helper.make_node("Identity", [out.name], [name]))
        out.name = name
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _export_in_tensorflow(keras_file: Path, onnx_file: Path) -> Path:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "pipeline.export", "--keras", str(keras_file)]
    command += ["--out", str(onnx_file)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"ONNX export under TensorFlow failed: {result.stderr.strip()[-2000:]}")
    return onnx_file


def export_release(folder: Path, model: keras.Model | None = None) -> Path:
    """Write `model.onnx` into a released-model folder, from its `model.keras`."""
    keras_file = Path(folder) / "model.keras"
    if not keras_file.is_file():
        raise UserError(f"{folder}: no model.keras; give a released-model folder (models/selected)")
    return export_onnx(keras_file, Path(folder) / ONNX_FILE, model)


def add_onnx(
    folder: Path, keras: Classifier, images: Sequence[np.ndarray] | np.ndarray, tolerance: float
) -> dict[str, Any]:
    """Export model.onnx into the release being built in `folder` and check it on `images` (the
    validation split) against `keras` (that release on the Keras engine): the parity record, or
    UserError when an answer moves by more than `tolerance`. The record is what release.json's
    `onnx.parity` keeps."""
    same = Path(keras.release.folder).resolve() == Path(folder).resolve()
    export_release(folder, getattr(keras.engine, "model", None) if same else None)
    onnx = load_classifier(folder, engine="onnx")
    record = parity(keras, onnx, images)
    record["tolerance"] = tolerance
    worst = max(record["max_abs_probability_difference"], record["max_rel_ood_difference"] or 0)
    if worst > tolerance:
        raise UserError(
            f"{folder / ONNX_FILE}: ONNX Runtime answers {record['images']} validation images "
            f"differently from Keras (max |probability difference| "
            f"{record['max_abs_probability_difference']:.2e}, OOD score "
            f"{record['max_rel_ood_difference']}) beyond {tolerance:g}: not released; "
            "report it with the model's architecture"
        )
    return record


def parity(
    a: Classifier, b: Classifier, images: Sequence[np.ndarray] | np.ndarray
) -> dict[str, Any]:
    """How far engine `b` answers from engine `a` on `images` (same release, same fitting):
    the largest probability difference, the largest relative OOD score difference (None without
    OOD statistics) and how many served answers (class, refer flag) differ."""
    prob_gap, ood_gap, differ = 0.0, None, 0
    for start in range(0, len(images), PARITY_BATCH):
        batch = np.stack([a.engine.prepare(x) for x in images[start : start + PARITY_BATCH]])
        (pa, sa), (pb, sb) = a.forward(batch), b.forward(batch)
        prob_gap = max(prob_gap, float(np.abs(pa - pb).max(initial=0.0)))
        if sa is not None and sb is not None:
            rel = np.abs(sa - sb) / np.maximum(np.abs(sa), 1e-12)
            ood_gap = max(ood_gap or 0.0, float(rel.max(initial=0.0)))
        served_a, served_b = serve(a.release.rule, pa, sa), serve(b.release.rule, pb, sb)
        k = len(a.classes)
        moved = served_a.labels_or(k) != served_b.labels_or(k)
        differ += int(np.sum(moved | (served_a.refer != served_b.refer)))
    return {
        "split": "validation",
        "images": len(images),
        "max_abs_probability_difference": prob_gap,
        "max_rel_ood_difference": ood_gap,
        "answers_that_differ": differ,
    }


def main(argv: list[str] | None = None) -> int:
    """`make export-onnx`: model.onnx beside model.keras in a release folder that has none (or
    --keras/--out); a release that has one (every release select makes) is left as it is."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.export", description=__doc__.split("\n")[0]
    )
    p.add_argument("release", nargs="?", type=Path, default=SELECTED, help="release folder")
    p.add_argument("--keras", type=Path, default=None, help="export this .keras file instead")
    p.add_argument("--out", type=Path, default=None, help="with --keras: the .onnx to write")
    args = p.parse_args(argv)
    return exit_code(lambda: _export(args.release, args.keras, args.out))


def _export(release: Path, keras_file: Path | None, out: Path | None) -> str:
    """What `main` does, as the line it prints."""
    if keras_file is not None:
        written = export_onnx(keras_file, out or keras_file.with_suffix(".onnx"))
    elif (release / ONNX_FILE).is_file():
        return f"export: {release / ONNX_FILE} is there (select exports every release)"
    else:
        written = export_release(release)
    return f"export: {written} ({written.stat().st_size / 1e6:.1f} MB)"


if __name__ == "__main__":
    raise SystemExit(main())
