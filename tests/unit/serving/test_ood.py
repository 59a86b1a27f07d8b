"""Out of scope: beyond the OOD threshold every surface refuses to give a class, and says why."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from scipy.spatial.distance import mahalanobis

from pipeline import predict
from pipeline.ood_sets import ood_set
from pipeline.serving import ood, pyfunc
from pipeline.serving.app import ServiceSettings, create_app
from pipeline.serving.classifier import load_classifier
from pipeline.serving.predlog import COLUMNS
from pipeline.serving.release import NotARelease, read_release, write_release
from pipeline.serving.rule import OUT_OF_SCOPE, DecisionRule, answer
from pipeline.serving.uploads import Limits
from tests.factories import CLASSES, encode, mini_classifier
from tests.ood_releases import make_ood_release, scans


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return load_classifier(
        make_ood_release(tmp_path_factory.mktemp("ood") / "rel", mini_classifier())
    )


@pytest.fixture(scope="module")
def photo(classifier) -> np.ndarray:
    """A natural-image-like texture, beyond the threshold (checked: the test means nothing else)."""
    image = ood_set("textures", 1, 48, seed=0)[0]
    assert (
        classifier.predict(image)["decision"]["ood_score"] > classifier.release.rule.ood_threshold
    )
    return image


@pytest.mark.parametrize("seed", range(3))
def test_out_of_scope_the_class_and_the_flag_still_cannot_contradict(seed):
    rng = np.random.default_rng(seed)
    rule = DecisionRule(CLASSES, threshold=0.3, ood_threshold=1.0)
    for p, score in zip(rng.dirichlet(np.ones(3), 300), rng.exponential(1.0, 300), strict=True):
        result = answer(rule, p, float(score))
        decision = result["decision"]
        assert (result["class"] == OUT_OF_SCOPE) == (score > 1.0) == decision["out_of_scope"]
        assert (decision["refer"] is None) == (result["class"] == OUT_OF_SCOPE)
        if result["class"] == "malignant":
            assert decision["refer"] is True
        assert (decision["reason"] is not None) == decision["out_of_scope"]


def test_a_rule_with_an_ood_threshold_refuses_to_answer_without_a_score():
    with pytest.raises(ValueError, match="OOD score"):
        answer(DecisionRule(CLASSES, ood_threshold=2.0), np.array([0.2, 0.5, 0.3]))


def test_the_score_is_the_squared_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    x = rng.normal(size=(120, 5)) + labels[:, None]
    fitted = ood.fit(x, labels)
    probes = rng.normal(size=(10, 5)) * 3
    expected = [
        min(mahalanobis(q, m, fitted.precision.astype(float)) ** 2 for m in fitted.means)
        for q in probes
    ]
    assert fitted.scores(probes) == pytest.approx(expected, rel=1e-6)
    assert fitted.scores(x).mean() < fitted.scores(x + 10).mean()


def test_the_threshold_and_its_statistics_travel_together(classifier, tmp_path):
    rule = DecisionRule(CLASSES, ood_threshold=3.0)
    model = classifier.release.model_path
    with pytest.raises(ValueError, match="OOD threshold"):
        write_release(tmp_path, model, rule, {})
    copy = tmp_path / "copy"
    shutil.copytree(classifier.release.folder, copy)
    assert read_release(copy).ood.dimensions == classifier.release.ood.dimensions
    (copy / ood.OOD_FILE).unlink()
    with pytest.raises(NotARelease, match="ood.npz"):
        read_release(copy)


def test_in_distribution_scans_are_mostly_answered(classifier):
    answers = classifier.predict_many(list(scans(40, seed=3)[0]))
    assert sum(a["class"] == OUT_OF_SCOPE for a in answers) <= 8


def test_every_surface_abstains_on_an_out_of_distribution_image(classifier, photo, tmp_path):
    def refused(result) -> None:
        assert result["class"] == OUT_OF_SCOPE
        assert result["decision"]["refer"] is None
        assert "radiologist" in result["decision"]["reason"]

    refused(classifier.predict(photo))
    app = create_app(classifier, ServiceSettings(Limits(), heatmaps=True))
    with TestClient(app) as client:
        for heatmap in ("false", "true"):
            response = client.post(f"/predict?heatmap={heatmap}", content=encode(photo))
            refused(response.json())
            assert response.json().get("heatmap") is None
    served = pyfunc.ServingModel()
    served.classifier, served.limits = classifier, Limits()
    frame = served.predict(None, pd.DataFrame({"image": [pyfunc.image_example(photo)["image"][0]]}))
    refused(frame.iloc[0].to_dict())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.png").write_bytes(encode(photo))
    predict.score(tmp_path / "in", classifier, tmp_path / "out.csv")
    row = pd.read_csv(tmp_path / "out.csv").iloc[0]
    assert row["class"] == OUT_OF_SCOPE
    assert pd.isna(row["refer"])
    assert row["ood_score"] > 0
    written = pd.read_csv(tmp_path / "out.csv", dtype=str).iloc[0]["ood_score"]
    assert len(written.split(".")[1]) == 3  # rounded: a score, not 17 digits


def test_the_log_holds_no_image_bytes_and_no_file_names(classifier, photo, tmp_path):
    app = create_app(classifier, ServiceSettings(Limits(), heatmaps=False, log_dir=tmp_path))
    uploads = [encode(photo), encode(scans(1, seed=9)[0][0])]
    with TestClient(app) as client:
        for i, data in enumerate(uploads):
            files = {"file": (f"jane-doe-MRN{i}4711.png", data, "image/png")}
            assert client.post("/predict", files=files).status_code == 200
    (path,) = tmp_path.glob("predictions-*.sqlite")
    raw = path.read_bytes()
    assert b"jane-doe" not in raw
    assert b"4711" not in raw
    assert b"MRN" not in raw
    pixels = photo.tobytes()
    for data in (*uploads, pixels):
        assert not any(data[i : i + 32] in raw for i in range(0, len(data) - 32, 97))
    with sqlite3.connect(path) as db:
        names = [row[1] for row in db.execute("PRAGMA table_info(log)")]
        rows = db.execute("SELECT answer, out_of_scope, ood_score, width FROM log").fetchall()
    assert names == list(COLUMNS)
    assert len(rows) == 2
    assert rows[0][:2] == (OUT_OF_SCOPE, 1)
    assert rows[0][3] == 48
