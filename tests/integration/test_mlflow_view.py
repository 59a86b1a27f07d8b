"""The link `make ui` prints, opened as a new user opens it: `make ui` serves a real MLflow store
(SQLite) holding two evaluated training runs, and a fresh headless Chromium at 1280 px follows the
printed link. MLflow 3 opens its Assistant panel by itself in such a browser (local server, first
visit), which leaves the runs table about 700 px; the headline metric columns must still be seen.

Needs Debian's chromium (`make browser`) and the `playwright` Python package. Network: loopback.
"""

from __future__ import annotations

import re
import time

import mlflow
import pytest

from pipeline import evaluate_report, tracking
from tests.factories import enter_project, project_params
from tests.repos import ROOT, clean_env
from tests.servers import free_port, running

pytestmark = pytest.mark.slow

WIDTH = 1280
# Validation figures of two models, as evaluate reports them (the best first once sorted).
FIGURES = {
    "densenet121": {"f1": 0.9540, "sens": 0.9412, "spec": 0.8511, "auc": 0.9650},
    "resnet50": {"f1": 0.7639, "sens": 0.8824, "spec": 0.7021, "auc": 0.9011},
}


def estimate(value: float) -> dict[str, float]:
    return {"value": value, "ci_low": value - 0.1, "ci_high": min(value + 0.1, 1.0)}


def evaluated_runs(root) -> None:
    """Two training runs as training leaves them (val_macro_f1 per epoch), then evaluate's own
    logging of their validation figures: the names the view's columns are, it logs."""
    params = project_params()
    tracking.setup(params.mlflow.experiment)
    inputs, results = {}, {}
    for arch, figures in FIGURES.items():
        with mlflow.start_run(run_name=arch) as run:
            for epoch in range(3):
                mlflow.log_metric("val_macro_f1", figures["f1"] - 0.1 * (2 - epoch), step=epoch)
        inputs[arch] = {"run_id": run.info.run_id}
        operating_point = {
            "sensitivity": estimate(figures["sens"]),
            "specificity": estimate(figures["spec"]),
            "auc": estimate(figures["auc"]),
        }
        val = {"macro_f1": estimate(figures["f1"]), "operating_point": operating_point}
        results[arch] = {"val": val}
        (root / "reports" / arch / "figures").mkdir(parents=True)
    (root / "reports" / "comparison.md").write_text("# Validation\n")
    evaluate_report.log_to_mlflow(params, inputs, results, root / "reports")


# True when every element a person sees in a cell shows its whole content: nothing cut by an
# ellipsis (its content wider than its box) or by the cell's edge (visually hidden helpers, 1 px
# boxes such as the run colour's label, are skipped).
CUT_TEXT = """(cell) => {
    const edge = cell.getBoundingClientRect().right + 0.5;
    return [cell, ...cell.querySelectorAll('*')]
        .filter((e) => e.offsetWidth > 1 && e.offsetHeight > 1)
        .every((e) => e.scrollWidth <= e.clientWidth + 1
                      && e.getBoundingClientRect().right <= edge);
}"""


def header_reading(page, column: str) -> dict:
    """Where a column's header is and whether a person sees it: the topmost element at its
    centre is the header (nothing covers it, the grid does not clip it) and its name is not cut
    (the name lies inside the box that clips it)."""
    header = page.locator(f'.ag-header-cell[col-id="{column}"]')
    return header.evaluate(
        """(cell) => {
            const box = cell.getBoundingClientRect();
            const atCentre = document.elementFromPoint(
                box.left + box.width / 2, box.top + box.height / 2);
            const name = cell.querySelector('[data-testid^="sort-header-"]');
            const text = name.getBoundingClientRect();
            const clip = name.parentElement.getBoundingClientRect();
            return {left: box.left, right: box.right, text: name.textContent,
                    onTop: cell.contains(atCentre),
                    whole: clip.left <= text.left && text.right <= clip.right + 0.5};
        }"""
    )


def test_the_link_make_ui_prints_shows_the_headline_metric_columns_at_1280_px(
    tmp_path, monkeypatch, browser
):
    uri = enter_project(monkeypatch, tmp_path)
    evaluated_runs(tmp_path)
    port = free_port()
    env = clean_env(ROOT) | {"MLFLOW_TRACKING_URI": uri}
    command = ["make", "--no-print-directory", "ui", f"PORT={port}"]
    log_path = tmp_path / "make-ui.log"
    ready = f"http://127.0.0.1:{port}/health"
    with running(command, ready, log_path, env=env, cwd=ROOT, startup_seconds=240):
        printed = re.search(r"^Runs: (\S+)$", log_path.read_text(), re.MULTILINE)
        assert printed, log_path.read_text()[-2000:]
        link = printed.group(1)
        assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/")

        context = browser.new_context(viewport={"width": WIDTH, "height": 800})
        page = context.new_page()
        try:
            page.goto(link)
            columns = [f"metrics.`{name}`" for name in tracking.HEADLINE_COLUMNS]
            for column in columns:
                page.wait_for_selector(f'.ag-header-cell[col-id="{column}"]', timeout=90_000)
            time.sleep(2)  # the Assistant panel slides in after the first paint
            shot = tmp_path / "make-ui-1280.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
            for name, column in zip(tracking.HEADLINE_COLUMNS, columns, strict=True):
                seen = header_reading(page, column)
                assert seen["left"] >= 0, (name, seen, str(shot))
                assert seen["right"] <= WIDTH, (name, seen, str(shot))
                assert seen["onTop"], (name, "covered or scrolled away", seen, str(shot))
                assert seen["whole"], (name, "name cut", seen, str(shot))
                assert seen["text"] == name, (name, seen, str(shot))
            # the best run first (sorted by validation macro-F1), its figures in the columns,
            # its name and date whole (the text fits its cell)
            first = page.locator(".ag-center-cols-container .ag-row[row-index='0']")
            for column in (tracking.RUN_NAME_COLUMN, tracking.CREATED_COLUMN):
                # pinned or not, a row's cells share its row-index across the grid's containers
                cell = page.locator(f".ag-row[row-index='0'] [col-id=\"{column}\"]").first
                fits = cell.evaluate(CUT_TEXT)
                assert fits, (column, cell.inner_text(), str(shot))
                if column == tracking.RUN_NAME_COLUMN:
                    assert "densenet121" in cell.inner_text().split(), str(shot)
            sens = first.locator('[col-id="metrics.`val_sens`"]').inner_text()
            assert sens.startswith(str(FIGURES["densenet121"]["sens"])[:4]), sens
        finally:
            context.close()
