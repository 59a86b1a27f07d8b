"""Real servers for the integration tests: started on loopback, awaited, always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml


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


@dataclass(frozen=True)
class Collected:
    """One frame the data collector client sent: its collection, correlation id, raw bytes."""

    collection: str
    correlation_id: str | None
    headers: dict[str, str]
    body: bytes

    @property
    def rows(self) -> list[dict]:
        return json.loads(self.body)


class DataCollectorSink:
    """What stands in for Azure ML's data collector agent, the one part of data collection that
    runs only on Azure: the `azureml-ai-monitoring` client posts each collected DataFrame to it
    over loopback HTTP (`POST /modeldata/log`, the collection in `ce-type`, the correlation id
    in `ce-x-request-id`), and the sink keeps every byte that arrives, so a test reads what Azure
    would store. `environment(deployment_yml)` is what points a scoring process at it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.received: list[Collected] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                kind = self.headers.get("ce-type", "")
                with sink._lock:
                    sink.received.append(
                        Collected(
                            kind.removeprefix("azureml.inference."),
                            self.headers.get("ce-x-request-id"),
                            dict(self.headers),
                            body,
                        )
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet: the test reads `received`
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def environment(self, deployment_yml: Path) -> dict[str, str]:
        """The variables that turn the client on, with the collections `deployment_yml`'s
        `data_collector:` enables (as Azure's agent config lists them), pointed at this sink."""
        section = yaml.safe_load(Path(deployment_yml).read_text())["data_collector"]
        collections = {
            name: {"enabled": str(c["enabled"]).lower() == "true"}
            for name, c in section["collections"].items()
        }
        config = self.folder / "mdc-config.json"
        config.write_text(json.dumps({"collections": collections, "runMode": "cloud"}))
        return {
            "AZUREML_MDC_CONFIG_PATH": str(config),
            "AZUREML_MDC_HOST": "127.0.0.1",
            "AZUREML_MDC_PORT": str(self.port),
        }

    def wait_for(
        self, found: Callable[[list[Collected]], bool], timeout: float = 30
    ) -> list[Collected]:
        """Everything received, once `found(received)` holds; fails the test after `timeout`:
        the client sends from a background thread, after the answer has gone out."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                received = list(self.received)
            if found(received):
                return received
            if time.monotonic() > deadline:
                pytest.fail(f"the data collector sink did not get what was expected: {received}")
            time.sleep(0.1)


@contextmanager
def data_collector_sink(folder: Path) -> Iterator[DataCollectorSink]:
    """A DataCollectorSink serving on loopback until the block ends."""
    sink = DataCollectorSink(folder)
    thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
        thread.join()


def peak_rss_bytes(pid: int) -> int:
    """The largest peak resident memory (VmHWM) of `pid` and every process below it: a server
    such as `mlflow models serve` answers from a worker it started."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grown = {pid}, True
    while grown:
        below = {child for child, parent in parents.items() if parent in tree}
        grown = not below <= tree
        tree |= below
    peaks = []
    for member in tree:
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        peaks += [
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")
        ]
    return max(peaks)
