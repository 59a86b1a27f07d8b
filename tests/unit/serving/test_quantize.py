"""INT8: model.onnx quantized statically, judged on served answers, gated on the flag."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline import quantize
from pipeline.serving.classifier import load_classifier
from pipeline.serving.release import INT8_FILE
from pipeline.serving.rule import serve
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
    assert record["images"] == 40
    assert record["agreement"]["ci_low"] <= record["agreement"]["value"] <= 1
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
