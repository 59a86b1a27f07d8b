"""Which ops INT8 quantizes: the served answers it keeps and the speed it buys (issue 27).

    python bench/int8_ops.py [--release models/selected | --model resnet50]
                             [--prepared data/prepared] [--speed 224]

For each choice of op types (every op ONNX Runtime quantizes; the convolutions; the convolutions
and their ReLUs; the same with the backbone's last stage left in float, the default:
pipeline.quantize.QUANTIZED_OPS and FLOAT_STAGE), on a copy of the release:
quantize its model.onnx as select does (up to 128 train-split images drawn with params.yaml's
seed, min-max), then compare the INT8 served answers with the float model's on the validation
split (pipeline.quantize.compare: agreement, the differences that sit on a threshold, the flag
sensitivity difference and select's gate) and print the largest probability and relative OOD
score change, and the same on the train images calibration did not draw (held out: neither the
thresholds nor the ranges saw them; the OOD score's relative change median/p95/max and how many
served answers stay). With `--speed SIZE`, an untrained DenseNet121 at SIZE px is exported and
quantized each way (bench/serve_engines.py's release) and timed against float ONNX Runtime, one
image and a batch of 32 (through OnnxEngine, which runs a large batch in chunks as every surface
does), the engines called in turn so that a shared machine's load falls on all alike; then the
batch of 32 in one ONNX Runtime call against the engine's chunks, float and the default INT8.
`--model ARCH` judges the demo's other trained model instead of the release: released as select
would release it (its own rule and OOD statistics from evaluate) and exported, in a scratch
folder. Needs `make demo`'s outputs for the first part. Never run as a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.quantize import FLOAT_STAGE  # noqa: E402 (needs ROOT on the path)

# name -> (op types quantized, None: every op; the stage left in float, None: none)
VARIANTS: dict[str, tuple[tuple[str, ...] | None, str | None]] = {
    "every op": (None, None),
    "convolutions": (("Conv",), None),
    "convolutions and ReLUs": (("Conv", "Relu"), None),
    "the same, last stage float": (("Conv", "Relu"), FLOAT_STAGE),
}


def answers(release: Path, prepared: Path, seed: int, margin: float) -> None:
    """Each variant's served answers against the float model's on the validation split."""
    from pipeline import quantize
    from pipeline.datasets import load_set, read_manifest
    from pipeline.serving.classifier import Classifier, load_classifier
    from pipeline.serving.engine import OnnxEngine
    from pipeline.serving.release import ONNX_FILE

    base = load_classifier(release, engine="onnx")
    classes = base.release.rule.classes
    val = load_set(prepared, classes, split="val")
    train = load_set(prepared, classes, split="train")
    rows = read_manifest(prepared / "manifest.csv")
    rows = rows[rows["split"] == "val"]
    groups = rows["group"].to_numpy() if "group" in rows and len(rows) == len(val) else None
    calibration = quantize.calibration_set(base, train.images, seed)
    batch = np.stack([base.engine.prepare(image) for image in val.images])
    proba, scores = base.forward(batch)
    unseen = np.random.default_rng(seed).permutation(len(train.images))[
        quantize.CALIBRATION_IMAGES :
    ]
    held = np.stack([base.engine.prepare(train.images[i]) for i in sorted(unseen)])
    print(f"{release}: {len(val)} validation images, calibration {len(calibration)} train images")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (ops, stage) in VARIANTS.items():
            path = quantize.quantize(
                release / ONNX_FILE, Path(tmp) / "int8.onnx", calibration, ops, stage
            )
            int8 = Classifier(OnnxEngine.load(path), base.release)
            record = quantize.compare(int8, base, val.images, val.labels, groups, margin, seed)
            p8, s8 = int8.forward(batch)
            ood = "" if scores is None else f", OOD score {np.max(np.abs(s8 / scores - 1)):.3f}"
            diff, same = record["flag_sensitivity_difference"], record["agreement"]["same"]
            print(
                f"  {name:26} same answer {same}/{record['images']} "
                f"({record['differing_on_a_threshold']} of the others on a threshold); "
                f"largest change: probability {np.max(np.abs(p8 - proba)):.3f}{ood}; "
                f"flag sensitivity {diff['value']:+.3f} [{diff['ci_low']:+.3f}, "
                f"{diff['ci_high']:+.3f}], {'served' if record['served'] else 'refused'}",
                flush=True,
            )
            if len(held):
                print(f"  {'':26} held-out train: {held_out(int8, base, held)}", flush=True)


def held_out(int8: Any, base: Any, images: np.ndarray) -> str:
    """Fidelity on images neither the thresholds nor calibration saw: OOD relative change
    median/p95/max and the served answers that stay, as one line."""
    from pipeline.serving.rule import serve

    (p, s), (p8, s8) = base.forward(images), int8.forward(images)
    k, rule = len(base.classes), base.release.rule
    a, b = serve(rule, p, s), serve(rule, p8, s8)
    same = int(np.sum((a.labels_or(k) == b.labels_or(k)) & (a.refer == b.refer)))
    ood = (
        ""
        if s is None
        else "OOD score change median/p95/max {:.3f}/{:.3f}/{:.3f}, ".format(
            *np.quantile(np.abs(s8 / s - 1), [0.5, 0.95, 1.0])
        )
    )
    return f"{ood}same answer {same}/{len(images)}"


def speed(size: int, repeats: int, batches: int) -> None:
    """INT8 over float ONNX Runtime for each variant, untrained DenseNet121 at `size` px."""
    from serve_engines import BATCH, calibration_scans, release, scan_png

    from pipeline import quantize
    from pipeline.serving.classifier import load_classifier
    from pipeline.serving.engine import OnnxEngine
    from pipeline.serving.release import ONNX_FILE
    from pipeline.serving.uploads import decode_upload

    with tempfile.TemporaryDirectory() as tmp:
        folder = release("densenet121", size, Path(tmp) / "release")
        engine = load_classifier(folder, engine="onnx").engine
        scans = [engine.prepare(scan) for scan in calibration_scans(size)]
        engines = {"float": engine}
        for name, (ops, stage) in VARIANTS.items():
            path = quantize.quantize(
                folder / ONNX_FILE, Path(tmp) / f"{len(engines)}.onnx", scans, ops, stage
            )
            engines[name] = OnnxEngine.load(path)
        one = engine.prepare(decode_upload(scan_png(size)))[None]
        many = np.repeat(one, BATCH, 0)
        calls = {name: each.pooled_and_probabilities for name, each in engines.items()}
        for x, n, label in ((one, repeats, "one image"), (many, batches, "batch of 32")):
            median = medians(calls, x, n)
            print(f"{size} px, {label}: float {median['float']:.1f} ms; INT8 over float:", end="")
            print(
                "; ".join(f" {k} {median['float'] / median[k]:.2f}x" for k in VARIANTS), flush=True
            )
        default = next(k for k, v in VARIANTS.items() if v == (quantize.QUANTIZED_OPS, FLOAT_STAGE))
        sessions = {name: engines[name].session for name in ("float", default)}
        whole = {  # what OnnxEngine's chunks (engine.CHUNK_PIXELS) are measured against
            f"{name}, in one call": lambda x, s=session: s.run(None, {engine.input_name: x})
            for name, session in sessions.items()
        }
        median = medians(whole | {name: calls[name] for name in sessions}, many, batches)
        shown = "; ".join(f"{k} {v:.0f}" for k, v in median.items())
        print(f"{size} px, batch of 32, ms: {shown} (the last two in the engine's chunks)")


def medians(calls: dict[str, Any], x: np.ndarray, n: int) -> dict[str, float]:
    """Median ms of each call on `x`, called in turn `n` rounds (bench/serve_engines.in_turn)."""
    from serve_engines import in_turn

    times = in_turn({name: lambda call=call: call(x) for name, call in calls.items()}, n)
    return {name: float(np.median(t)) for name, t in times.items()}


def release_of(arch: str, folder: Path) -> Path:
    """The demo's trained `arch` released into `folder` as select releases a winner (the rule
    and OOD statistics evaluate fitted for it on validation) and exported to ONNX."""
    from pipeline import paths
    from pipeline.config import load_params
    from pipeline.export import export_release
    from pipeline.select import read_rule
    from pipeline.serving.ood import OOD_FILE
    from pipeline.serving.release import write_release

    rule = read_rule(arch, load_params(ROOT / "params.yaml").classes)
    ood = paths.evaluate_dir(arch) / OOD_FILE if rule.ood_threshold is not None else None
    folder.mkdir(parents=True)
    write_release(folder, paths.model_dir(arch) / "model.keras", rule, {"arch": arch}, ood_file=ood)
    export_release(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    """Compare the variants' answers (needs a release and prepared data) and, optionally, speed."""
    from pipeline.config import load_params

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release", type=Path, default=ROOT / "models" / "selected")
    p.add_argument("--model", metavar="ARCH", help="the demo's trained ARCH instead (resnet50)")
    p.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared")
    p.add_argument("--speed", type=int, metavar="SIZE", help="also time the variants at SIZE px")
    p.add_argument("--repeats", type=int, default=20, help="one-image calls per variant")
    p.add_argument("--batches", type=int, default=3, help="batch-of-32 calls per variant")
    args = p.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "release"
        if args.model:
            release_of(args.model, copy)
        else:
            shutil.copytree(args.release, copy)  # compare's gate never touches the real release
        answers(copy, args.prepared, params.seed, params.select.int8_margin)
    if args.speed:
        speed(args.speed, args.repeats, args.batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
