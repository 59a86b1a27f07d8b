"""Pipeline outputs go to a DVC remote and come back byte for byte (a local-directory remote
here; the Azure Blob remote of docs/deploy.md works the same through dvc-azure)."""

import subprocess
import sys
import textwrap

import pytest

from tests.factories import make_prepared

pytestmark = pytest.mark.slow


def dvc(*args: str, cwd) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_stage_outputs_are_pushed_to_a_remote_and_pulled_back(tmp_path):
    project, remote = tmp_path / "project", tmp_path / "remote"
    make_prepared(tmp_path / "source", per_split={"train": 2, "val": 1, "test": 1})
    project.mkdir()
    (project / "dvc.yaml").write_text(
        textwrap.dedent(
            f"""\
            stages:
              prepare:
                cmd: cp -r {tmp_path / "source" / "data"} data
                outs: [data/prepared]
              train:
                cmd: mkdir -p models/m && sha256sum data/prepared/manifest.csv > models/m/model
                deps: [data/prepared]
                outs: [models/m]
            """
        )
    )
    dvc("init", "--no-scm", cwd=project)
    dvc("config", "core.analytics", "false", cwd=project)
    dvc("repro", cwd=project)
    dvc("remote", "add", "--default", "storage", str(remote), cwd=project)
    before = {
        p.relative_to(project): p.read_bytes()
        for p in project.rglob("*")
        if p.is_file() and p.parts[len(project.parts)] in ("data", "models")
    }
    assert len(before) > 5
    dvc("push", cwd=project)
    assert any(remote.rglob("*")), "nothing reached the remote"

    # a fresh machine: no outputs, no local cache
    for folder in ("data", "models", ".dvc/cache"):
        subprocess.run(["rm", "-rf", str(project / folder)], check=True)
    dvc("pull", cwd=project)
    after = {
        p.relative_to(project): p.read_bytes()
        for p in project.rglob("*")
        if p.is_file() and p.parts[len(project.parts)] in ("data", "models")
    }
    assert after == before
    status = dvc("status", cwd=project).lower()
    assert "up to date" in status or "unchanged" in status
