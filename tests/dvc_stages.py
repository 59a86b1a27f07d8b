"""dvc.yaml's stages as DVC resolves them: `foreach` expanded (`train@densenet121`, ...) and every
`${...}` filled in from params.yaml, so the wiring tests check what `dvc repro` runs."""

from __future__ import annotations

from pathlib import Path

import yaml
from dvc.parsing import DataResolver
from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]


def resolved_stages(root: Path = ROOT) -> dict[str, dict]:
    """{stage name: its definition} with foreach and interpolation resolved by DVC itself."""
    with Repo(str(root)) as repo:
        definition = yaml.safe_load((root / "dvc.yaml").read_text())
        return DataResolver(repo, str(root), definition).resolve()["stages"]
