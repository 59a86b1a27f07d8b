"""Every parameter a stage reads is declared in its dvc.yaml `params`, and every declared one is
read: otherwise changing it leaves the stage "up to date" (DVC compares only what is declared),
or re-runs it for nothing. The reads come from the stage's code (tests.param_reads)."""

import re
from pathlib import Path

import pytest
import yaml

from tests.dvc_stages import resolved_stages
from tests.param_reads import ARCH, ParamReads, covered, params_classes, used

ROOT = Path(__file__).resolve().parents[2]
STAGES = resolved_stages()
TREE = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="module")
def reader() -> ParamReads:
    return ParamReads(ROOT, TREE, params_classes())


def stage_reads(reader: ParamReads, stage: dict) -> set[str]:
    """The keys the stage's command reads, `<arch>` made the backbone it is run for."""
    module = re.search(r"python -m (pipeline[.\w]+)", stage["cmd"]).group(1)
    arch = re.search(r"--arch (\w+)", stage["cmd"])
    archs = [arch.group(1)] if arch else list(TREE["train"]["backbones"])
    return {r.replace(ARCH, a) for r in reader.stage(module) for a in archs}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_parameter_a_stage_reads_is_declared(reader, name):
    declared = STAGES[name].get("params", [])
    undeclared = sorted(r for r in stage_reads(reader, STAGES[name]) if not covered(r, declared))
    assert undeclared == [], f"add to {name}.params in dvc.yaml"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_declared_parameter_is_read(reader, name):
    reads = stage_reads(reader, STAGES[name])
    assert len(reads) >= 3  # the reader found the stage's code
    unread = [key for key in STAGES[name].get("params", []) if not used(key, reads)]
    assert unread == [], f"{name} never reads these: drop them from dvc.yaml"


def test_a_read_through_an_alias_a_helper_and_a_typed_parameter_is_found(tmp_path):
    """The reader is what fails the two tests above: a stage that reads augment.flip undeclared
    (as evaluate once did) must show up, however the value reaches the code."""
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "helpers.py").write_text(
        "def mirrored(a: AugmentParams):\n    return a.flip\ndef seeded(p):\n    return p.seed\n"
    )
    (package / "stage.py").write_text(
        "from pipeline.helpers import mirrored\nfrom pipeline import helpers\n"
        "def run(params):\n"
        "    e = params.evaluate\n"
        "    helpers.seeded(p=params)\n"
        "    return e.bootstrap, mirrored(params.augment), _arch(params.train, 'resnet50')\n"
        "def _arch(t, name):\n    return t.arch(name).epochs\n"
    )
    reads = ParamReads(tmp_path, TREE, params_classes()).stage("pipeline.stage")
    assert reads == {"evaluate.bootstrap", "augment.flip", "seed", f"train.backbones.{ARCH}.epochs"}
    declared = ["seed", "evaluate", "train"]
    assert [r for r in sorted(reads) if not covered(r, declared)] == ["augment.flip"]
    assert not used("mlflow", reads)
