"""The thin entry point every stage shares: parse `--params`, run, user errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline import terminal
from pipeline.config import load_params
from pipeline.errors import UserError


def stage_main(
    doc: str | None,
    run: Callable[..., Any],
    argv: Sequence[str] | None = None,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Run a stage's `run(params, **extra_args)`; return the process exit code.

    A UserError becomes `error: <message>` on stderr and exit code 2, so a user mistake never shows
    a stack trace; any other exception is a bug and propagates with its traceback. Library log
    chatter is off unless VERBOSE=1 (pipeline.terminal).
    """
    terminal.quiet_libraries()
    terminal.any_file_name()
    parser = argparse.ArgumentParser(
        prog=command_name(run),
        description=(doc or "").strip().splitlines()[0],
        epilog="VERBOSE=1 shows the libraries' own log lines (TensorFlow, MLflow).",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    if configure:
        configure(parser)
    args = vars(parser.parse_args(argv))

    def action() -> None:  # a stage prints its own summary; its result is for tests
        run(load_params(args.pop("params")), **args)

    return exit_code(action)


def exit_code(action: Callable[[], str | None]) -> int:
    """Run a command's `action`: 0 after printing the line it returns (if any); a UserError is
    `error: <message>` on stderr and 2, so a user mistake never shows a stack trace (any other
    exception is a bug and propagates with its traceback)."""
    try:
        line = action()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if line is not None:
        print(line)
    return 0


def command_name(run: Callable[..., Any]) -> str:
    """`python -m pipeline.<stage>`, how a stage is run (a stage file run as a script would
    shadow the standard library: `select.py`), for usage lines; argparse would say `train.py`.

    Under `python -m` the stage module is `__main__`; its spec keeps the real name.
    """
    module = run.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return f"python -m {module}"
