"""The exclusion list: files a curator has decided to leave out, each with the reason.

`data.exclude` names a CSV with `path,reason` columns; `path` is a file as reports name it
(relative to `data.raw_dir`, or to the CSV's folder for a CSV layout) or a glob over those names
(`fnmatch`: `*` also crosses `/`, so `benign/axilla-*` and `*/annotated/*` both work). Known
out-of-scope images (BUSI's axilla views, images with drawn annotations) leave the data set before
duplicates are grouped and the split is drawn, and are counted by reason in the summary and the
model card, so what was removed is as visible as what was kept.
"""

from __future__ import annotations

import csv
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

HEADER = ("path", "reason")
FIX = "a CSV whose first line is `path,reason` (commit it with only that line to exclude nothing)"


@dataclass(frozen=True)
class Rule:
    """One row of the exclusion list: what to leave out, why, and where the rule is."""

    pattern: str  # a source name or a glob over source names
    reason: str
    line: int  # in the CSV, for the report of rules that matched nothing


def read_rules(path: str | Path) -> list[Rule]:
    """The rules in `path`; UserError naming the file and the fix when it is missing or
    ill-formed (no `path,reason` header, an empty path or reason)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = list(enumerate(reader, start=2))
    except FileNotFoundError:
        raise UserError(f"data.exclude: {path} not found; create {FIX}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"data.exclude: cannot read {path} ({exc}); it must be {FIX}") from None
    if header[:2] != list(HEADER):
        raise UserError(f"data.exclude: {path} starts with {header}; it must be {FIX}")
    rules = []
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row] + ["", ""]
        if not cells[0] or not cells[1]:
            raise UserError(
                f"data.exclude: {path} line {line} needs a path and a reason (path,reason), "
                f"got {row}; every excluded file says why"
            )
        rules.append(Rule(cells[0].replace("\\", "/"), cells[1], line))
    return rules


def reason_for(source: str, rules: Sequence[Rule]) -> Rule | None:
    """The first rule that names `source` (exactly or by glob), or None."""
    for rule in rules:
        if source == rule.pattern or fnmatch.fnmatchcase(source, rule.pattern):
            return rule
    return None
