"""pipeline.paths is where the stages read and write; dvc.yaml spells the same folders for DVC,
so a folder renamed in one place and not the other is caught here, not by a stage that finds
nothing where DVC put it."""

from pathlib import Path

from pipeline import paths
from tests.dvc_stages import resolved_stages
from tests.factories import raw_params

ROOT = Path(__file__).resolve().parents[2]
STAGES = resolved_stages()
NOT_DVC_OUTPUTS = {paths.DATA_FAILURES, paths.PROMOTION, paths.BRING_HOME}  # beside the pipeline


def dvc_paths() -> set[str]:
    """Every path a stage declares: deps, outs, metrics and plots (names of cache settings off)."""
    found = set()
    for stage in STAGES.values():
        for field in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(field, []):
                found |= set(entry) if isinstance(entry, dict) else {entry}
    return found


def test_every_stage_folder_is_the_one_dvc_yaml_declares():
    declared = dvc_paths()
    constants = {v for v in vars(paths).values() if isinstance(v, Path)}
    assert len(constants) >= 10
    for path in sorted(constants - NOT_DVC_OUTPUTS - {paths.REPORTS, paths.MODELS}, key=str):
        assert any(d == str(path) or d.startswith(f"{path}/") for d in declared), path


def test_each_trained_model_folder_is_a_dvc_output():
    for name, stage in STAGES.items():
        if "pipeline.train" in stage["cmd"]:
            arch = stage["cmd"].split("--arch ")[1].split()[0]
            assert str(paths.model_dir(arch)) in stage["outs"], name


def test_dvc_yaml_spells_no_backbone_so_a_new_one_needs_no_line_there():
    """Every backbone's outputs lie in folders of their kind (models/trained/, reports/evaluate/
    models/ and plots/<plot>/): a name of train.backbones in dvc.yaml (a dep, an out, a plot) is
    a line a third backbone would have to copy, and the stage after it would miss it."""
    text = (ROOT / "dvc.yaml").read_text()
    spelled = [arch for arch in raw_params()["train"]["backbones"] if arch in text]
    assert spelled == []
