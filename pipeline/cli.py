"""The thin entry point every stage shares: parse `--params`, run, user errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import Params, load_params
from pipeline.errors import UserError


def stage_main(
    doc: str | None,
    run: Callable[..., Any],
    argv: Sequence[str] | None = None,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Run a stage's `run(params, **extra_args)`; return the process exit code.

    A UserError becomes `error: <message>` on stderr and exit code 2, so a user mistake never shows
    a stack trace; any other exception is a bug and propagates with its traceback.
    """
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    if configure:
        configure(parser)
    args = vars(parser.parse_args(argv))
    try:
        params: Params = load_params(args.pop("params"))
        run(params, **args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
