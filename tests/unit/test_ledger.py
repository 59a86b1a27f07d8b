"""pipeline.ledger: every look at test is a row of a committed file, so a fresh clone keeps the
count; the same figures computed again are not a new look."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import mlflow

from pipeline import ledger, tracking
from tests.factories import enter_project

ROOT = Path(__file__).resolve().parents[2]


def look(model_sha: str, figures: dict[str, float], purpose: str = "evaluate: test report"):
    return ledger.record_look(
        "busi",
        split_sha256="s" * 64,
        manifest_sha256="m" * 64,
        model=f"model {model_sha[:4]}",
        model_sha256=model_sha,
        purpose=purpose,
        metrics=figures,
    )


def test_each_new_look_is_a_row_and_a_repeated_one_is_not(tmp_path, monkeypatch):
    enter_project(monkeypatch, tmp_path)
    tracking.setup("busi")
    first = look("a" * 64, {"test_macro_f1": 0.81})
    assert look("a" * 64, {"test_macro_f1": 0.81}) == first  # a rerun: nothing new was seen
    look("a" * 64, {"test_macro_f1": 0.79})  # other settings, other figures: a new look
    look("b" * 64, {"test_macro_f1": 0.81})  # another model
    look("b" * 64, {"test_macro_f1": 0.81}, purpose="promote")  # another purpose
    with open(tmp_path / "reports/test_looks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model_sha256"][0] for r in rows] == ["a", "a", "b", "b"]
    assert rows[0] == first
    assert tuple(rows[0]) == ledger.COLUMNS
    assert first["time_utc"].endswith("+00:00")
    use = ledger.split_use("busi", "s" * 64)
    assert (use["looks"], use["models"]) == (4, 2)
    assert use["file"] == "reports/test_looks.csv"
    assert ledger.split_use("busi", "t" * 64)["looks"] == 0
    figures = mlflow.search_runs(experiment_names=[use["ledger"]])
    assert len(figures) == 4  # the figures of each look, in the local store
    assert sorted(figures["metrics.test_macro_f1"]) == [0.79, 0.81, 0.81, 0.81]


def test_the_ledger_is_committed_so_a_fresh_clone_keeps_the_count():
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(ledger.LEDGER_FILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert tracked.returncode == 0, tracked.stderr
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(ledger.LEDGER_FILE)], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 1  # not ignored: new rows show in `git status`
    header = (ROOT / ledger.LEDGER_FILE).read_text().splitlines()[0]
    assert header.split(",") == list(ledger.COLUMNS)
