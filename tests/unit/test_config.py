"""params.yaml is validated once, up front, with messages that name the bad key."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import Params, load_params, parse_params, uses_demo_data
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_the_projects_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.classes == ("benign", "malignant", "normal")
    assert params.train.densenet121.epochs >= 1


def test_the_busi_preset_is_valid():
    params = load_params(ROOT / "params-busi.yaml")
    assert params.model.weights == "imagenet"
    assert params.prepare.image_size == 224
    assert params.train.batch_size == 32
    assert params.train.densenet121.epochs == 15
    assert params.train.resnet50.epochs == 10


def test_defaults_fill_missing_sections():
    assert parse_params({}) == Params()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trian": {}}, "trian: unknown parameter"),
        ({"promote": {"margin": 0}}, "promote.margin: must be within"),
        ({"promote": {"margin": "small"}}, "promote.margin: expected a number"),
        ({"evaluate": {"prevalence": 1.0}}, "evaluate.prevalence: must be within"),
        ({"evaluate": {"threshold_confidence": 0.3}}, "evaluate.threshold_confidence: must be"),
        ({"evaluate": {"temperature_min_improvement": -1}}, "evaluate.temperature_min_improvement"),
        ({"evaluate": {"temperature_range": [0.0, 5]}}, "evaluate.temperature_range: must be"),
        ({"evaluate": {"temperature_range": [1.5, 5]}}, "evaluate.temperature_range: must be"),
        ({"evaluate": {"temperature_range": [0.5]}}, "evaluate.temperature_range: must be"),
        ({"train": {"batch_size": "x"}}, "train.batch_size: expected an integer"),
        ({"train": {"batch_size": 0}}, "train.batch_size: must be positive"),
        (
            {"train": {"densenet121": {"epochs": 2.5}}},
            "train.densenet121.epochs: expected an integer",
        ),
        ({"train": {"resnet50": {"lr": 1}}}, "train.resnet50.lr: unknown parameter"),
        ({"prepare": {"conflict_policy": "keep"}}, "prepare.conflict_policy: expected one of"),
        ({"prepare": {"keep_aspect": "yes"}}, "prepare.keep_aspect: expected true or false"),
        ({"prepare": {"val_fraction": 0.4, "test_fraction": 0.45}}, "prepare.test_fraction"),
        ({"classes": ["benign"]}, "classes: need at least two"),
        ({"model": {"weights": 3}}, "model.weights"),
        ({"augment": {"target_per_class": -1}}, "augment.target_per_class"),
        ({"data": []}, "data: expected a mapping"),
        ({"seed": -1}, "seed: must be within"),
    ],
)
def test_bad_values_name_their_key(raw, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("[", r"\[")):
        parse_params(raw)


def test_missing_or_broken_params_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("train: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(broken)


def test_demo_data_is_recognised_by_path(tmp_path):
    assert uses_demo_data(Params())
    raw = yaml.safe_load((ROOT / "params-busi.yaml").read_text())
    assert not uses_demo_data(parse_params(raw))
