"""Pipeline outputs go to an Azure Blob DVC remote and come back byte for byte.

The remote is Azurite, Microsoft's Azure Storage emulator (`make azurite` installs it from npm),
on loopback: the same `azure://` remote, the same dvc-azure plugin and the same connection-string
authentication a storage account takes (docs/deploy.md, "The DVC remote on Azure Blob"). A second
clone of the git repository, with no outputs and no cache, pulls everything and has nothing to
reproduce.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import make_prepared
from tests.repos import GIT
from tests.servers import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AZURITE = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's one account and its documented, public development key (not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "dvcstore"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory) -> Iterator[str]:
    """A running Azurite blob service with an empty container; yields its connection string."""
    if not AZURITE.is_file():
        pytest.skip("Azurite is not installed: run `make azurite`")
    port = free_port()
    log = tmp_path_factory.mktemp("azurite") / "azurite.log"
    command = [
        str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--silent",
    ]  # fmt: skip
    with log.open("w+") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_for_port(port, server, log)
            connection = (
                f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
            )
            from azure.storage.blob import BlobServiceClient

            BlobServiceClient.from_connection_string(connection).create_container(CONTAINER)
            yield connection
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def _wait_for_port(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"Azurite did not come up:\n{log.read_text()[-3000:]}")


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc(*args: str, cwd: Path) -> str:
    return run(sys.executable, "-m", "dvc", *args, cwd=cwd)


def outputs(project: Path) -> dict[Path, bytes]:
    """Every file under the stage outputs (data/, models/, reports/), by path."""
    return {
        p.relative_to(project): p.read_bytes()
        for folder in ("data", "models", "reports")
        for p in (project / folder).rglob("*")
        if p.is_file()
    }


def pipeline_repo(project: Path, source: Path) -> None:
    """A git repository with a three-stage DVC pipeline whose outputs are data, models, reports."""
    project.mkdir()
    (project / "dvc.yaml").write_text(
        textwrap.dedent(
            f"""\
            stages:
              prepare:
                cmd: cp -r {source / "data"} data
                outs: [data/prepared]
              train:
                cmd: mkdir -p models/m && sha256sum data/prepared/manifest.csv > models/m/model
                deps: [data/prepared]
                outs: [models/m]
              evaluate:
                cmd: mkdir -p reports && wc -c models/m/model > reports/size.txt
                deps: [models/m]
                outs: [reports/size.txt]
            """
        )
    )
    run(*GIT, "init", "-q", cwd=project)
    dvc("init", "-q", cwd=project)
    dvc("config", "core.analytics", "false", cwd=project)
    dvc("repro", cwd=project)


def test_a_fresh_clone_pulls_every_output_from_azure_blob_and_reproduces_nothing(tmp_path, azurite):
    project = tmp_path / "project"
    make_prepared(tmp_path / "source", per_split={"train": 2, "val": 1, "test": 1})
    pipeline_repo(project, tmp_path / "source")
    # the remote goes into git; the key stays in .dvc/config.local, which git ignores
    dvc("remote", "add", "--default", "blob", f"azure://{CONTAINER}/busi-pipeline", cwd=project)
    dvc("remote", "modify", "--local", "blob", "connection_string", azurite, cwd=project)
    run(*GIT, "add", "-A", cwd=project)
    run(*GIT, "commit", "-q", "-m", "pipeline and remote", cwd=project)
    assert "AccountKey" not in run(*GIT, "show", "HEAD", cwd=project)
    before = outputs(project)
    assert len(before) > 5
    assert "pushed" in dvc("push", cwd=project)

    from azure.storage.blob import BlobServiceClient

    blobs = BlobServiceClient.from_connection_string(azurite).get_container_client(CONTAINER)
    tracked = {content for path, content in before.items() if path.name != ".gitignore"}
    assert len(list(blobs.list_blobs(name_starts_with="busi-pipeline/"))) >= len(tracked)

    clone = tmp_path / "clone"  # another machine: the repository, no outputs, no cache
    run(*GIT, "clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not (clone / "models" / "m").exists()
    assert not (clone / "data" / "prepared").exists()
    dvc("remote", "modify", "--local", "blob", "connection_string", azurite, cwd=clone)
    dvc("pull", cwd=clone)
    assert outputs(clone) == before
    assert "up to date" in dvc("status", cwd=clone).lower()
    assert "didn't change" in dvc("repro", cwd=clone).lower()  # nothing is re-run
    assert run(*GIT, "status", "--porcelain", cwd=clone).strip() == ""


def test_a_push_with_a_wrong_key_fails_and_says_so(tmp_path, azurite):
    project = tmp_path / "project"
    make_prepared(tmp_path / "source", per_split={"train": 1, "val": 1, "test": 1})
    pipeline_repo(project, tmp_path / "source")
    wrong = azurite.replace(KEY, "d3Jvbmc=")
    dvc("remote", "add", "--default", "blob", f"azure://{CONTAINER}/other", cwd=project)
    dvc("remote", "modify", "--local", "blob", "connection_string", wrong, cwd=project)
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "push"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "failed to authenticate" in result.stderr.lower()
