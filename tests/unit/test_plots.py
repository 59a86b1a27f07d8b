"""pipeline.plots: PNGs that open, DVC plot data in the shapes DVC's templates read."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pipeline import metrics, plots

CLASSES = ("benign", "malignant", "normal")


@pytest.fixture
def fixture_predictions():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    logits = rng.normal(size=(10, 3)) + 1.0 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba


def assert_png(path, min_side=50):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None
    assert min(image.shape[:2]) >= min_side


def test_predictions_table_lists_path_label_prediction_and_every_probability(fixture_predictions):
    y, proba = fixture_predictions
    paths = [f"img{i}.png" for i in range(10)]
    frame = plots.predictions_table(paths, y, proba, CLASSES)
    assert list(frame.columns) == [
        "path",
        "label",
        "predicted",
        "p_benign",
        "p_malignant",
        "p_normal",
    ]
    assert frame["predicted"].tolist() == [CLASSES[k] for k in proba.argmax(1)]
    np.testing.assert_allclose(frame[["p_benign", "p_malignant", "p_normal"]], proba, atol=1e-6)


@pytest.mark.parametrize(
    ("normalize", "cells"),
    [
        (False, ["3", "1", "0", "0", "2", "1", "0", "0", "0"]),
        # rows = true class: each row sums to 1, an empty row stays 0 (no division by zero)
        (True, ["0.75", "0.25", "0.00", "0.00", "0.67", "0.33", "0.00", "0.00", "0.00"]),
    ],
)
def test_confusion_figure_shows_each_cell_with_true_classes_as_rows(tmp_path, normalize, cells):
    fig = plots.confusion_figure([[3, 1, 0], [0, 2, 1], [0, 0, 0]], CLASSES, normalize, "val")
    (ax, _colorbar) = fig.axes
    assert [t.get_text() for t in ax.texts] == cells
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CLASSES)
    assert (ax.get_ylabel(), ax.get_xlabel(), ax.get_title()) == ("true", "predicted", "val")
    plots.save_png(fig, tmp_path / "plots" / "confusion.png")
    assert_png(tmp_path / "plots" / "confusion.png")


def test_a_confusion_figure_of_served_answers_has_the_refusals_as_a_last_column():
    matrix = [[3, 1, 0, 1], [0, 2, 1, 2], [0, 0, 4, 0]]
    fig = plots.confusion_figure(matrix, CLASSES, False, "test", [*CLASSES, "out_of_scope"])
    (ax, _colorbar) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [*CLASSES, "out_of_scope"]
    assert [t.get_text() for t in ax.texts] == [str(v) for row in matrix for v in row]


def test_roc_and_reliability_figures_draw_the_curves_given(tmp_path, fixture_predictions):
    y, proba = fixture_predictions
    rows = metrics.roc_points(y, proba, CLASSES)
    assert {r["class"] for r in rows} == set(CLASSES)
    assert all(0 <= r["fpr"] <= 1 and 0 <= r["tpr"] <= 1 for r in rows)
    roc = plots.roc_figure(rows, {"benign": 0.8}, "test")
    legend = [t.get_text() for t in roc.axes[0].get_legend().get_texts()]
    assert legend == ["benign (AUC 0.800)", "malignant", "normal"]  # an AUC only where known
    benign = roc.axes[0].get_lines()[0].get_xydata()
    want = pd.DataFrame([r for r in rows if r["class"] == "benign"])[["fpr", "tpr"]]
    np.testing.assert_allclose(benign, want.to_numpy())  # the curve drawn is the rows given
    plots.save_png(roc, tmp_path / "roc.png")
    curves = {"before": metrics.reliability_bins(y, proba, 10)}
    curves["after"] = metrics.reliability_bins(y, metrics.apply_temperature(proba, 2.0), 10)
    reliability = plots.reliability_figure(curves, "test")
    legend = [t.get_text() for t in reliability.axes[0].get_legend().get_texts()]
    assert legend == ["perfect", "before", "after"]
    plots.save_png(reliability, tmp_path / "reliability.png")
    assert_png(tmp_path / "roc.png")
    assert_png(tmp_path / "reliability.png")


def test_sample_rows_hold_what_their_titles_say(fixture_predictions):
    y, proba = fixture_predictions
    pred = proba.argmax(1)
    rows = plots.choose_samples(y, proba, CLASSES, per_class=2, seed=0)
    for k, name in enumerate(CLASSES):
        for i in rows[f"correct: true {name}"]:
            assert y[i] == k
            assert pred[i] == k
        for i in rows[f"wrong: true {name}"]:
            assert y[i] == k
            assert pred[i] != k
        assert len(rows[f"correct: true {name}"]) == min(2, np.sum((y == k) & (pred == k)))
    errors = rows["most confident errors"]
    assert all(pred[i] != y[i] for i in errors)
    confidence = proba[errors].max(1)
    assert list(confidence) == sorted(confidence, reverse=True)
    assert len(errors) == min(2, int(np.sum(pred != y)))
    assert rows == plots.choose_samples(y, proba, CLASSES, per_class=2, seed=0)


def test_image_grid_leaves_out_empty_rows_and_names_them(tmp_path, fixture_predictions):
    y, proba = fixture_predictions
    images = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3)).astype(np.uint8)
    rows = plots.choose_samples(y, proba, CLASSES, per_class=3, seed=0)
    rows = {name: idx for name, idx in rows.items() if idx}
    captions = [f"true {CLASSES[t]}" for t in y]
    full = plots.image_grid(images, rows, captions, "samples")
    with_empty = plots.image_grid(images, {**rows, "no such row": []}, captions, "samples")
    assert len(with_empty.axes) == len(full.axes)  # no blank row of axes
    assert "no images: no such row" in with_empty.get_supxlabel()
    plots.save_png(with_empty, tmp_path / "grid.png")
    assert_png(tmp_path / "grid.png")


def test_reliability_diagram_shows_each_bins_image_count():
    rows = [
        {"confidence": 0.2, "accuracy": 0.1, "count": 3},
        {"confidence": 0.8, "accuracy": 0.9, "count": 12},
        {"confidence": 0.5, "accuracy": 0.0, "count": 0},
    ]
    fig = plots.reliability_figure({"raw": rows}, "densenet121, val")
    assert [t.get_text() for t in fig.axes[1].texts] == ["3", "12"]


def test_reliability_counts_of_two_curves_in_the_same_bins_do_not_overlap():
    """The raw and the temperature-scaled curves share most bins: their counts get a row each."""
    rows = [
        {"bin_low": b / 10, "bin_high": (b + 1) / 10, "confidence": b / 10 + 0.05,
         "accuracy": b / 10, "count": 100 + b}
        for b in range(10)
    ]  # fmt: skip
    shifted = [{**r, "confidence": r["confidence"] + 0.01, "count": r["count"] + 1} for r in rows]
    fig = plots.reliability_figure({"raw (served)": rows, "T=1.43": shifted}, "densenet121, val")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[1].texts]
    assert len(boxes) == 20
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    assert overlapping == []
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert labels == ["raw (served)", "T=1.43"]
