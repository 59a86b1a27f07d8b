"""INT8 for ONNX Runtime: a release's model.onnx quantized, and what that costs in answers.

With `select.int8: true`, `select` calls `add_int8` on the release it builds:

1. Quantize: ONNX Runtime's static quantization in QDQ form (weights int8 per channel,
   activations uint8), its ranges calibrated (min-max) on up to CALIBRATION_IMAGES images of the
   train split, fitted as the engines fit uploads. Training images only: the validation split
   judges the result and must not have shaped it. Static, because dynamic quantization leaves
   the convolutions, nearly all of a CNN's cost, in float. Only the convolutions and ReLUs are
   quantized (QUANTIZED_OPS), and only before the backbone's last stage (`float_stage`): the
   resizing, DenseNet's concatenations and batch norms, the last stage, the pooling, the
   classifier head and the softmax stay in float (why: QUANTIZED_OPS, FLOAT_STAGE).
2. Compare: the INT8 model's served answers (the release's own rule: class or out of scope, and
   the refer flag) against the float model's on the validation split: agreement (share of
   identical answers, Wilson interval), and the paired differences INT8 - float of the flag's
   sensitivity (a refused malignant scan counts as not flagged) and of class macro-F1 (a refusal
   counted as a class of its own, as promote counts it), each with a paired cluster-bootstrap
   interval over prepare's groups (pipeline.statistics).
3. Gate: INT8 is served only when the one-sided 95% lower bound of the flag sensitivity
   difference is above -`select.int8_margin` (pipeline.statistics.non_inferiority, the promotion
   gate's test). Otherwise model.int8.onnx is deleted and model.onnx is served; either way
   release.json's `onnx.int8` keeps the comparison and the reason.

INT8 kernels differ between CPUs (VNNI or not), so the comparison holds for the machine select
ran on; the bench (bench/serve_engines.py) measures the speed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from pipeline import statistics
from pipeline.layers import INPUT
from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.release import INT8_FILE, ONNX_FILE
from pipeline.serving.rule import DecisionRule, Served, serve

CALIBRATION_IMAGES = 128  # min-max ranges settle well before this on the demo (64 px)
# Convolutions and their ReLUs only. Quantizing every op puts one uint8 scale on each DenseNet
# concatenation, whose channels (from early and late layers) span very different ranges, and the
# pooled features the OOD check reads pass through them unchanged: OOD scores moved by up to 93%
# and 7 of make demo's 64 validation answers changed; with the convolutions and ReLUs 18% and 2
# (the convolutions alone: 15% and 1). INT8 over float at 224 px (untrained DenseNet121, one
# image / batch of 32): every op 2.25x / 2.38x, convolutions and ReLUs 1.98x / 2.11x, the
# convolutions alone 1.81x / 1.89x. `make bench-quantize BENCH_ARGS="--speed 224"`, 2026-12-05,
# quiet 2-core machine (docs/serving.md).
QUANTIZED_OPS = ("Conv", "Relu")
# The backbone's last stage (7 x 7 at 224 px) stays in float: its output is the pooled features
# the OOD check reads. Quantized, it moved the validation OOD scores of make demo's release by up
# to 18% (2 of 64 answers changed, malignant scans near a threshold) and those of the 165 train
# images calibration did not draw by 11% at the median, 45% at most; in float 8% on validation (no
# answer changed), 6% and 14% held out. Cost: INT8 over float 1.98x -> 1.93x one image, 2.11x ->
# 2.02x batch of 32 (same command and run).
# keras.applications names the last stage's layers so in DenseNet121 and ResNet50 alike
# (tests/unit/test_backbones.py checks both).
FLOAT_STAGE = "conv5_"
CALIBRATION_BATCH = 16
EDGE_TOLERANCE = 1e-4  # = export.PARITY_TOLERANCE: float engines may differ by this much
N_BOOTSTRAP = 2000


def quantize(
    float_onnx: Path,
    int8_onnx: Path,
    calibration: Sequence[np.ndarray],
    ops: Sequence[str] | None = QUANTIZED_OPS,
    float_stage: str | None = FLOAT_STAGE,
) -> Path:
    """Static QDQ quantization of `float_onnx` into `int8_onnx`, ranges from `calibration`
    (prepared (H, W, 3) float32 batches' rows), of the `ops` types (None: every op ONNX Runtime
    can quantize) before the stage whose layer names start with `float_stage` (None, or a graph
    without it: every stage; bench/int8_ops.py compares them); the input geometry metadata is
    kept."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        # Constant folding and BatchNorm fusion first, as ONNX Runtime's guide advises (sympy's
        # symbolic shapes are not needed: the graph's only dynamic axes are batch and size).
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / int8_onnx.name
        kept_float = stage_nodes(pre, float_stage) if float_stage else []
        quantize_static(
            str(pre),
            str(out),
            _batches(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=None if ops is None else list(ops),
            nodes_to_exclude=kept_float,
        )
        _save_with_metadata(out, int8_onnx, float_onnx)
    return int8_onnx


def _batches(calibration: Sequence[np.ndarray]) -> Any:
    """ONNX Runtime's calibration reader over `calibration` in batches of CALIBRATION_BATCH."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = (
                {INPUT: np.stack(calibration[i : i + CALIBRATION_BATCH]).astype(np.float32)}
                for i in range(0, len(calibration), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Batches()


def stage_nodes(model: Path, stage: str) -> list[str]:
    """The names of the nodes of the ONNX graph in `model` from the first one of `stage` (a
    Keras layer-name prefix: the export names nodes `.../<layer>_1/<op>`) to the end.

    From the first on, not by name: the export folds a batch norm into the convolution before it
    and names the result after the norm or `Conv__<n>` (DenseNet121's). ONNX lists nodes in
    topological order, and in a backbone whose stages run one after another, every node of the
    earlier stages feeds the first node of the last, so the nodes from there on are the last
    stage's and the head's."""
    import onnx

    names = [node.name for node in onnx.load(str(model)).graph.node]
    first = next((i for i, name in enumerate(names) if f"/{stage}" in name), len(names))
    return names[first:]


def _save_with_metadata(model: Path, to: Path, metadata_of: Path) -> None:
    """Save `model` as `to` with the metadata of `metadata_of` (the engines' fitting geometry)."""
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    proto.metadata_props.extend(onnx.load(str(metadata_of)).metadata_props)
    onnx.save(proto, str(to))


def compare(
    int8: Classifier,
    base: Classifier,
    images: Sequence[np.ndarray] | np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    margin: float,
    seed: int = 0,
) -> dict[str, Any]:
    """INT8 against float served answers on labelled images (see the module doc, steps 2-3)."""
    rule = base.release.rule
    k, positive = len(rule.classes), rule.classes.index(rule.positive_class)
    a, (b, b_scores) = _served(int8, images, rule)[0], _served(base, images, rule)
    same = (a.labels_or(k) == b.labels_or(k)) & (a.refer == b.refer)
    on_edge = on_threshold(rule, b.probabilities, b_scores)
    flag_a, flag_b = np.where(a.refer, positive, -1), np.where(b.refer, positive, -1)
    paired = {"n_bootstrap": N_BOOTSTRAP, "seed": seed}
    sensitivity = statistics.paired_difference(
        labels, flag_a, flag_b, groups, metric="malignant_sensitivity", positive=positive, **paired
    )
    macro_f1 = statistics.paired_difference(
        labels, a.labels_or(k), b.labels_or(k), groups, metric="macro_f1", **paired
    )
    gate = statistics.non_inferiority(
        labels, flag_a, flag_b, groups, margin=margin, metric="malignant_sensitivity",
        positive=positive, **paired,
    )  # fmt: skip
    malignant = labels == positive
    return {
        "split": "validation",
        "images": len(same),
        "agreement": _agreement(same),
        "differing_on_a_threshold": int(np.sum(~same & on_edge)),
        "flag_sensitivity_difference": sensitivity["difference"],
        "flag_sensitivity": {"int8": sensitivity["a"]["value"], "float": sensitivity["b"]["value"]},
        "malignant_unflagged_by_int8_only": int(np.sum(malignant & b.refer & ~a.refer)),
        "malignant_flagged_by_int8_only": int(np.sum(malignant & a.refer & ~b.refer)),
        "macro_f1_difference": macro_f1["difference"],
        "groups": sensitivity["groups"],
        "margin": margin,
        "served": gate.accepted,
        "reason": f"INT8 flag sensitivity vs float: {gate.reason}",
    }


def on_threshold(
    rule: DecisionRule,
    probabilities: np.ndarray,
    ood_scores: np.ndarray | None,
    tolerance: float = EDGE_TOLERANCE,
) -> np.ndarray:
    """True per image whose served p(positive), or OOD score (relatively), is within `tolerance`
    of the rule's threshold: an answer no other engine can be expected to repeat.

    `evaluate` fits both thresholds on the validation split, and the flag's threshold is one
    validation malignant image's own score, so the split that judges INT8 holds images exactly on
    an edge: float ONNX Runtime and Keras already answer 2 of make demo's 64 differently."""
    p = probabilities[:, rule.classes.index(rule.positive_class)]
    edge = np.zeros(len(p), dtype=bool)
    if rule.threshold is not None:
        edge |= np.abs(p - rule.threshold) <= tolerance
    if rule.ood_threshold is not None and ood_scores is not None:
        edge |= np.abs(ood_scores - rule.ood_threshold) <= tolerance * rule.ood_threshold
    return edge


def _served(
    classifier: Classifier, images: Sequence[np.ndarray] | np.ndarray, rule: DecisionRule
) -> tuple[Served, np.ndarray | None]:
    """The served answers of `rule` (the release's) for images on `classifier`'s engine, and
    the OOD scores they came from."""
    batch = np.stack([classifier.engine.prepare(image) for image in images])
    proba, scores = classifier.forward(batch)
    return serve(rule, proba, scores), scores


def _agreement(same: np.ndarray) -> dict[str, float | int]:
    """Share of identical served answers with a Wilson interval (it does not collapse at 1)."""
    agree = int(same.sum())
    wilson = stats.binomtest(agree, len(same)).proportion_ci(0.95, method="wilson")
    return {
        "value": agree / len(same),
        "ci_low": float(wilson.low),
        "ci_high": float(wilson.high),
        "same": agree,
    }


def calibration_set(
    base: Classifier, train_images: Sequence[np.ndarray] | np.ndarray, seed: int
) -> list[np.ndarray]:
    """Up to CALIBRATION_IMAGES training images drawn with `seed`, fitted as `base` fits uploads."""
    pick = np.random.default_rng(seed).permutation(len(train_images))[:CALIBRATION_IMAGES]
    return [base.engine.prepare(train_images[i]) for i in sorted(pick)]


def add_int8(
    folder: Path,
    base: Classifier,
    train_images: Sequence[np.ndarray] | np.ndarray | np.ndarray,
    val_images: Sequence[np.ndarray] | np.ndarray | np.ndarray,
    val_labels: np.ndarray,
    val_groups: np.ndarray | None,
    margin: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Quantize the release in `folder` (its model.onnx; `base` serves it), compare on validation
    and keep model.int8.onnx only when it passes the gate: release.json's `onnx.int8` record."""
    calibration = calibration_set(base, train_images, seed)
    path = quantize(folder / ONNX_FILE, folder / INT8_FILE, calibration)
    int8 = load_classifier(folder, engine="onnx-int8")
    record = compare(int8, base, val_images, val_labels, val_groups, margin, seed)
    record["calibration"] = {"split": "train", "images": len(calibration), "method": "minmax"}
    found = bool(stage_nodes(folder / ONNX_FILE, FLOAT_STAGE))
    record["kept_in_float"] = f"{FLOAT_STAGE}* (the backbone's last stage)" if found else None
    record["file"] = INT8_FILE if record["served"] else None
    if not record["served"]:
        path.unlink()
    return record
