"""params.yaml is validated once, up front, with messages that name the bad or missing key; it
is the only place a default lives, and every shipped variant is complete."""

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.config import load_params, parse_params, uses_demo_data
from pipeline.errors import UserError
from tests.factories import project_params

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.name for p in ROOT.glob("params*.yaml"))


def test_the_projects_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.classes == ("benign", "malignant", "normal")
    assert params.positive_class == "malignant"
    assert params.train.backbones["densenet121"].epochs >= 1


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_params_file_is_complete_and_valid(name):
    """Loaded through the same code as params.yaml: a variant lacking a key fails here, not on
    a user's GPU an hour in."""
    assert {"params.yaml", "params-busi.yaml"} <= set(SHIPPED)
    params = load_params(ROOT / name)
    assert params.classes == load_params(ROOT / "params.yaml").classes


def test_no_default_lives_in_the_code():
    def fields(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
        found, hints = {}, typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            found[prefix + f.name] = f
            if dataclasses.is_dataclass(hints[f.name]):
                found |= fields(hints[f.name], f"{prefix}{f.name}.")
        return found

    every = fields(config.Params)
    assert len(every) > 80
    defaulted = [
        name
        for name, f in every.items()
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert defaulted == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("evaluate", "ood_images"), "evaluate.ood_images: missing"),
        (("monitor",), "monitor: missing"),
        (
            ("train", "backbones", "resnet50", "unfreeze"),
            "train.backbones.resnet50.unfreeze: missing",
        ),
        (("positive_class",), "positive_class: missing"),
    ],
)
def test_a_missing_key_is_named_like_a_wrong_one(path, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = raw
    for part in path[:-1]:
        section = section[part]
    del section[path[-1]]
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        parse_params(raw)


def test_the_busi_preset_is_valid():
    params = load_params(ROOT / "params-busi.yaml")
    assert params.model.weights == "imagenet"
    assert params.prepare.image_size == 224
    assert params.train.batch_size == 32
    assert params.train.backbones["densenet121"].epochs == 15
    assert params.train.backbones["resnet50"].epochs == 10


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trian": {}}, "trian: unknown parameter"),
        ({"promote": {"margin": "small"}}, "promote.margin: expected a number"),
        ({"train": {"batch_size": "x"}}, "train.batch_size: expected an integer"),
        (
            {"train": {"backbones": {"densenet121": {"epochs": 2.5}}}},
            "train.backbones.densenet121.epochs: expected an integer",
        ),
        (
            {"train": {"backbones": {"resnet50": {"lr": 1}}}},
            "train.backbones.resnet50.lr: unknown parameter",
        ),
        ({"train": {"backbones": []}}, "train.backbones: expected a non-empty mapping"),
        ({"train": {"backbones": {"Res-Net": {}}}}, "train.backbones.Res-Net: names are"),
        ({"prepare": {"conflict_policy": "keep"}}, "prepare.conflict_policy: expected one of"),
        ({"prepare": {"keep_aspect": "yes"}}, "prepare.keep_aspect: expected true or false"),
        ({"data": []}, "data: expected a mapping"),
        ({"model": {"weights": 3}}, "model.weights"),
    ],
)
def test_unknown_keys_and_wrong_types_name_their_key(raw, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("[", r"\[")):
        project_params(raw)


def test_missing_or_broken_params_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("train: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(broken)


def test_demo_data_is_recognised_by_path(tmp_path):
    assert uses_demo_data(project_params())
    raw = yaml.safe_load((ROOT / "params-busi.yaml").read_text())
    assert not uses_demo_data(parse_params(raw))
