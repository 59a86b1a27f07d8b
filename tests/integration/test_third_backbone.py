"""Issue 25's done-when: a backbone is data. A third one, added to a fresh copy of the project
through its builder in pipeline/backbones.py and its entry in params.yaml and nothing else (no
line of dvc.yaml, no stage module), runs through `dvc repro`: it is trained by its own
`train@<name>` stage, evaluate compares all three, select picks one of them, and a change to its
schedule reruns it and what follows it, never the other two trainings.

Kept short (about 3.5 CPU-minutes): `dvc repro select` (external validation, after select, is
test_dvc_repro's), no sample or Grad-CAM grids, the fewest OOD images params allow.
"""

import itertools
import json

import pandas as pd
import pytest
import yaml

from tests.repos import GIT, sh, tiny_repo

pytestmark = pytest.mark.slow
NEW = "tinycnn"
FAST = {"evaluate": {"samples_per_class": 0, "gradcam_per_class": 0, "ood_images": 4}}

# What a user appends to pipeline/backbones.py: a builder with keras.applications' signature whose
# layers follow the `conv<stage>_block<n>_` names that fine-tuning cuts between.
BUILDER = f'''

def tiny_cnn(
    include_top: bool = False, weights: str | None = None, input_shape: tuple = (32, 32, 3)
) -> keras.Model:
    """Two strided convolution blocks: a backbone small enough to train in seconds."""
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for stage, width in ((1, 8), (2, 16)):
        name = f"conv{{stage}}_block1_"
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name=name + "conv")(x)
        x = keras.layers.BatchNormalization(name=name + "bn")(x)
        x = keras.layers.ReLU(name=name + "relu")(x)
    return keras.Model(inputs, x)


BACKBONES["{NEW}"] = (tiny_cnn, "torch", "{NEW}_notop.h5")
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The project on tiny params with a third backbone, through one `dvc repro select`."""
    repo, env = tiny_repo(tmp_path_factory.mktemp("third"), FAST)
    with (repo / "pipeline/backbones.py").open("a") as f:
        f.write(BUILDER)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    backbones = params["train"]["backbones"]
    backbones[NEW] = {**backbones["resnet50"], "epochs": 1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(*GIT, "commit", "-qam", f"add {NEW}", cwd=repo, env=env)
    sh("dvc", "repro", "select", cwd=repo, env=env)
    return repo, env, tuple(backbones)


def test_the_new_backbone_needed_no_line_outside_backbones_and_params(repo):
    path, env, _ = repo
    changed = sh("git", "show", "--name-only", "--format=", "HEAD", cwd=path, env=env).split()
    assert sorted(changed) == ["params.yaml", "pipeline/backbones.py"]
    assert NEW not in (path / "dvc.yaml").read_text()


def test_it_is_trained_by_a_stage_of_its_own(repo):
    path, _, archs = repo
    assert len(archs) == 3
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    assert {f"train@{arch}" for arch in archs} | {"evaluate", "select"} <= set(lock)
    assert (path / "models/trained" / NEW / "model.keras").is_file()


def test_evaluate_compares_all_three(repo):
    path, _, archs = repo
    for arch in archs:
        metrics = json.loads((path / "reports/evaluate/models" / arch / "metrics.json").read_text())
        assert 0.0 <= metrics["val"]["macro_f1"]["value"] <= 1.0
        for plot in ("roc_val", "reliability_val"):
            assert (path / "reports/evaluate/plots" / plot / f"{arch}.csv").is_file()
    for table in ("training_curves", "confusion_val"):  # every model in one chart each
        shown = pd.read_csv(path / "reports/evaluate/plots" / f"{table}.csv")
        assert set(shown["model"]) == set(archs)
    pairs = json.loads((path / "reports/evaluate/comparison.json").read_text())["pairs"]
    assert {(p["a"], p["b"]) for p in pairs} == set(itertools.combinations(archs, 2))


def test_select_picks_one_of_the_three(repo):
    path, _, archs = repo
    selection = json.loads((path / "reports/selection.json").read_text())
    assert selection["winner"] in archs
    release = json.loads((path / "models/selected/release.json").read_text())
    assert release["provenance"]["arch"] == selection["winner"]


def test_dvc_knows_what_depends_on_the_new_backbone(repo):
    """Nothing is left to run; a change to the new backbone's schedule reruns its training and
    the stages over every model, never the other trainings."""
    path, env, archs = repo
    assert "up to date" in sh("dvc", "status", "--with-deps", "select", cwd=path, env=env)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["train"]["backbones"][NEW]["learning_rate"] *= 2
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        shown = sh("dvc", "status", "--with-deps", "select", "--json", cwd=path, env=env)
        status = json.loads(shown.splitlines()[-1])
    finally:
        sh("git", "checkout", "--", "params.yaml", cwd=path, env=env)
    assert f"train@{NEW}" in status
    assert {"evaluate", "select"} <= set(status)
    assert not {f"train@{arch}" for arch in archs if arch != NEW} & set(status)
