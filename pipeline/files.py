"""Atomic file writes, so an interrupted or failed stage never leaves half-written outputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def printable(name: str) -> str:
    r"""A file name as UTF-8 text: the bytes of a name that is not UTF-8 (which Python carries as
    surrogate escapes, `x-\udcff.png`) written as `\xff`, so a CSV or a terminal line can hold
    any name a file system gives, and the same name always reads the same."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_text(path: str | Path, text: str) -> None:
    """Write text via a temporary file in the same folder, then rename over the target."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same folder, then rename).

    A reader, or DVC after a crash, never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline, so reruns give byte-identical files."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_staging(path: str | Path) -> list[Path]:
    """Remove the `.<name>.*` folders that `staged_dir(path)` leaves when its process is killed
    (no `except` runs on SIGKILL); return what was removed. Call it before staging `path` anew,
    never while another process may be staging it."""
    path = Path(path)
    stale = sorted(p for p in path.parent.glob(f".{path.name}.*") if p.is_dir())
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


@contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`, on failure it is removed.

    Stages build whole output folders this way, so `path` holds either the previous complete
    output or the new complete output, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the output is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
