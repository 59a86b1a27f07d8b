"""`python -m pipeline.monitor`: quiet on a replay of in-distribution images, loud on a drift."""

from __future__ import annotations

import datetime as dt
import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import monitor
from pipeline.serving.classifier import load_classifier
from pipeline.serving.predlog import (
    REFERENCE_FILE,
    PredictionLog,
    image_statistics,
    record,
    replay,
    write_reference,
)
from tests.factories import mini_classifier, raw_params
from tests.ood_releases import make_ood_release, scans

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release with an OOD check and its reference: 90 validation-like scans."""
    folder = make_ood_release(tmp_path_factory.mktemp("monitor") / "rel", mini_classifier())
    classifier = load_classifier(folder)
    images, _ = scans(90, seed=2)
    write_reference(folder / REFERENCE_FILE, replay(classifier, images, sizes(90, seed=2)))
    return folder, classifier


def sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """Upload sizes as one scanner gives them: a few hundred pixels, a landscape aspect."""
    rng = np.random.default_rng(seed)
    return [(int(w), int(w * 0.75)) for w in rng.integers(500, 700, n)]


def log_replay(folder, classifier, images, seed: int) -> None:
    """Answer images as the service does and log them over the last two days."""
    log = PredictionLog(folder)
    for i, (image, (w, h)) in enumerate(zip(images, sizes(len(images), seed), strict=True)):
        prepared = classifier.engine.prepare(image)
        result = classifier.answer_batch(prepared[None])[0]
        log.append(record(result, prepared, w, h, NOW - dt.timedelta(hours=i % 48)))


def run(tmp_path, folder):
    params = {"monitor": {"log_dir": str(tmp_path / "log"), "model": str(folder),
                          "report_dir": str(tmp_path / "report")}}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(params)))
    return monitor.run(tmp_path / "params.yaml", None, None, NOW)


def test_a_replay_of_test_images_stays_quiet(release, tmp_path):
    folder, classifier = release
    log_replay(tmp_path / "log", classifier, scans(80, seed=3)[0], seed=3)
    summary = run(tmp_path, folder)
    assert not summary["drift"], [c for c in summary["checks"] if c["drift"]]
    assert summary["window"]["answers"] == 80
    assert "no drift detected" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "mean.png").is_file()


def test_a_brightness_shift_on_half_of_the_inputs_is_flagged(release, tmp_path, monkeypatch):
    folder, classifier = release
    images = scans(80, seed=3)[0].astype(np.int16)
    images[::2] += 60  # a new scanner's gain on half of the uploads
    log_replay(tmp_path / "log", classifier, np.clip(images, 0, 255).astype(np.uint8), seed=3)
    summary = run(tmp_path, folder)
    flagged = {c["check"] for c in summary["checks"] if c["drift"]}
    assert "mean (KS)" in flagged
    monkeypatch.chdir(tmp_path)
    assert monitor.main(["--params", str(tmp_path / "params.yaml")]) == 1
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["drift"] is True


def test_too_few_answers_is_a_user_error_not_a_verdict(release, tmp_path, monkeypatch):
    folder, classifier = release
    log_replay(tmp_path / "log", classifier, scans(5, seed=4)[0], seed=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params({"monitor": {
        "log_dir": str(tmp_path / "log"), "model": str(folder)}})))  # fmt: skip
    assert monitor.main(["--params", str(tmp_path / "params.yaml")]) == 2


def test_a_days_log_written_before_refer_was_named_so_takes_new_rows(release, tmp_path):
    """A release upgraded mid-day appends to the day's file an older one created with `positive`
    in place of `refer`: the missing column is added, the old rows stay."""
    import sqlite3

    folder, classifier = release
    log = tmp_path / "log"
    log.mkdir()
    old = log / f"predictions-{NOW.date().isoformat()}.sqlite"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE log (ts TEXT, answer TEXT, positive INTEGER)")
        db.execute("INSERT INTO log VALUES ('2026-12-01T00:00:00.000+00:00', 'benign', 0)")
    db.close()
    log_replay(log, classifier, scans(3, seed=5)[0], seed=5)
    with sqlite3.connect(old) as db:
        refer = [r[0] for r in db.execute("SELECT refer FROM log ORDER BY ts")]
    db.close()
    assert len(refer) == 4
    assert refer[0] is None
    assert all(r in (0, 1) for r in refer[1:])


@pytest.mark.parametrize("grey", [True, False])
def test_the_logs_intensity_statistics_are_the_numbers_of_their_definition(grey):
    """Computed channel by channel for speed; the same floats as the plain definition."""
    rng = np.random.default_rng(int(grey))
    x = rng.integers(0, 256, (224, 224, 3)).astype(np.float32)
    if grey:
        x[..., 1] = x[..., 2] = x[..., 0]
    plain = np.asarray(x, dtype=np.float64)
    level = plain.mean(axis=-1)
    p05, p50, p95 = np.percentile(level, [5, 50, 95])
    expected = {
        "mean": level.mean(), "std": level.std(), "p05": p05, "p50": p50, "p95": p95,
        "colour": (plain.max(axis=-1) - plain.min(axis=-1)).mean(),
    }  # fmt: skip
    assert image_statistics(x) == {key: float(value) for key, value in expected.items()}


def test_a_histogram_keeps_its_shape_beside_an_outlier_and_marks_the_rules_threshold():
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.normal(200, 30, 300))
    window = pd.Series(np.r_[rng.normal(230, 30, 99), 1e6])  # one photo scored a million
    fig = monitor._histogram(reference, window, "ood_score", mark=300.0)
    ax = fig.axes[0]
    heights = np.array([patch.get_height() for patch in ax.patches])
    assert (heights > 0).sum() >= 20  # spread over the bins, not one bar and nineteen empty
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [300.0]
    assert ax.get_xlim()[1] < 1000
    assert "beyond the range" in ax.get_xlabel()
    fig.savefig(io.BytesIO(), format="png")  # draws
