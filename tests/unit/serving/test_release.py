"""pipeline.serving.release: a released model says what it is and how it decides, by itself."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.serving.release import NotARelease, find_release, read_release, write_release
from pipeline.serving.rule import DecisionRule
from tests.factories import CLASSES


def test_the_release_carries_the_rule_and_the_provenance(mini_release):
    release = read_release(mini_release[0])
    assert release.rule.threshold == 0.3
    assert release.rule.classes == CLASSES
    assert release.identity() == {"name": "tumor-classifier", "version": "3", "arch": "resnet50"}
    assert release.synthetic
    assert release.model_path.is_file()


def test_an_unregistered_experiment_release_says_so(mini_release, tmp_path):
    rule = DecisionRule(CLASSES)
    provenance = {"model_name": "tumor-classifier", "version": None, "dvc_experiment": "fussy-fish"}
    write_release(tmp_path, mini_release[0] / "model.keras", rule, provenance)
    release = read_release(tmp_path)
    assert release.identity()["version"] == "unregistered"
    assert release.provenance["dvc_experiment"] == "fussy-fish"


def test_provenance_takes_known_keys_only(mini_release, tmp_path):
    with pytest.raises(ValueError, match="patient_name"):
        write_release(
            tmp_path, mini_release[0] / "model.keras", DecisionRule(CLASSES), {"patient_name": "x"}
        )


def test_a_training_output_is_not_a_release_and_the_error_says_what_to_serve(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"PK")
    with pytest.raises(NotARelease, match="models/selected"):
        read_release(tmp_path / "model.keras")


def test_broken_records_are_refused_with_the_file_named(mini_release, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "release.json").write_text(json.dumps({"format": 1, "rule": {"classes": ["a"]}}))
    with pytest.raises(NotARelease, match="release.json"):
        read_release(folder)
    (folder / "release.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(NotARelease, match="format"):
        read_release(folder)


def test_a_release_nested_in_an_mlflow_or_azure_folder_is_found(mini_release, tmp_path):
    nested = tmp_path / "artifacts" / "release"
    nested.parent.mkdir(parents=True)
    shutil.copytree(mini_release[0], nested)
    assert find_release(tmp_path) == nested
    (tmp_path / "artifacts" / "empty").mkdir()
    with pytest.raises(NotARelease, match="expected one"):
        find_release(tmp_path / "artifacts" / "empty")
