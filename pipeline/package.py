"""Package the registry's champion for an Azure ML managed online deployment.

`python -m pipeline.package` (or `make package-azure`) writes `build/azure/`, the folder that
`deploy/azure/deployment.yml` describes (its paths are relative to it):

    endpoint.yml  deployment.yml  conda.yml        copied from deploy/azure/
    code/score.py  code/pipeline/{inference,images,files}.py   the scoring code, nothing else
    model/model.keras  model/classes.json  model/registration.json

`registration.json` carries what the scoring script reports and decides with: the registry name
and version, the architecture, the malignant operating-point threshold and the data kind.
The model file is the registered artifact's own bytes (no re-save), so its hash is traceable.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.models import Model

from pipeline import registry, tracking
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.files import staged_dir, write_json

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "azure"
OUT_DIR = Path("build/azure")
DEPLOY_FILES = ("endpoint.yml", "deployment.yml", "conda.yml")
SCORING_MODULES = ("__init__.py", "inference.py", "images.py", "files.py")


def run(params: Params, alias: str | None = None, out: str | Path = OUT_DIR) -> dict:
    """Write the deployment folder for `<select.model_name>@<alias>` (default: promote.alias)."""
    alias = alias or params.promote.alias
    name = params.select.model_name
    tracking.setup(params.mlflow.experiment)
    version = registry.version_by_alias(name, alias)
    if version is None:
        raise UserError(f"{name}@{alias}: not found; run `make promote` first")
    uri = f"models:/{name}/{version.version}"
    tags = dict(version.tags)
    with staged_dir(out) as folder, tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
        metadata = Model.load(str(local / "MLmodel")).metadata or {}
        keras_files = sorted(local.rglob("*.keras"))
        if len(keras_files) != 1:
            raise UserError(
                f"{uri}: expected one .keras file in the model, found {len(keras_files)}"
            )
        (folder / "model").mkdir()
        shutil.copyfile(keras_files[0], folder / "model" / "model.keras")
        classes = metadata.get("classes") or list(params.classes)
        write_json(folder / "model" / "classes.json", list(classes))
        threshold = tags.get("operating_point_threshold")
        registration = {
            "model_name": name,
            "version": str(version.version),
            "alias": alias,
            "winner": tags.get("arch") or metadata.get("arch"),
            "synthetic_data": tags.get("data_kind", "") == "synthetic-demo"
            or bool(metadata.get("synthetic_data", False)),
            "operating_point_threshold": float(threshold) if threshold else None,
            "run_id": version.run_id,
            "manifest_sha256": tags.get("manifest_sha256"),
            "git_commit": tags.get("git_commit"),
        }
        write_json(folder / "model" / "registration.json", registration)
        code = folder / "code"
        (code / "pipeline").mkdir(parents=True)
        shutil.copyfile(DEPLOY_DIR / "score.py", code / "score.py")
        for module in SCORING_MODULES:
            shutil.copyfile(Path(__file__).resolve().parent / module, code / "pipeline" / module)
        for name_ in DEPLOY_FILES:
            shutil.copyfile(DEPLOY_DIR / name_, folder / name_)
    print(f"package: {name} version {version.version} (@{alias}) -> {out}")
    return registration


def main(argv: list[str] | None = None) -> int:
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--alias", default=None, help="registry alias (default: promote.alias)")
        parser.add_argument(
            "--out", default=str(OUT_DIR), help="output folder (default: %(default)s)"
        )

    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
