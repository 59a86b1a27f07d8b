"""The augment stage balances the train split only, deterministically, and never sees val/test."""

import pandas as pd
import pytest

from pipeline import augment
from pipeline.errors import UserError
from tests.factories import make_prepared, project_params


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_prepared(tmp_path, per_split={"train": 4, "val": 2, "test": 2})
    # make the classes unequal in train: drop three normal train images
    manifest = pd.read_csv("data/prepared/manifest.csv")
    drop = manifest[(manifest.label == "normal") & (manifest.split == "train")].index[:3]
    manifest.drop(drop).to_csv("data/prepared/manifest.csv", index=False)
    return tmp_path


def test_train_classes_are_balanced_to_the_largest(project):
    totals = augment.run(project_params())
    assert totals == {"benign": 4, "malignant": 4, "normal": 4}
    out = pd.read_csv("data/augmented/manifest.csv")
    assert out.groupby("label").size().to_dict() == totals
    assert out.augmented.sum() == 3


def test_val_and_test_images_never_enter_the_augmented_set(project):
    augment.run(project_params())
    prepared = pd.read_csv("data/prepared/manifest.csv")
    held_out = set(prepared[prepared.split != "train"].path)
    sources = set(pd.read_csv("data/augmented/manifest.csv").source)
    assert sources
    assert not sources & held_out


def test_reruns_are_byte_identical(project):
    augment.run(project_params())
    first = {p.name: p.read_bytes() for p in (project / "data/augmented").rglob("*.*")}
    augment.run(project_params())
    second = {p.name: p.read_bytes() for p in (project / "data/augmented").rglob("*.*")}
    assert first == second


def test_a_class_without_train_images_is_a_user_error(project):
    manifest = pd.read_csv("data/prepared/manifest.csv")
    manifest[manifest.label != "normal"].to_csv("data/prepared/manifest.csv", index=False)
    with pytest.raises(UserError, match=r"no train images for class\(es\) \['normal'\]"):
        augment.run(project_params())


def test_missing_manifest_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert augment.main([]) == 2
