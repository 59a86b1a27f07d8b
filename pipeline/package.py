"""Package the registry's champion for an Azure ML managed online deployment.

`python -m pipeline.package` (or `make package-azure`) writes `build/azure/`, the folder that
`deploy/azure/deployment.yml` describes (its paths are relative to it):

    endpoint.yml  deployment.yml  conda.yml    copied from deploy/azure/
    code/score.py  code/pipeline/...           the scoring script + pipeline/serving/ and the
                                               base modules it imports (pipeline.serving.shipping)
    model/model.keras  model/release.json      the registered release, its own bytes

The model folder is the release the registry version holds (decision rule and provenance inside),
so the endpoint answers exactly as every other surface does.

The engine defaults to the release's own choice (`--engine auto`): ONNX Runtime when it carries
an ONNX model (every release `select` makes does: its model.int8.onnx when INT8 was accepted, else
model.onnx), Keras only for an older release without one. On ONNX Runtime the package has
conda-onnx.yml (no TensorFlow, no Keras) as the deployment's environment and SERVING_ENGINE=onnx
(or onnx-int8) in its settings, so score.py runs that engine; `--engine onnx` on a release without
model.onnx exports it here. `--engine keras` ships conda.yml and SERVING_ENGINE=keras.
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
from pipeline.serving.classifier import ENGINES
from pipeline.serving.release import INT8_FILE, ONNX_FILE, NotARelease, find_release, read_release

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "azure"
OUT_DIR = Path("build/azure")
DEPLOY_FILES = ("endpoint.yml", "deployment.yml", "conda.yml")
ONNX_CONDA = "conda-onnx.yml"
SOURCE = "deploy/azure/deployment.yml"
TENSORFLOW_SETTINGS = ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "TF_NUM_INTRAOP_THREADS",
                       "TF_NUM_INTEROP_THREADS")  # fmt: skip


def run(
    params: Params, alias: str | None = None, out: str | Path = OUT_DIR, engine: str = "auto"
) -> dict:
    """Write the deployment folder for `<select.model_name>@<alias>` (default: promote.alias),
    served by `engine` (one of ENGINES; auto: the release's ONNX model when it has one)."""
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
        if engine == "auto":
            served = release.served_onnx
            engine = (
                "keras" if served is None else "onnx-int8" if served.name == INT8_FILE else "onnx"
            )
        if engine != "keras":
            _for_onnx_runtime(folder, engine)
    print(f"package: {name} version {version.version} (@{alias}, {engine}) -> {out}")
    return release.provenance


def _for_onnx_runtime(folder: Path, engine: str) -> None:
    """model.onnx in model/, conda-onnx.yml as the environment, SERVING_ENGINE=`engine`."""
    if engine == "onnx-int8" and not (folder / "model" / INT8_FILE).is_file():
        raise UserError(f"--engine onnx-int8: the release has no {INT8_FILE} (select.int8)")
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
    settings.update(SERVING_ENGINE=engine, OMP_NUM_THREADS=settings.get("WORKER_COUNT", "1"))
    deployment["description"] += ", ONNX Runtime engine (no TensorFlow)"
    header = (
        f"# Written by `python -m pipeline.package` ({engine}) from deploy/azure/deployment.yml\n"
    )
    path.write_text(header + yaml.safe_dump(deployment, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    """`make package-azure`: build/azure/ for the champion; a user error is one line, exit code
    2."""

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--engine",
            choices=ENGINES,
            default="auto",
            help="auto (the release's ONNX model when it has one, else keras), keras (model.keras, "
            "TensorFlow env), onnx (model.onnx) or onnx-int8 (model.int8.onnx; ONNX Runtime env)",
        )
        parser.add_argument("--alias", default=None, help="registry alias (default: promote.alias)")
        parser.add_argument(
            "--out", default=str(OUT_DIR), help="output folder (default: %(default)s)"
        )

    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
