"""The prediction log: one row per served answer, in a local SQLite file per UTC day.

Why: a drift after a scanner or protocol change is invisible one answer at a time; the monitor
(`python -m pipeline.monitor`) compares a window of these rows with the reference the release
carries (`reference.csv`, the validation images through the same code). A row holds what the
monitor needs and nothing that identifies a patient:

    ts, model_name, model_version, arch      when and which release answered
    answer, refer, out_of_scope              the two outputs (refer empty when out of scope)
    ood_score, probabilities (JSON)          what the decision was made from
    width, height                            the upload's size in pixels
    mean, std, p05, p50, p95, colour         intensity statistics of the model's input (0-255)

Never image bytes, pixels, file names, client addresses or request headers: `record` builds a
row from the answer and the prepared array only, and the table has exactly these columns.
Files are `predictions-YYYY-MM-DD.sqlite` in the log folder; those older than `keep_days` are
deleted when a new day starts (rotation). Only the standard library and numpy: it ships with
the model.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.files import write_text

if TYPE_CHECKING:
    from pipeline.serving.classifier import Classifier

REFERENCE_FILE = "reference.csv"
PREFIX = "predictions-"
COLUMNS = {
    "ts": "TEXT",
    "model_name": "TEXT",
    "model_version": "TEXT",
    "arch": "TEXT",
    "answer": "TEXT",
    "refer": "INTEGER",
    "out_of_scope": "INTEGER",
    "ood_score": "REAL",
    "probabilities": "TEXT",
    "width": "INTEGER",
    "height": "INTEGER",
    "mean": "REAL",
    "std": "REAL",
    "p05": "REAL",
    "p50": "REAL",
    "p95": "REAL",
    "colour": "REAL",
}


def image_statistics(prepared: np.ndarray) -> dict[str, float]:
    """Intensity statistics of one model input (H, W, 3) of 0-255 values: grey level mean,
    spread and percentiles, and colour (mean spread between channels; 0 for a grey scan)."""
    # Channel by channel, not along the last axis: numpy's reductions over an axis of 3 ran
    # 10x slower (30 ms of a request at 224 px); the sums and extremes are the same numbers.
    x = np.asarray(prepared, dtype=np.float64)
    red, green, blue = x[..., 0], x[..., 1], x[..., 2]
    grey = (red + green + blue) / 3
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    p05, p50, p95 = np.percentile(grey, [5, 50, 95])
    return {
        "mean": float(grey.mean()),
        "std": float(grey.std()),
        "p05": float(p05),
        "p50": float(p50),
        "p95": float(p95),
        "colour": float(spread.mean()),
    }


def record(
    result: dict[str, Any], prepared: np.ndarray, width: int, height: int, now: dt.datetime
) -> dict[str, Any]:
    """The log row of one answer (the serving core's) for an upload of width x height pixels."""
    decision, model = result["decision"], result["model"]
    refer = decision.get("refer")
    return {
        "ts": now.astimezone(dt.UTC).isoformat(timespec="milliseconds"),
        "model_name": model["name"],
        "model_version": model["version"],
        "arch": model["arch"],
        "answer": result["class"],
        "refer": None if refer is None else int(refer),
        "out_of_scope": int(bool(decision.get("out_of_scope", False))),
        "ood_score": decision.get("ood_score"),
        "probabilities": json.dumps(result["probabilities"], sort_keys=True),
        "width": int(width),
        "height": int(height),
        **image_statistics(prepared),
    }


class PredictionLog:
    """Appends rows to the day's SQLite file under `folder`; safe across threads and processes
    (SQLite's own locking), one short transaction per answer."""

    def __init__(self, folder: Path, keep_days: int = 90) -> None:
        self.folder = Path(folder)
        self.keep_days = keep_days
        self._lock = threading.Lock()
        self._day: str | None = None

    def append(self, row: dict[str, Any]) -> None:
        """Append one answer to the day's CSV (thread-safe); ValueError on a column the log does not
        have."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"prediction log: unknown columns {sorted(unknown)}")
        day = row["ts"][:10]
        with self._lock:
            path = self._file(day)
            names = list(COLUMNS)
            marks = ", ".join("?" for _ in names)
            with sqlite3.connect(path, timeout=10) as db:
                db.execute(f"INSERT INTO log ({', '.join(names)}) VALUES ({marks})",
                           [row.get(n) for n in names])  # fmt: skip
            db.close()

    def _file(self, day: str) -> Path:
        """The day's file, created with the table; on a new day, older files are pruned."""
        path = self.folder / f"{PREFIX}{day}.sqlite"
        if self._day != day:
            self.folder.mkdir(parents=True, exist_ok=True)
            columns = ", ".join(f"{n} {t}" for n, t in COLUMNS.items())
            with sqlite3.connect(path, timeout=10) as db:
                db.execute(f"CREATE TABLE IF NOT EXISTS log ({columns})")
                _add_missing_columns(db)
            db.close()
            self._prune(dt.date.fromisoformat(day))
            self._day = day
        return path

    def _prune(self, today: dt.date) -> None:
        for old in self.folder.glob(f"{PREFIX}*.sqlite"):
            try:
                day = dt.date.fromisoformat(old.stem.removeprefix(PREFIX))
            except ValueError:
                continue
            if (today - day).days > self.keep_days:
                old.unlink(missing_ok=True)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Columns this version logs that the day's file (written by an older release the same day,
    e.g. before `positive` became `refer`) lacks, added empty so the insert does not fail."""
    have = {row[1] for row in db.execute("PRAGMA table_info(log)")}
    for name, kind in COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE log ADD COLUMN {name} {kind}")


def read_rows(folder: Path, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every logged row under `folder` (at or after `since`, UTC), oldest first."""
    rows: list[dict[str, Any]] = []
    cutoff = since.astimezone(dt.UTC).isoformat(timespec="milliseconds") if since else ""
    for path in sorted(Path(folder).glob(f"{PREFIX}*.sqlite")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM log WHERE ts >= ? ORDER BY ts", (cutoff,))
            rows += [dict(r) for r in found]
        db.close()
    return rows


def write_reference(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """The monitor's reference: rows like the log's (without `ts`) as CSV, written atomically."""
    names = [n for n in COLUMNS if n != "ts"]
    lines = [",".join(names)]
    for row in rows:
        lines.append(",".join(_cell(row.get(n)) for n in names))
    write_text(path, "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def read_reference(path: Path) -> list[dict[str, Any]]:
    """The reference rows (validation answers) a release ships for the drift monitor."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def replay(
    classifier: Classifier, images: Iterable[np.ndarray], sizes: Iterable[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Log rows of images answered by `classifier` as the service would answer them, with the
    (width, height) each had before it was fitted: how the monitor's reference is built."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for image, (width, height) in zip(images, sizes, strict=True):
        prepared = classifier.engine.prepare(image)
        result = classifier.answer_batch(prepared[None])[0]
        rows.append(record(result, prepared, width, height, now))
    return rows
