"""Fresh copies of this project in tmp_path, as a git repo on tiny parameters, for the tests that
run the pipeline for real (`dvc repro`, `dvc exp run`, the Azure training job's command).

One place for the copy, the tiny parameters, the environment the subprocesses see and the first
commit, so the DVC, DICOM and Azure tests reproduce the same project the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT = ("git", "-c", "user.email=t@t", "-c", "user.name=t")

# Small enough that the whole pipeline (both trainings included) runs in a few CPU-minutes.
TINY = {
    "demo": {"images": 90, "size": 64, "external_images": 30},
    "prepare": {"image_size": 32},
    "train": {
        "batch_size": 16,
        "run_eagerly": True,  # no graph tracing: ~3 CPU-min less per DenseNet121 stage
        "backbones": {"densenet121": {"epochs": 1}, "resnet50": {"epochs": 1}},
    },
    "evaluate": {"bootstrap": 50, "samples_per_class": 2},
}


def merge(base: dict, override: dict) -> dict:
    """`base` with `override`'s keys replaced, nested sections merged key by key (a key `base`
    lacks is added: the params loader names it as unknown)."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merge(base[key], value) if nested else value
    return out


def sh(*args: str, cwd: Path, env: dict) -> str:
    """Run a command; fail the test with its output when it fails, else return that output."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def project_copy(dest: Path) -> Path:
    """The project's tracked and new files (no .git, no lock, no reports): a fresh checkout."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("dvc.lock", "reports/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def write_params(project: Path, overrides: dict, name: str = "params.yaml") -> Path:
    """Write the project's params.yaml merged with TINY and then `overrides` to `project`/`name`."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    path = project / name
    path.write_text(yaml.safe_dump(merge(merge(params, TINY), overrides), sort_keys=False))
    return path


def clean_env(project: Path, bin_dir: Path = BIN) -> dict[str, str]:
    """The environment of a user in `project`: none of our MLflow, DVC or git settings (the test
    runner's own store or repo must not leak in), `bin_dir`'s tools first on PATH, and a Keras
    home inside the copy (no weights downloaded into the developer's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GIT_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["KERAS_HOME"] = str(project / ".keras")
    return env


def tiny_repo(dest: Path, overrides: dict | None = None) -> tuple[Path, dict[str, str]]:
    """A copy of the project at `dest` on TINY params (plus `overrides`), committed in a new git
    repo as a user's fresh clone would be; returns (repo, environment to run its commands in)."""
    repo = project_copy(dest)
    write_params(repo, overrides or {})
    env = clean_env(repo)
    sh("git", "init", "-q", cwd=repo, env=env)
    sh(*GIT, "add", "-A", cwd=repo, env=env)
    sh(*GIT, "commit", "-qm", "x", cwd=repo, env=env)
    return repo, env
