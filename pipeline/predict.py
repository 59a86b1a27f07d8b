"""`python -m pipeline.predict SOURCE --out predictions.csv`: score a folder or a list of images.

SOURCE is a folder (every regular file under it, links not followed) or a CSV file with a `path`
column (relative to the CSV's folder). Files are recognised by content, DICOM ultrasound (`.dcm`,
or no suffix as PACS exports write them) included: one frame, cut to its ultrasound region.
Each file gets one row in `--out`: the answer of the released model (`--model`, default
`models:/<select.model_name>@<promote.alias>`) with its
probabilities, class and decision (`out_of_scope`, with its OOD score and the reason, for an image
the model was not made for), or the status and reason it was refused, decided by the same
serving core and the same upload validation as the service, the MLflow pyfunc and the Azure
scoring script. Files stream through in batches and rows are written as they come, so memory does
not grow with the number of files; the CSV appears only when complete (temporary file, then
rename).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline import tracking
from pipeline.config import NO_MODEL, default_model_uri
from pipeline.errors import UserError
from pipeline.serving.classifier import ENGINES, Classifier, load_classifier
from pipeline.serving.uploads import InvalidInput, Limits, decode_upload

BATCH = 32


def source_paths(source: Path) -> Iterator[tuple[str, Path]]:
    """(name as written in the output, file path) for every file of a folder or a paths CSV."""
    if source.is_dir():
        for folder, dirs, files in os.walk(source):  # os.walk does not follow links to folders
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                yield str(path.relative_to(source)), path
    elif source.is_file() and source.suffix.lower() == ".csv":
        with source.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise UserError(f"{source}: needs a 'path' column, has {reader.fieldnames}")
            for row in reader:
                yield row["path"], source.parent / row["path"]
    else:
        raise UserError(f"{source}: not found; give a folder of images or a CSV with a path column")


def read_image(path: Path, limits: Limits) -> Any:
    """Decode one file as the service would decode its upload (InvalidInput when refused)."""
    if path.is_symlink() or not path.is_file():
        raise InvalidInput(400, "not a regular file (links are not followed)")
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
    """One answered image as a CSV row (probabilities to 8 decimals), in the shape `columns`
    names."""
    row = {"path": name, "status": 200, "class": result["class"]}
    decision = result["decision"]
    row["refer"] = decision["refer"]  # empty when out of scope: no class, no flag
    row["ood_score"] = decision.get("ood_score")
    row["reason"] = decision.get("reason")
    row.update({f"p_{c}": f"{p:.8f}" for c, p in result["probabilities"].items()})
    row.update(model_name=result["model"]["name"], model_version=result["model"]["version"])
    return row


def score(source: Path, classifier: Classifier, out: Path, limits: Limits | None = None) -> dict:
    """Write one row per file of `source` to `out`; return {scored, refused}."""
    limits = limits or Limits()
    total = sum(1 for _ in source_paths(source))
    counts = {"scored": 0, "refused": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns(classifier))
            writer.writeheader()
            bar = tqdm(total=total, unit="image", disable=None, file=sys.stderr)
            for rows in _batches(source_paths(source), classifier, limits):
                writer.writerows(rows)
                counts["refused"] += sum(1 for row in rows if row["status"] != 200)
                counts["scored"] += sum(1 for row in rows if row["status"] == 200)
                bar.update(len(rows))
            bar.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return counts


def _batches(
    paths: Iterator[tuple[str, Path]], classifier: Classifier, limits: Limits
) -> Iterator[list[dict[str, Any]]]:
    """Rows for BATCH files at a time, in input order: answers and refusals together."""
    identity = classifier.release.identity()
    pending: list[tuple[str, Any]] = []
    for name, path in paths:
        try:
            pending.append((name, read_image(path, limits)))
        except InvalidInput as exc:
            refused = {"path": name, "status": exc.status, "reason": exc.reason}
            pending.append(
                (
                    name,
                    refused
                    | {"model_name": identity["name"], "model_version": identity["version"]},
                )
            )
        if len(pending) == BATCH:
            yield _answer(pending, classifier)
            pending = []
    if pending:
        yield _answer(pending, classifier)


def _answer(pending: list[tuple[str, Any]], classifier: Classifier) -> list[dict[str, Any]]:
    decoded = [(i, image) for i, (_, image) in enumerate(pending) if not isinstance(image, dict)]
    answers = classifier.predict_many([image for _, image in decoded]) if decoded else []
    rows: list[dict[str, Any]] = [item for _, item in pending]
    for (i, _), result in zip(decoded, answers, strict=True):
        rows[i] = answer_row(pending[i][0], result)
    return rows


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
        default=os.environ.get("SERVING_ENGINE", "keras"),
        help="keras or onnx (the release's model.onnx in ONNX Runtime); default: $SERVING_ENGINE",
    )
    p.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    args = p.parse_args(argv)
    limits = Limits(
        args.max_bytes, args.max_pixels, names=("--max-bytes", "--max-pixels", "min side")
    )
    try:
        if not args.source.exists():
            raise UserError(f"{args.source}: not found; give a folder of images or a CSV of paths")
        model = args.model or default_model_uri()
        if model is None:
            raise UserError(f"--model: {NO_MODEL}")
        try:
            classifier = load_classifier(
                model, tracking_uri=tracking.store_uri(), engine=args.engine
            )
        except Exception as exc:  # a missing alias or folder: one line, not a traceback
            raise UserError(f"--model {model}: cannot load: {type(exc).__name__}: {exc}") from None
        counts = score(args.source, classifier, args.out, limits)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"predict: {counts['scored']} scored, {counts['refused']} refused -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
