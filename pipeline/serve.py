"""`python -m pipeline.serve`: the local service and page for one released model.

`make serve` serves `models:/<select.model_name>@<promote.alias>` from the project's tracking
store (names from params.yaml); `--model` takes any released model: models/selected, a
`models:/` or `runs:/` URI. The service itself is pipeline.serving.app.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import tracking
from pipeline.config import NO_MODEL, default_model_uri
from pipeline.errors import UserError
from pipeline.serving.app import ServiceSettings, create_app
from pipeline.serving.classifier import ENGINES, load_classifier
from pipeline.serving.uploads import Limits


def parser() -> argparse.ArgumentParser:
    """The service's options; the model defaults to $MODEL, then params' registry name and champion
    alias."""
    default = os.environ.get("MODEL") or default_model_uri()
    p = argparse.ArgumentParser(
        prog="python -m pipeline.serve", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--model",
        default=default,
        help=f"released model (default: $MODEL or params.yaml's registered name: {default})",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-bytes", type=int, default=Limits.max_bytes, help="largest upload in bytes"
    )
    p.add_argument(
        "--max-pixels", type=int, default=Limits.max_pixels, help="largest image in pixels"
    )
    p.add_argument("--max-concurrent", type=int, default=2, help="inferences at once")
    p.add_argument("--max-waiting", type=int, default=8, help="requests queued before 503")
    p.add_argument(
        "--max-uploads",
        type=int,
        default=ServiceSettings.max_uploads,
        help="uploads received at once before 503",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=ServiceSettings.body_timeout,
        help="seconds to receive an upload before 408",
    )
    p.add_argument("--no-heatmaps", action="store_true", help="skip the class activation maps")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=os.environ.get("SERVING_ENGINE", "keras"),
        help="keras (heat maps), onnx, onnx-int8 (ONNX Runtime, no heat maps) or auto (the ONNX "
        "model the release serves, else keras); default: $SERVING_ENGINE or keras",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        default=Path("logs/predictions"),
        help="prediction log folder (answers, scores, sizes, intensity statistics; never images)",
    )
    p.add_argument("--no-log", action="store_true", help="do not keep the prediction log")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`make serve`: load the release and serve the page and the API; a bad model source is one line
    and exit code 2."""
    args = parser().parse_args(argv)
    if args.model is None:
        print(f"serve: --model: {NO_MODEL}", file=sys.stderr)
        return 2
    try:
        uri = tracking.store_uri_for(args.model)
    except UserError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    try:
        classifier = load_classifier(args.model, tracking_uri=uri, engine=args.engine)
    except Exception as exc:  # a missing alias or folder is the usual cause: one line, no trace
        print(
            f"serve: cannot load model {args.model!r}: {type(exc).__name__}: {exc}\n"
            "serve: run `make demo` (registers @challenger), `make promote`, or pick one: "
            "make serve MODEL=models/selected",
            file=sys.stderr,
        )
        return 2
    settings = ServiceSettings(
        limits=Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels),
        heatmaps=not args.no_heatmaps,
        max_concurrent=args.max_concurrent,
        max_waiting=args.max_waiting,
        max_uploads=args.max_uploads,
        body_timeout=args.body_timeout,
        log_dir=None if args.no_log else args.log_dir,
    )
    app = create_app(classifier, settings)
    identity = classifier.release.identity()
    data_note = " [synthetic demo data]" if classifier.release.synthetic else ""
    print(
        f"Serving {identity['name']} version {identity['version']} ({identity['arch']}){data_note}"
        f"\n  rule: {classifier.release.rule.describe()}"
        f"\n  prediction log: {'off' if args.no_log else args.log_dir} (no images, no file names)"
        f"\n  open http://{args.host}:{args.port}/   (API: POST /predict, GET /health)",
        flush=True,
    )
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
