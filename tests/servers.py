"""Real servers for the integration tests: started on loopback, awaited, always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(
    command: list[str],
    ready_url: str,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    startup_seconds: float = 120,
) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group until `ready_url` answers; stop the group after.

    A server that exits or does not answer in time fails the test with the end of its log.
    """
    with log_path.open("w+") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + startup_seconds
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"{command[0]} did not come up:\n{log.read()[-4000:]}")
                try:
                    with urllib.request.urlopen(ready_url, timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
