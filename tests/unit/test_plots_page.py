"""The page `dvc plots show` fills carries vega itself, as pinned in package.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import plots_page
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / ".dvc" / "plots.html").read_text(encoding="utf-8")


def test_the_committed_page_carries_the_pinned_libraries_with_their_licences_and_no_cdn():
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    for name, _bundle, _externals in plots_page.LIBRARIES:
        assert f"/*! {name}, inlined by pipeline/plots_page.py" in PAGE
        assert f"\n{name}@{pinned[name]}:\n" in PAGE  # its licence, at the pinned version
    assert PAGE.count("<script>") == len(plots_page.LIBRARIES)
    assert not re.search(r"<script[^>]+src=", PAGE)  # nothing loaded from elsewhere
    assert "{scripts}" not in PAGE  # so DVC adds no CDN tag
    assert "{plot_divs}" in PAGE
    assert "Redistribution and use in source and binary forms" in PAGE  # BSD-3 text itself


def test_make_plots_page_writes_exactly_the_committed_page(monkeypatch):
    if not (ROOT / "node_modules" / "vega" / "package.json").is_file():
        pytest.skip("node_modules/ not installed: run `make npm` (make test does)")
    monkeypatch.chdir(ROOT)
    assert plots_page.page() == PAGE, "run `make plots-page` and commit .dvc/plots.html"


def test_a_missing_node_modules_is_one_line_naming_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert plots_page.main([str(tmp_path / "plots.html")]) == 2
    assert "npm ci" in capsys.readouterr().err
    assert not (tmp_path / "plots.html").exists()


def test_make_plots_page_keeps_the_pages_own_head_and_body_and_replaces_the_libraries(
    tmp_path, monkeypatch
):
    """The page is the one home of its head and body: an edit there survives a refresh."""
    if not (ROOT / "node_modules" / "vega" / "package.json").is_file():
        pytest.skip("node_modules/ not installed: run `make npm` (make test does)")
    monkeypatch.chdir(ROOT)
    edited = tmp_path / "plots.html"
    edited.write_text(PAGE.replace("<title>DVC plots:", "<title>Edited DVC plots:"))
    assert plots_page.page(edited) == plots_page.page().replace("<title>DVC", "<title>Edited DVC")
    edited.write_text("<html><head></head><body></body></html>")
    with pytest.raises(UserError, match=r"plots.html: no </head> or no \{plot_divs\}"):
        plots_page.page(edited)
