r"""`python -m pipeline.predict SOURCE --out predictions.csv`: score a folder or a list of images.

SOURCE is a folder (every regular file under it) or a CSV file with a `path` column (relative to
the CSV's folder). Both follow prepare's policy (`pipeline.layouts`): a link is followed only when
it stays inside the folder, a listed path may not leave the CSV's folder (`..`, absolute, through
a link), and whatever is not read (a link out, a named pipe) still gets a row with the reason.
Files are recognised by content, DICOM ultrasound (`.dcm`, or no suffix as PACS exports write
them) included: one frame, cut to its ultrasound region. A BUSI segmentation mask
(`<image>_mask.png`, `_mask_1.png`) is a drawing, not a scan: as in prepare it is never scored,
and its row says so (status `mask`), so `make predict` on a BUSI-layout `data/raw` answers the
scans only. Each file gets one row in `--out`: the
answer of the released model (`--model`, default `models:/<select.model_name>@<promote.alias>`)
with its probabilities, class and decision (`out_of_scope`, with its OOD score and the reason,
for an image the model was not made for), or the status and reason it was refused, decided by
the same serving core and the same upload validation as the service, the MLflow pyfunc and the
Azure scoring script. A file name that is not UTF-8 is written with its odd bytes as `\xNN`.

Memory depends on neither the number of files nor their resolution: each image is fitted to the
model's input as it is read, files stream through in batches and rows are written as they come.
`--out` is checked before the model loads, and the run never scores its own output (nor a
previous one under the same name). The CSV gets its name when the run ends, however it ends: a
crash, SIGTERM or SIGINT (one line on stderr) keeps every row scored so far, and a last row with
status `incomplete` says where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import layouts, terminal, tracking
from pipeline.config import NO_MODEL, default_model_uri
from pipeline.errors import UserError
from pipeline.files import printable
from pipeline.serving.classifier import ENGINES, Classifier, load_classifier
from pipeline.serving.uploads import InvalidInput, Limits, decode_upload

BATCH = 32
INCOMPLETE = "incomplete"  # the status of the last row of a run that stopped before the end
MASK = "mask"  # the status of a BUSI mask's row: read by no one, answered by no model
# The CSV's `status`: a word a reader filters on, not an HTTP code (the reason column says more)
SCORED = "scored"
REFUSALS = {400: "unreadable", 413: "too_large", 415: "not_an_image", 422: "unsupported"}


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: stop, keep what was scored, say so in one line."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def source_paths(
    source: Path, skip: Callable[[Path], bool] = lambda _: False
) -> Iterator[tuple[str, Path | str]]:
    """(name as written in the output, the file's path or why it is not read) for every file of
    a folder or a paths CSV, leaving out what `skip` says (the run's own output)."""
    if source.is_dir():
        files, problems = layouts.walk_files(source)
        found: list[tuple[Path, Path | str]] = [(f, f) for f in files] + list(problems)
        for path, what in sorted(found, key=lambda item: item[0].relative_to(source).parts):
            if not skip(path):
                yield printable(path.relative_to(source).as_posix()), what
    elif source.is_file() and source.suffix.lower() == ".csv":
        with source.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise UserError(f"{source}: needs a 'path' column, has {reader.fieldnames}")
            for row in reader:
                listed = row["path"] or ""
                problem = layouts.path_problem(listed, source.parent)
                if problem or not skip(source.parent / listed):
                    yield printable(listed), problem or source.parent / listed
    else:
        raise UserError(f"{source}: not found; give a folder of images or a CSV with a path column")


def read_image(path: Path, limits: Limits) -> Any:
    """Decode one file as the service would decode its upload (InvalidInput when refused)."""
    if not path.is_file():
        raise InvalidInput(400, "missing or not a regular file")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise InvalidInput(413, f"{size} bytes is over the limit of {limits.max_bytes} bytes")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(400, f"unreadable: {exc.strerror or type(exc).__name__}") from None
    return decode_upload(data, limits)


def columns(classifier: Classifier) -> list[str]:
    """The output CSV's columns for `classifier`: one probability column per class, in its order."""
    probs = [f"p_{name}" for name in classifier.classes]
    return [
        "path", "status", "class", "refer", *probs, "ood_score", "reason", "model_name",
        "model_version",
    ]  # fmt: skip


def answer_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """One answered image as a CSV row (probabilities to 8 decimals, the OOD score to 3), in the
    shape `columns` names."""
    row = {"path": name, "status": SCORED, "class": result["class"]}
    decision = result["decision"]
    row["refer"] = decision["refer"]  # empty when out of scope: no class, no flag
    ood_score = decision.get("ood_score")
    row["ood_score"] = None if ood_score is None else f"{ood_score:.3f}"
    row["reason"] = decision.get("reason")
    row.update({f"p_{c}": f"{p:.8f}" for c, p in result["probabilities"].items()})
    row.update(model_name=result["model"]["name"], model_version=result["model"]["version"])
    return row


def is_mask(where: Path | str) -> bool:
    """Whether a file is a BUSI mask (prepare's rule, `layouts.is_mask`): not a scan to score."""
    return isinstance(where, Path) and layouts.is_mask(where)


def score(source: Path, classifier: Classifier, out: Path, limits: Limits | None = None) -> dict:
    """Write one row per file of `source` to `out` as they are scored; return {scored, refused,
    masks}; the progress bar counts the files read (masks are not).
    However the run ends, `out` holds every row scored; one that stopped early (an error,
    `Stopped`) ends with an `incomplete` row saying where, and the exception propagates."""
    limits = limits or Limits()
    skip = own_files(out)
    # Counting also finds a bad CSV before anything is written
    total = sum(1 for _, where in source_paths(source, skip) if not is_mask(where))
    counts = {"scored": 0, "refused": 0, "masks": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns(classifier))
            writer.writeheader()
            try:
                bar = tqdm(total=total, unit="image", disable=None, file=terminal.progress_stream())
                for rows in _batches(source_paths(source, skip), classifier, limits):
                    writer.writerows(rows)
                    handle.flush()
                    statuses = [row["status"] for row in rows]
                    counts["scored"] += statuses.count(SCORED)
                    counts["masks"] += statuses.count(MASK)
                    counts["refused"] += len(rows) - statuses.count(SCORED) - statuses.count(MASK)
                    bar.update(len(rows) - statuses.count(MASK))
                bar.close()
            except BaseException as exc:
                done = counts["scored"] + counts["refused"]  # of the `total` files read
                why = f"by {exc}" if isinstance(exc, Stopped) else f"by {type(exc).__name__}"
                reason = f"stopped {why} after {done} of {total} files; rerun to score them all"
                writer.writerow({"path": "", "status": INCOMPLETE, "reason": reason})
                raise
    finally:
        os.replace(tmp, out)
    return counts


def own_files(out: Path) -> Callable[[Path], bool]:
    """Whether a path is this run's output (or the temporary file it is written to), so that an
    `--out` inside the source is never scored, nor a previous run's output of the same name."""
    folder, name = out.parent.resolve(), out.name

    def own(path: Path) -> bool:
        here = path.parent.resolve() == folder
        temporary = path.name.startswith(f".{name}.") and path.name.endswith(".tmp")
        return here and (path.name == name or temporary)

    return own


def _batches(
    paths: Iterator[tuple[str, Path | str]], classifier: Classifier, limits: Limits
) -> Iterator[list[dict[str, Any]]]:
    """Rows for BATCH files at a time, in input order: answers and refusals together. Each
    image is fitted to the model's input as it is read, so a batch holds model-sized arrays."""
    identity = classifier.release.identity()
    model = {"model_name": identity["name"], "model_version": identity["version"]}
    pending: list[tuple[str, np.ndarray | dict[str, Any]]] = []
    for name, where in paths:
        try:
            if is_mask(where):
                reason = "a segmentation mask (BUSI's `_mask` name), not a scan: not scored"
                pending.append((name, {"path": name, "status": MASK, "reason": reason} | model))
            elif isinstance(where, str):  # a link out of the folder, a named pipe: never opened
                raise InvalidInput(400, where)
            else:
                pending.append((name, classifier.engine.prepare(read_image(where, limits))))
        except InvalidInput as exc:
            status = REFUSALS.get(exc.status, "refused")
            pending.append((name, {"path": name, "status": status, "reason": exc.reason} | model))
        if len(pending) == BATCH:
            yield _answer(pending, classifier)
            pending = []
    if pending:
        yield _answer(pending, classifier)


def _answer(
    pending: list[tuple[str, np.ndarray | dict[str, Any]]], classifier: Classifier
) -> list[dict[str, Any]]:
    fitted = [(i, item) for i, (_, item) in enumerate(pending) if isinstance(item, np.ndarray)]
    answers = classifier.answer_batch(np.stack([a for _, a in fitted])) if fitted else []
    rows = [item if isinstance(item, dict) else {} for _, item in pending]
    for (i, _), result in zip(fitted, answers, strict=True):
        rows[i] = answer_row(pending[i][0], result)
    return rows


def check_out(out: Path, source: Path) -> None:
    """Refuse an `--out` that cannot be written before the model is loaded and anything scored
    (a folder used to fail only after every image was scored, writing nothing)."""
    if out.is_dir():
        raise UserError(
            f"--out {out}: is a folder; give a file name, e.g. {out / 'predictions.csv'}"
        )
    if out.exists() and out.resolve() == source.resolve():
        raise UserError(f"--out {out}: is the source list itself; give another file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create its folder: {exc.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out {out}: its folder {out.parent} is not writable")


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT raise `Stopped`, so the rows scored so far are kept and named."""

    def stop(signum: int, _frame: Any) -> None:
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """`make predict`: score a folder or CSV of images into a CSV; a user error is one line and exit
    code 2."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.predict", description=__doc__.splitlines()[0]
    )
    p.add_argument("source", type=Path, help="a folder of images, or a CSV with a path column")
    p.add_argument("--model", default=None, help="released model (default: params' @champion)")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="output CSV")
    p.add_argument("--max-bytes", type=int, default=Limits.max_bytes)
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=os.environ.get("SERVING_ENGINE", "auto"),
        help="auto (the ONNX model the release serves, else keras), keras, onnx or onnx-int8; "
        "default: $SERVING_ENGINE or auto",
    )
    p.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    args = p.parse_args(argv)
    limits = Limits(
        args.max_bytes, args.max_pixels, names=("--max-bytes", "--max-pixels", "min side")
    )
    _stop_on_signals()
    try:
        if not args.source.exists():
            raise UserError(f"{args.source}: not found; give a folder of images or a CSV of paths")
        check_out(args.out, args.source)
        model = args.model or default_model_uri()
        if model is None:
            raise UserError(f"--model: {NO_MODEL}")
        uri = tracking.store_uri_for(model)  # a broken store: one line naming it
        try:
            classifier = load_classifier(model, tracking_uri=uri, engine=args.engine)
        except Exception as exc:  # a missing alias or folder: one line, not a traceback
            raise UserError(f"--model {model}: cannot load: {type(exc).__name__}: {exc}") from None
        counts = score(args.source, classifier, args.out, limits)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stopped as stopped:
        kept = f"; the rows scored so far are in {args.out}" if args.out.exists() else ""
        print(f"predict: stopped by {stopped}{kept}", file=sys.stderr)
        return 128 + stopped.signum
    masks = f", {counts['masks']} masks not scored" if counts["masks"] else ""
    print(f"predict: {counts['scored']} scored, {counts['refused']} refused{masks} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
