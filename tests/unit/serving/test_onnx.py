"""The ONNX Runtime engine: the same answers as Keras, through the same core, without Keras."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.export import PARITY_TOLERANCE, add_onnx, export_onnx
from pipeline.export import main as export_main
from pipeline.serving.classifier import load_classifier
from pipeline.serving.engine import KerasEngine, OnnxEngine
from pipeline.serving.release import ONNX_FILE, NotARelease, read_release
from tests.factories import CLASSES, encode, make_release, mini_classifier, scan


def test_onnx_and_keras_engines_give_the_same_answers(onnx_release):
    by_keras = load_classifier(onnx_release)
    by_onnx = load_classifier(onnx_release, engine="onnx")
    images = [scan(seed, 40 + 7 * seed, 56) for seed in range(8)]  # several sizes and shapes
    keras_answers, onnx_answers = by_keras.predict_many(images), by_onnx.predict_many(images)
    for ours, theirs in zip(onnx_answers, keras_answers, strict=True):
        assert ours["class"] == theirs["class"]
        assert ours["decision"]["refer"] == theirs["decision"]["refer"]
        for name in CLASSES:
            assert ours["probabilities"][name] == pytest.approx(
                theirs["probabilities"][name], abs=1e-5
            )
    assert by_onnx.engine.input_size == by_keras.engine.input_size == (32, 32)
    assert by_onnx.engine.keep_aspect is by_keras.engine.keep_aspect is True


def test_the_onnx_graph_gives_the_pooled_features_the_ood_score_reads(onnx_release):
    by_keras = load_classifier(onnx_release)
    by_onnx = load_classifier(onnx_release, engine="onnx")
    batch = np.stack([by_keras.engine.prepare(scan(seed)) for seed in range(3)])
    keras_pooled, keras_proba = by_keras.engine.pooled_and_probabilities(batch)
    onnx_pooled, onnx_proba = by_onnx.engine.pooled_and_probabilities(batch)
    np.testing.assert_allclose(onnx_pooled, keras_pooled, atol=1e-5)
    np.testing.assert_allclose(onnx_proba, keras_proba, atol=1e-5)


def test_a_batch_runs_in_chunks_of_bounded_pixels_with_the_same_outputs(onnx_release, monkeypatch):
    """Large 224 px batches run faster in chunks (pipeline.serving.engine.CHUNK_PIXELS); the
    chunks must give what one run gives, in order, and an empty batch keeps its shapes."""
    from pipeline.serving import engine as engines

    onnx = load_classifier(onnx_release, engine="onnx").engine
    batch = np.stack([onnx.prepare(scan(seed)) for seed in range(5)])
    whole = onnx.pooled_and_probabilities(batch)
    sizes: list[int] = []
    session = onnx.session

    class Counting:
        def run(self, names, feed):
            sizes.append(len(feed[onnx.input_name]))
            return session.run(names, feed)

    monkeypatch.setattr(onnx, "session", Counting())
    monkeypatch.setattr(engines, "CHUNK_PIXELS", 2 * 32 * 32 + 1)
    chunked = onnx.pooled_and_probabilities(batch)
    assert sizes == [2, 2, 1]
    for ours, theirs in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    pooled, proba = onnx.pooled_and_probabilities(batch[:0])
    assert pooled.shape == (0, whole[0].shape[1])
    assert proba.shape == (0, len(CLASSES))


def test_the_onnx_path_serves_without_importing_keras_or_tensorflow(onnx_release):
    probe = (
        "import json, sys\n"
        "from pipeline.serving.classifier import load_classifier\n"
        "from pipeline.serving.app import create_app\n"
        "from pipeline.serving.uploads import decode_upload\n"
        f"c = load_classifier({str(onnx_release)!r}, engine='onnx')\n"
        "app = create_app(c)\n"
        f"answer = c.predict(decode_upload({encode(scan(1))!r}))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow'))\n"
        "print(json.dumps({'class': answer['class'], 'heavy': heavy}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["class"] in CLASSES
    assert found["heavy"] == []


def test_the_onnx_engine_on_a_release_without_model_onnx_says_how_to_export(mini_release):
    with pytest.raises(NotARelease, match="python -m pipeline.export"):
        load_classifier(mini_release[0], engine="onnx")
    with pytest.raises(NotARelease, match="select.int8"):
        load_classifier(mini_release[0], engine="onnx-int8")
    with pytest.raises(ValueError, match="engine"):
        load_classifier(mini_release[0], engine="tflite")


def test_a_release_records_its_parity_and_auto_serves_onnx_when_it_has_it(
    onnx_release, mini_release
):
    record = read_release(onnx_release).onnx
    assert record["served"] == ONNX_FILE
    assert record["parity"]["images"] == 6
    assert record["parity"]["max_abs_probability_difference"] <= PARITY_TOLERANCE
    assert record["parity"]["answers_that_differ"] == 0
    assert isinstance(load_classifier(onnx_release, engine="auto").engine, OnnxEngine)
    assert isinstance(load_classifier(mini_release[0], engine="auto").engine, KerasEngine)


def test_an_onnx_export_that_answers_unlike_keras_is_not_released(onnx_release, tmp_path):
    """The check compares against the Keras model given: another model's answers are far off."""
    other = load_classifier(make_release(tmp_path / "other", mini_classifier(seed=5), 0.3))
    folder = tmp_path / "selected"
    shutil.copytree(onnx_release, folder)
    with pytest.raises(UserError, match="not released"):
        add_onnx(folder, other, [scan(seed) for seed in range(4)], PARITY_TOLERANCE)


def test_export_leaves_a_release_that_has_model_onnx_as_it_is(onnx_release, capsys):
    """models/selected is a DVC output: `make export-onnx` on it must not dirty `dvc status`."""
    before = (onnx_release / ONNX_FILE).stat().st_mtime_ns
    assert export_main([str(onnx_release)]) == 0
    assert (onnx_release / ONNX_FILE).stat().st_mtime_ns == before
    assert "select exports every release" in capsys.readouterr().out


def test_a_model_whose_preprocessing_does_not_export_is_refused_with_the_reason(tmp_path):
    """Keras' Normalization keeps its statistics as constants: they became extra graph inputs."""
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Normalization(mean=[100.0] * 3, variance=[400.0] * 3, name="preprocess")(
        inputs
    )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    folder = make_release(tmp_path / "old", model, 0.5)
    with pytest.raises(UserError, match="retrain"):
        export_onnx(folder / "model.keras", folder / ONNX_FILE)
    assert not (folder / ONNX_FILE).exists()
