"""INT8: model.onnx quantized statically, judged on served answers, gated on the flag."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline import quantize
from pipeline.serving.classifier import load_classifier
from pipeline.serving.release import INT8_FILE
from pipeline.serving.rule import DecisionRule, serve
from tests.factories import CLASSES, make_release, mini_classifier, scan

MALIGNANT = CLASSES.index("malignant")


@pytest.fixture(scope="module")
def float_release(onnx_release, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8") / "selected"
    shutil.copytree(onnx_release, folder)
    return folder


def labels_from(classifier, images) -> np.ndarray:
    """Malignant exactly where the classifier's served answer refers: its flag sensitivity is 1."""
    batch = np.stack([classifier.engine.prepare(image) for image in images])
    served = serve(classifier.release.rule, *classifier.forward(batch))
    return np.where(served.refer, MALIGNANT, 0)


def test_the_int8_model_answers_close_to_the_float_one_and_records_why_it_is_served(
    float_release,
):
    base = load_classifier(float_release, engine="onnx")
    val = [scan(seed, 40 + seed, 56) for seed in range(100, 140)]
    labels = labels_from(base, val)
    train = [scan(seed) for seed in range(20)]
    record = quantize.add_int8(float_release, base, train, val, labels, None, margin=0.2)
    assert record["calibration"] == {"split": "train", "images": 20, "method": "minmax"}
    assert record["kept_in_float"] is None  # the mini backbone has no conv5_ stage to keep
    assert record["images"] == 40
    assert record["agreement"]["ci_low"] <= record["agreement"]["value"] <= 1
    assert 0 <= record["differing_on_a_threshold"] <= 40 - record["agreement"]["same"]
    for key in ("flag_sensitivity_difference", "macro_f1_difference"):
        assert set(record[key]) == {"value", "ci_low", "ci_high"}
    assert record["served"] == (record["file"] == INT8_FILE)
    assert (float_release / INT8_FILE).is_file() == record["served"]
    if record["served"]:
        int8 = load_classifier(float_release, engine="onnx-int8")
        assert int8.engine.input_size == base.engine.input_size == (32, 32)
        gap = np.abs(
            int8.forward(int8.engine.prepare(val[0])[None])[0]
            - base.forward(base.engine.prepare(val[0])[None])[0]
        )
        assert gap.max() < 0.05


def test_an_int8_model_that_stops_flagging_malignant_scans_is_not_served(float_release, tmp_path):
    """A stand-in for a bad quantization: a model that answers benign for everything."""
    base = load_classifier(float_release, engine="onnx")
    never = mini_classifier(seed=3)
    dense = never.get_layer("predictions")
    kernel, _ = dense.get_weights()
    dense.set_weights([np.zeros_like(kernel), np.array([10.0, -10.0, 0.0])])
    candidate = load_classifier(make_release(tmp_path / "never", never, 0.3))
    val = [scan(seed) for seed in range(200, 230)]
    labels = labels_from(base, val)
    assert (labels == MALIGNANT).sum() >= 1
    record = quantize.compare(candidate, base, val, labels, None, margin=0.05)
    assert record["served"] is False
    assert record["flag_sensitivity"] == {"int8": 0.0, "float": 1.0}
    assert record["malignant_unflagged_by_int8_only"] == (labels == MALIGNANT).sum()
    assert "refused" in record["reason"]


def test_only_the_convolutions_and_relus_are_quantized(float_release, tmp_path):
    """Every quantize/dequantize pair sits at a convolution's or ReLU's input or output, and the
    head and softmax read float tensors (quantizing every op moved the demo's OOD scores by up
    to 93%)."""
    import onnx

    base = load_classifier(float_release, engine="onnx")
    calibration = [base.engine.prepare(scan(seed)) for seed in range(8)]
    path = quantize.quantize(float_release / "model.onnx", tmp_path / INT8_FILE, calibration)
    nodes = onnx.load(str(path)).graph.node
    made_by = {out: node.op_type for node in nodes for out in node.output}
    read_by: dict[str, set[str]] = {}
    for node in nodes:
        for name in node.input:
            read_by.setdefault(name, set()).add(node.op_type)
    pairs = [
        (q, dq) for q in nodes if q.op_type == "QuantizeLinear"
        for dq in nodes if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]
    ]  # fmt: skip
    assert pairs
    for q, dq in pairs:
        ops = set(quantize.QUANTIZED_OPS)
        assert made_by.get(q.input[0]) in ops or read_by[dq.output[0]] <= ops
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    head = [n for n in nodes if n.op_type in ("Gemm", "MatMul", "Softmax")]
    assert head
    assert not any(dequantized & set(n.input) for n in head)


def test_the_backbones_last_stage_stays_in_float(tmp_path):
    """Its output is the pooled features the OOD check reads: in INT8 it moved make demo's OOD
    scores enough to change an answer (pipeline.quantize.FLOAT_STAGE). The stage before it is
    quantized. The last stage is found from its first node on, not by each node's name: the
    export names a convolution it folds a batch norm into after the norm (here) or `Conv__<n>`
    (DenseNet121's)."""
    import onnx

    from tests.factories import with_onnx

    folder = with_onnx(
        make_release(tmp_path / "staged", mini_classifier(seed=5, staged=True)),
        [scan(seed) for seed in range(4)],
    )
    base = load_classifier(folder, engine="onnx")
    calibration = [base.engine.prepare(scan(seed)) for seed in range(8)]
    path = quantize.quantize(folder / "model.onnx", tmp_path / INT8_FILE, calibration)
    nodes = onnx.load(str(path)).graph.node
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    convs = [n for n in nodes if n.op_type == "Conv" and "preprocess" not in n.name]
    quantized = [bool(dequantized & set(n.input[1:2])) for n in convs]  # the weights' input
    assert quantized == [True, False], [n.name for n in convs]
    assert len(quantize.stage_nodes(folder / "model.onnx", "conv5_")) >= 3
    assert quantize.stage_nodes(folder / "model.onnx", "conv9_") == []
    val = [scan(seed) for seed in range(300, 320)]
    train = [scan(seed) for seed in range(8)]
    record = quantize.add_int8(folder, base, train, val, labels_from(base, val), None, 0.2)
    assert record["kept_in_float"] == "conv5_* (the backbone's last stage)"


def test_an_answer_on_a_threshold_is_told_apart_from_one_that_moved():
    rule = DecisionRule(CLASSES, "malignant", threshold=0.3, ood_threshold=2.0)
    p = np.array([[0.7, 0.3 + 1e-7, 0.0], [0.5, 0.5, 0.0], [0.8, 0.2, 0.0], [0.9, 0.1, 0.0]])
    scores = np.array([0.5, 1.0, 2.0 * (1 - 1e-6), 1.9])
    assert quantize.on_threshold(rule, p, scores).tolist() == [True, False, True, False]
    assert quantize.on_threshold(rule, p, None).tolist() == [True, False, False, False]
