"""Package the registry's champion for an Azure ML managed online deployment.

`python -m pipeline.package` (or `make package-azure`) writes `build/azure/`, the folder that
`deploy/azure/deployment.yml` describes (its paths are relative to it):

    endpoint.yml  deployment.yml  conda.yml    copied from deploy/azure/
    code/score.py  code/pipeline/...           the scoring script + pipeline/serving/ and the
                                               base modules it imports (pipeline.serving.shipping)
    model/model.keras  model/release.json      the registered release, its own bytes

The model folder is the release the registry version holds (decision rule and provenance inside),
so the endpoint answers exactly as every other surface does.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import mlflow

from pipeline import registry, tracking
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.files import staged_dir
from pipeline.serving import shipping
from pipeline.serving.release import NotARelease, find_release, read_release

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "azure"
OUT_DIR = Path("build/azure")
DEPLOY_FILES = ("endpoint.yml", "deployment.yml", "conda.yml")


def run(params: Params, alias: str | None = None, out: str | Path = OUT_DIR) -> dict:
    """Write the deployment folder for `<select.model_name>@<alias>` (default: promote.alias)."""
    alias = alias or params.promote.alias
    name = params.select.model_name
    tracking.setup(params.mlflow.experiment)
    version = registry.version_by_alias(name, alias)
    if version is None:
        raise UserError(f"{name}@{alias}: not found; run `make promote` first")
    uri = f"models:/{name}/{version.version}"
    with staged_dir(out) as folder, tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
        try:
            release = read_release(find_release(local))
        except NotARelease as exc:
            raise UserError(
                f"{uri}: not a released model ({exc}); register one with select"
            ) from None
        shutil.copytree(release.folder, folder / "model")
        code = folder / "code"
        shipping.stage_package(code)
        shutil.copyfile(DEPLOY_DIR / "score.py", code / "score.py")
        for file_name in DEPLOY_FILES:
            shutil.copyfile(DEPLOY_DIR / file_name, folder / file_name)
    print(f"package: {name} version {version.version} (@{alias}) -> {out}")
    return release.provenance


def main(argv: list[str] | None = None) -> int:
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--alias", default=None, help="registry alias (default: promote.alias)")
        parser.add_argument(
            "--out", default=str(OUT_DIR), help="output folder (default: %(default)s)"
        )

    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
