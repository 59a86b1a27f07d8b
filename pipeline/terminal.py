"""What a stage prints: its own lines, not the start-up chatter of libraries (VERBOSE=1: all).

TensorFlow logs 5-6 lines per process (absl, oneDNN, cpu_feature_guard) and MLflow logs INFO lines
about creating its tables; none of them tell a user anything
about their run. Called by the stage entry point (pipeline.cli), never at import: a library module
that changed logging when imported would silence the caller's own logs too.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
from typing import TextIO

VERBOSE_ENV = "VERBOSE"
# The Makefile filters TensorFlow's start-up lines out of stderr through a pipe and hands the
# terminal itself over on this descriptor, for progress bars (progress_stream)
PROGRESS_FD_ENV = "PROGRESS_FD"
# Library loggers that speak at INFO about their own machinery (store creation, migrations).
NOISY_LOGGERS = ("mlflow", "alembic", "absl", "tensorflow", "h5py", "urllib3")


def verbose() -> bool:
    """True when the user asked for the libraries' logs: VERBOSE set, and not 0 or false."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """Silence library chatter for this process unless VERBOSE is set.

    TF_CPP_MIN_LOG_LEVEL only acts on TensorFlow's C++ lines if set before TensorFlow loads: the
    Makefile exports it for `make demo`; here it covers processes that load TensorFlow later.
    """
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # select's model logging drew a "Downloading artifacts: 0%|..." bar for a local copy
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def any_file_name() -> None:
    """Let stdout and stderr print any file name: one that is not UTF-8 (surrogate escapes in
    Python) is written with backslashes instead of raising UnicodeEncodeError mid-run."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


@functools.cache
def progress_stream() -> TextIO:
    """Where a progress bar draws: stderr, or the terminal the Makefile handed over.

    Under `make`, stderr is a pipe to the TensorFlow-noise filter: tqdm (disable=None) turns
    itself off on a pipe, and a line filter would hold its carriage-return updates until the end.
    The Makefile's filter keeps the terminal open as $PROGRESS_FD, so the bar goes there, and only
    when that descriptor is a terminal (not a log file or a pipe).
    """
    fd = os.environ.get(PROGRESS_FD_ENV, "")
    if sys.stderr.isatty() or not fd.isdigit() or not os.isatty(int(fd)):
        return sys.stderr
    return open(int(fd), "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's)
