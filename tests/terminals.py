"""Commands run under a pseudo-terminal, as a user's shell runs them (progress bars, colours)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from pathlib import Path


def run_in_terminal(
    command: Sequence[str], cwd: Path, env: dict[str, str], timeout: float, columns: int = 120
) -> tuple[int, str]:
    """(exit code, everything the command wrote) for `command` with a terminal of `columns` as its
    stdin, stdout and stderr; the command is killed after `timeout` seconds."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        list(command), cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            process.kill()
            raise TimeoutError(f"{' '.join(command)}: still running after {timeout} s")
        return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
