"""Package the registry's champion for an Azure ML managed online deployment.

`python -m pipeline.package` (or `make package-azure`) writes `build/azure/`, the folder that
`deploy/azure/deployment.yml` describes (its paths are relative to it):

    endpoint.yml  deployment.yml  conda.yml    copied from deploy/azure/
    code/score.py  code/pipeline/...           the scoring script + pipeline/serving/ and the
                                               base modules it imports (pipeline.serving.shipping)
    model/model.keras  model/release.json      the registered release, its own bytes

The model folder is the release the registry version holds (decision rule and provenance inside),
so the endpoint answers exactly as every other surface does.

`--engine onnx` ships the same release for ONNX Runtime: model/model.onnx (exported here when the
release does not carry one), conda-onnx.yml (no TensorFlow, no Keras) as the deployment's
environment, and SERVING_ENGINE=onnx in its settings, so score.py runs the ONNX engine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import mlflow
import yaml

from pipeline import registry, tracking
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.export import export_release
from pipeline.files import staged_dir
from pipeline.serving import shipping
from pipeline.serving.classifier import ENGINES, ONNX_FILE
from pipeline.serving.release import NotARelease, find_release, read_release

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "azure"
OUT_DIR = Path("build/azure")
DEPLOY_FILES = ("endpoint.yml", "deployment.yml", "conda.yml")
ONNX_CONDA = "conda-onnx.yml"
TENSORFLOW_SETTINGS = ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "TF_NUM_INTRAOP_THREADS",
                       "TF_NUM_INTEROP_THREADS")  # fmt: skip


def run(
    params: Params, alias: str | None = None, out: str | Path = OUT_DIR, engine: str = "keras"
) -> dict:
    """Write the deployment folder for `<select.model_name>@<alias>` (default: promote.alias),
    served by `engine` (keras or onnx)."""
    if engine not in ENGINES:
        raise UserError(f"--engine: {engine!r} is not one of {list(ENGINES)}")
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
        if engine == "onnx":
            _for_onnx_runtime(folder)
    print(f"package: {name} version {version.version} (@{alias}, {engine}) -> {out}")
    return release.provenance


def _for_onnx_runtime(folder: Path) -> None:
    """model.onnx in model/, conda-onnx.yml as the environment, SERVING_ENGINE=onnx."""
    if not (folder / "model" / ONNX_FILE).is_file():
        export_release(folder / "model")
    shutil.copyfile(DEPLOY_DIR / ONNX_CONDA, folder / ONNX_CONDA)
    (folder / "conda.yml").unlink()
    conda = yaml.safe_load((DEPLOY_DIR / ONNX_CONDA).read_text())
    path = folder / "deployment.yml"
    deployment = yaml.safe_load(path.read_text())
    deployment["environment"].update(name=conda["name"], conda_file=f"./{ONNX_CONDA}")
    settings = deployment["environment_variables"]
    for key in TENSORFLOW_SETTINGS:
        settings.pop(key, None)
    settings.update(SERVING_ENGINE="onnx", OMP_NUM_THREADS=settings.get("WORKER_COUNT", "1"))
    deployment["description"] += ", ONNX Runtime engine (no TensorFlow)"
    header = (
        "# Written by `python -m pipeline.package --engine onnx` from deploy/azure/deployment.yml\n"
    )
    path.write_text(header + yaml.safe_dump(deployment, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    """`make package-azure`: build/azure/ for the champion; a user error is one line, exit code
    2."""

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--engine",
            choices=ENGINES,
            default="keras",
            help="keras (model.keras, TensorFlow env) or onnx (model.onnx, ONNX Runtime env)",
        )
        parser.add_argument("--alias", default=None, help="registry alias (default: promote.alias)")
        parser.add_argument(
            "--out", default=str(OUT_DIR), help="output folder (default: %(default)s)"
        )

    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
