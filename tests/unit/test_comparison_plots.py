"""Every model in one DVC chart: the long tables evaluate writes, and `dvc plots show` drawing them
with the project's templates and page, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import comparison_plots, paths
from pipeline.errors import UserError
from tests.browsers import block_network
from tests.repos import ROOT, sh

CLASSES = ("benign", "malignant", "normal")
ANSWERS = (*CLASSES, "out_of_scope")
MODELS = ("alpha", "beta", "gamma")  # no backbone of params.yaml: the charts take any names
DVC = str(Path(sys.executable).parent / "dvc")
ENV = dict(os.environ)


def history(epochs: int, offset: float = 0.0) -> pd.DataFrame:
    rising = np.linspace(0.3, 0.9, epochs) + offset
    return pd.DataFrame({"epoch": range(1, epochs + 1), "accuracy": rising, "loss": 2 - rising,
                         "val_loss": 2.2 - rising, "val_accuracy": rising - 0.1,
                         "val_macro_f1": rising - 0.2, "learning_rate": 1e-3})  # fmt: skip


def test_curves_table_has_a_row_per_model_epoch_and_curve_in_long_form():
    table = comparison_plots.curves_table({"beta": history(2), "alpha": history(3)})
    assert list(table.columns) == ["model", "epoch", "metric", "split", "value"]
    assert list(dict.fromkeys(table["model"])) == ["beta", "alpha"]  # the order given
    assert len(table) == (2 + 3) * len(comparison_plots.CURVES)  # learning_rate is no curve
    f1 = table[table["metric"] == "macro-F1"]
    assert set(f1["split"]) == {"validation"}  # early stopping's curve, validation only
    alpha = table[(table["model"] == "alpha") & (table["metric"] == "loss")]
    assert alpha.groupby("split")["epoch"].apply(list).to_dict() == {
        "training": [1, 2, 3],
        "validation": [1, 2, 3],
    }
    assert alpha[alpha["split"] == "training"]["value"].tolist() == pytest.approx([1.7, 1.4, 1.1])


def test_a_history_without_a_curve_leaves_that_curve_out():
    short = history(2).drop(columns=["val_macro_f1"])
    table = comparison_plots.curves_table({"alpha": short})
    assert "macro-F1" not in set(table["metric"])


def test_confusion_table_holds_every_cell_with_its_share_of_the_true_class():
    matrix = [[8, 1, 0, 1], [0, 0, 0, 0], [2, 0, 3, 0]]  # no malignant image: its row is zeros
    table = comparison_plots.confusion_table({"alpha": matrix}, CLASSES, ANSWERS)
    assert list(table.columns) == ["model", "actual", "predicted", "images", "share"]
    assert len(table) == len(CLASSES) * len(ANSWERS)  # zeros written: the chart has no holes
    cell = table.set_index(["actual", "predicted"])
    assert cell.loc[("benign", "out_of_scope"), "images"] == 1
    assert cell.loc[("benign", "benign"), "share"] == pytest.approx(0.8)
    assert cell.loc[("normal", "benign"), "share"] == pytest.approx(0.4)
    assert table.groupby("actual")["share"].sum().to_dict() == pytest.approx(
        {"benign": 1.0, "malignant": 0.0, "normal": 1.0}
    )


def test_a_confusion_matrix_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"alpha: confusion matrix \(3, 3\)"):
        comparison_plots.confusion_table({"alpha": np.eye(3, dtype=int)}, CLASSES, ANSWERS)


def test_a_missing_history_names_the_file_and_the_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"reports/train/beta/history.csv.*dvc repro train@beta"):
        comparison_plots.read_histories(["beta"])


def plots_project(root: Path) -> None:
    """The project's dvc.yaml, params and .dvc/ (templates, page) with its committed plot data,
    the two all-model tables rewritten for three models of other names."""
    files = sh("git", "ls-files", "dvc.yaml", "params.yaml", ".dvc", str(paths.EVALUATE_PLOTS),
               cwd=ROOT, env=ENV).split()  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    matrix = [[8, 1, 0, 1], [1, 6, 0, 2], [0, 1, 9, 0]]
    tables = {
        paths.TRAINING_CURVES: comparison_plots.curves_table(
            {m: history(3 + k, 0.02 * k) for k, m in enumerate(MODELS)}
        ),
        paths.CONFUSION_SHARES: comparison_plots.confusion_table(
            dict.fromkeys(MODELS, matrix), CLASSES, ANSWERS
        ),
    }
    for path, table in tables.items():
        table.to_csv(root / path, index=False)


def test_dvc_plots_show_draws_every_model_in_one_chart_offline(tmp_path, browser):
    """`dvc plots show` with the project's templates: the training curves and the confusion of
    every model are one chart each (a colour, a panel per model) and every chart is drawn
    with the network refused (the page carries vega)."""
    root = tmp_path / "project"
    plots_project(root)
    result = subprocess.run([DVC, "plots", "show", "--json"], cwd=root, env=ENV,
                            capture_output=True, text=True, check=True)  # fmt: skip
    # (its stderr says the data's contact sheet, an image not in git, is missing)
    shown = json.loads(result.stdout)["data"]
    for path, colour_or_panel in (
        (paths.TRAINING_CURVES, "series"),
        (paths.CONFUSION_SHARES, "panel"),
    ):
        (chart,) = shown[str(path)]
        assert chart["type"] == "vega"
        content = chart["content"]
        assert {row["model"] for row in content["data"]["values"]} == set(MODELS)
        assert colour_or_panel in json.dumps(content)
    curves = shown[str(paths.TRAINING_CURVES)][0]["content"]
    titles = [p["layer"][0]["encoding"]["y"]["title"] for p in curves["hconcat"]]
    assert titles == ["accuracy", "loss (categorical cross-entropy)", "validation macro-F1"]
    charts = sum(e["type"] == "vega" for entries in shown.values() for e in entries)
    assert charts == 2 + len(list((root / paths.EVALUATE_PLOTS).glob("*/*.csv")))
    sh(DVC, "plots", "show", "-o", str(tmp_path / "page"), cwd=root, env=ENV)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused = block_network(page)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else 0)
    page.goto((tmp_path / "page" / "index.html").as_uri(), wait_until="load")
    drawn = page.locator(".vega-embed canvas.marks, .vega-embed svg.marks")
    drawn.nth(charts - 1).wait_for(timeout=30_000)
    assert drawn.count() == charts
    assert (refused, errors) == ([], [])
    page.close()
