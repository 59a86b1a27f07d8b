"""Azure ML's data collector as score.py uses it: a summary in, the answer out, never the image.

The collector is the real `azureml-ai-monitoring` client. Only its far end is replaced: on Azure
it posts to the deployment's data collector agent on loopback, here to tests.servers'
DataCollectorSink, which keeps every byte it receives (the agent exists only on Azure).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from azureml.ai.monitoring.init import teardown

from pipeline.ood_sets import ood_set
from pipeline.serving.classifier import load_classifier
from pipeline.serving.collection import INPUTS, OUTPUTS, DataCollection, collected_rows
from pipeline.serving.predlog import COLUMNS, record
from pipeline.serving.uploads import decode_upload
from tests.factories import CLASSES, encode, mini_classifier
from tests.ood_releases import make_ood_release, scans
from tests.servers import data_collector_sink

DEPLOYMENT = Path(__file__).resolve().parents[3] / "deploy" / "azure" / "deployment.yml"
MDC_VARIABLES = ("AZUREML_MDC_CONFIG_PATH", "AZUREML_MDC_ENABLED", "AZUREML_MDC_LOCAL_CAPTURE")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return load_classifier(
        make_ood_release(tmp_path_factory.mktemp("collect") / "rel", mini_classifier())
    )


@pytest.fixture
def sdk(monkeypatch):
    """The client keeps its settings and sender thread per process: each test starts clean."""
    for name in MDC_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    teardown()
    yield
    teardown()


def answered(classifier, upload: bytes) -> tuple[dict, np.ndarray, int, int]:
    """What score.py has after answering an upload: (answer, model input, width, height)."""
    image = decode_upload(upload)
    prepared = classifier.engine.prepare(image)
    return classifier.answer_batch(prepared[None])[0], prepared, image.width, image.height


def test_the_two_collections_split_the_log_row_and_leave_out_only_its_time(classifier):
    result, prepared, width, height = answered(classifier, encode(scans(1, seed=4)[0][0]))
    row = record(result, prepared, 640, 480, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    inputs, outputs = collected_rows(row)
    per_class = {f"probability_{cls}" for cls in CLASSES}
    assert set(inputs) | set(outputs) == (set(COLUMNS) - {"ts", "probabilities"}) | per_class
    assert not set(inputs) & set(outputs)
    assert not set(inputs) & per_class
    assert (inputs["width"], inputs["height"]) == (640, 480)
    assert inputs["ood_score"] == result["decision"]["ood_score"]
    assert outputs["answer"] == result["class"]
    assert outputs["refer"] == int(result["decision"]["refer"])
    assert outputs["model_version"] == "7"
    for cls, probability in result["probabilities"].items():
        assert outputs[f"probability_{cls}"] == probability
    values = [*inputs.values(), *outputs.values()]
    assert all(isinstance(v, int | float | str) for v in values), values


def test_the_collector_gets_each_answers_summary_correlated_and_never_the_image(
    classifier, sdk, tmp_path, monkeypatch
):
    photo = ood_set("textures", 1, 48, seed=0)[0]  # refused: its class is out of scope
    uploads = [encode(photo), encode(scans(1, seed=9, size=56)[0][0], "JPEG")]
    with data_collector_sink(tmp_path) as sink:
        for name, value in sink.environment(DEPLOYMENT).items():
            monkeypatch.setenv(name, value)
        collection = DataCollection()
        assert collection.active
        assert collection.failures == 0
        answers = []
        for upload in uploads:
            result, prepared, width, height = answered(classifier, upload)
            collection.collect(result, prepared, width, height)
            answers.append(result)
        received = sink.wait_for(lambda got: len(got) == 2 * len(uploads))
    assert collection.failures == 0
    pairs: dict[str, dict[str, dict]] = {}
    for frame in received:
        (row,) = frame.rows
        pairs.setdefault(frame.correlation_id, {})[frame.collection] = row
    assert len(pairs) == len(uploads)
    assert all(set(p) == {INPUTS, OUTPUTS} for p in pairs.values())
    by_width = {pair[INPUTS]["width"]: pair for pair in pairs.values()}
    for size, result in zip((48, 56), answers, strict=True):
        pair = by_width[size]
        assert pair[INPUTS]["height"] == size
        assert pair[INPUTS]["ood_score"] == pytest.approx(result["decision"]["ood_score"])
        assert pair[OUTPUTS]["answer"] == result["class"]
        for cls, probability in result["probabilities"].items():
            assert pair[OUTPUTS][f"probability_{cls}"] == pytest.approx(probability, abs=1e-9)
    assert by_width[48][OUTPUTS]["out_of_scope"] == 1
    assert by_width[48][OUTPUTS]["refer"] is None
    wire = b"".join(f.body + repr(f.headers).encode() for f in received)
    for data in (*uploads, photo.tobytes()):
        assert not any(data[i : i + 24] in wire for i in range(0, len(data) - 24, 7))


@pytest.mark.parametrize("why", ["package missing", "deployment without a data collector"])
def test_without_a_data_collector_the_answers_go_on_and_the_reason_is_said_once(
    classifier, sdk, why, monkeypatch, caplog
):
    if why == "package missing":
        monkeypatch.setitem(sys.modules, "azureml.ai.monitoring", None)
    result, prepared, width, height = answered(classifier, encode(scans(1, seed=5)[0][0]))
    with caplog.at_level(logging.WARNING, logger="pipeline.serving.collection"):
        collection = DataCollection()
        for _ in range(3):
            collection.collect(result, prepared, width, height)
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.serving.collection"]
    assert not collection.active
    assert len(said) == 1
    assert ("azureml.ai.monitoring" if why == "package missing" else "not enabled") in said[0]


def test_a_failing_collector_never_fails_an_answer_and_says_so_once(
    classifier, sdk, monkeypatch, caplog
):
    """A queue of one and no sender: the second frame finds the collector's queue full."""
    monkeypatch.setenv("AZUREML_MDC_ENABLED", "true")
    monkeypatch.setenv("AZUREML_MDC_QUEUE_CAPACITY", "1")
    monkeypatch.setenv("AZUREML_MDC_WORKER_DISABLED", "true")
    result, prepared, width, height = answered(classifier, encode(scans(1, seed=6)[0][0]))
    with caplog.at_level(logging.WARNING, logger="pipeline.serving.collection"):
        collection = DataCollection()
        assert collection.active
        for _ in range(3):
            collection.collect(result, prepared, width, height)
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.serving.collection"]
    assert collection.failures == 5
    assert len(said) == 1
    assert "queue is full" in said[0]
