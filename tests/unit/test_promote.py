"""Promotion moves `champion` only through the gates, records why, and can be rolled back."""

import json

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline import promote, registry
from pipeline.errors import UserError
from tests.factories import enter_project, make_prepared, project_params, raw_params
from tests.registry_models import register_model

NAME = "tumor-classifier"
RAW = {
    "promote": {"min_macro_f1": 0.5, "min_malignant_sensitivity": 0.5, "min_test_images": 6},
    "mlflow": {"experiment": "tests"},
}
PARAMS = project_params(RAW)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with a prepared test split and its own empty SQLite registry."""
    enter_project(monkeypatch, tmp_path)
    make_prepared(tmp_path, per_split={"train": 1, "val": 1, "test": 4})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(RAW)))  # for main()
    return tmp_path


def champion() -> str | None:
    found = registry.version_by_alias(NAME, "champion")
    return found and str(found.version)


def tags(version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(NAME, version).tags


def test_gates_are_validated_params():
    with pytest.raises(UserError, match="promote.min_macro_f1"):
        project_params({"promote": {"min_macro_f1": 1.5}})
    with pytest.raises(UserError, match="promote.alias"):
        project_params({"promote": {"alias": "challenger"}})
    with pytest.raises(UserError, match="promote.min_test_images"):
        project_params({"promote": {"min_test_images": 0}})


# --- against a real (SQLite) registry ----------------------------------------------------------


def test_a_passing_challenger_becomes_the_first_champion_and_the_decision_is_recorded(project):
    version = register_model("good")
    decision = promote.run(PARAMS)
    assert decision.promoted
    assert champion() == version
    recorded = tags(version)
    assert recorded["promotion_status"] == "promoted"
    assert recorded["promotion_test_split_looks"] == "1 looks by 1 models"
    assert recorded["promotion_compared_to"] == "none"
    assert recorded["promotion_previous_champion"] == "none"
    assert float(recorded["promotion_test_macro_f1"]) == 1.0
    assert recorded["promotion_test_n_test"] == "12"
    assert recorded["promotion_time"].endswith("+00:00")
    report = json.loads((project / "reports" / "promotion.json").read_text())
    assert report["promoted"] is True
    assert report["challenger_version"] == version
    card = MlflowClient().get_model_version(NAME, version).description
    assert "## Promotion" in card
    assert "looked at 1 times by 1 models" in card


def test_a_worse_challenger_is_refused_with_a_one_line_reason_and_the_alias_stays(project, capsys):
    first = register_model("good")
    promote.run(PARAMS)
    worse = register_model("bad")
    capsys.readouterr()
    code = promote.main([])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: promotion refused: {NAME} version {worse}: test macro_f1")
    assert champion() == first
    recorded = tags(worse)
    assert recorded["promotion_status"] == "refused"
    assert recorded["promotion_compared_to"] == first
    assert "promotion_previous_champion" not in recorded


def test_a_challenger_not_shown_non_inferior_is_refused_with_the_interval(project):
    first = register_model("good")
    promote.run(PARAMS)
    second = register_model("no_normal")  # clears the 0.5 floors, far below the champion
    with pytest.raises(promote.PromotionRefused, match="non-inferiority refused: macro_f1"):
        promote.run(PARAMS)
    assert champion() == first
    assert float(tags(second)["promotion_macro_f1_difference_lower_bound"]) < -0.05
    report = json.loads((project / "reports" / "promotion.json").read_text())
    assert report["evidence"]["non_inferiority"]["accepted"] is False
    assert report["evidence"]["held_out_images"] == 12


def test_an_equally_good_challenger_is_non_inferior_and_every_look_is_counted(project):
    register_model("good")
    promote.run(PARAMS)
    # another model with the same answers: registering "good" twice gave byte-identical files
    # whenever both saves fell in one zip-timestamp second, and the ledger rightly counts the same
    # model's same figures once (the test failed once in a fresh-clone run)
    second = register_model("good_retrained")
    decision = promote.run(PARAMS)
    assert decision.promoted
    assert champion() == second
    assert "non-inferiority accepted" in decision.reason
    # the first alone, then the challenger: the champion's figures on this split were recorded by
    # the first promotion, and the same figures again are no new look (pipeline.ledger)
    assert decision.evidence["test_split_use"]["looks"] == 2
    assert decision.evidence["test_split_use"]["models"] == 2
    found = decision.evidence["intervals"]["malignant_sensitivity"]  # exact, never [1, 1]
    assert found["value"] == decision.challenger_metrics["malignant_sensitivity"]
    assert found["ci_low"] < found["value"] <= found["ci_high"]


def test_rollback_points_the_champion_back_to_the_version_it_replaced(project):
    first = register_model("good")
    promote.run(PARAMS)
    with pytest.raises(UserError, match="replaced no champion"):
        promote.run(PARAMS, action="rollback")
    second = register_model("good")
    promote.run(PARAMS)
    assert champion() == second
    assert promote.main(["rollback"]) == 0
    assert champion() == first
    assert tags(second)["promotion_status"] == "rolled_back"
    # each card says where @champion pointed, as of each move, in order
    history = MlflowClient().get_model_version(NAME, first).description.split("## Promotion")[1]
    assert history.index("Promoted to `@champion`") < history.index("No longer `@champion`")
    assert history.index("No longer `@champion`") < history.index("`@champion` again since")
    rolled = MlflowClient().get_model_version(NAME, second).description
    assert f"`@champion` moved back to version {first}" in rolled.split("## Promotion")[1]
    with pytest.raises(UserError, match="was rolled back"):  # not promoted again by accident
        promote.run(PARAMS)


def test_promoting_the_champion_again_changes_nothing(project):
    version = register_model("good")
    promote.run(PARAMS)
    decision = promote.run(PARAMS)
    assert not decision.promoted
    assert champion() == version
    report = json.loads((project / "reports" / "promotion.json").read_text())
    assert report["promotion_status"] == "unchanged"


def test_without_a_challenger_the_error_says_what_to_run(project):
    with pytest.raises(UserError, match=r"tumor-classifier@challenger: not found; run `dvc repro`"):
        promote.run(PARAMS)


def test_test_images_the_champion_trained_on_are_left_out_and_too_few_is_a_recorded_refusal(
    project,
):
    frame = pd.read_csv(project / "data" / "prepared" / "manifest.csv")
    test = frame[frame["split"] == "test"]
    seen = tuple(test["sha256"].iloc[:7])  # the old champion's training data has 7 of these
    first = register_model("good", alias="champion", trained_on=seen)
    second = register_model("good")  # the challenger saw none of them
    with pytest.raises(promote.PromotionRefused, match=r"only 5 of 12 test images are unseen"):
        promote.run(PARAMS)
    assert champion() == first
    report = json.loads((project / "reports" / "promotion.json").read_text())
    assert report["promoted"] is False
    assert "min_test_images" in report["promotion_reason"]
    assert report["evidence"] == {
        "test_images": 12,
        "held_out_images": 5,
        "held_out_groups": 5,
        "left_out_seen_in_training": 7,
        "left_out_groups": 7,
        "test_images_in_challenger_training": 0,
        "test_images_in_champion_training": 7,
    }
    recorded = tags(second)
    assert recorded["promotion_status"] == "refused"
    assert (recorded["promotion_held_out_images"], recorded["promotion_left_out_groups"]) == (
        "5",
        "7",
    )


def test_a_threshold_of_zero_refers_every_image_but_never_changes_the_class(project):
    """Threshold 0: every image is referred; the class answer stays the argmax, which is perfect."""
    version = register_model("good", threshold=0.0)
    decision = promote.run(PARAMS)
    assert decision.promoted
    assert decision.challenger_metrics["macro_f1"] == 1.0
    assert champion() == version


def test_a_truncated_version_is_refused_in_one_line_naming_it_and_the_refusal_is_recorded(
    project, capsys
):
    version = register_model("good")
    (stored,) = (project / "mlartifacts").rglob("model.keras")
    stored.write_bytes(stored.read_bytes()[:1000])
    capsys.readouterr()
    assert promote.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"version {version}: cannot be loaded" in err
    assert tags(version)["promotion_status"] == "refused"
    assert champion() is None
    report = json.loads((project / "reports" / "promotion.json").read_text())
    assert report["promoted"] is False
    assert "cannot be loaded" in report["promotion_reason"]


def test_rollback_onto_a_deleted_version_is_refused_in_one_line(project, capsys):
    first = register_model("good")
    promote.run(PARAMS)
    register_model("good")
    promote.run(PARAMS)
    MlflowClient().delete_model_version(NAME, first)
    capsys.readouterr()
    assert promote.main(["rollback"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"version {first}: cannot be loaded" in err
    assert champion() != first


@pytest.mark.parametrize(
    ("action", "damage"), [("promote", "truncated"), ("promote", "empty"), ("rollback", "empty")]
)
def test_a_damaged_or_empty_store_is_one_line_naming_it_and_the_fix(
    project, capsys, damage, action
):
    """Issue 30: a truncated mlflow.db gave a sqlite3 traceback; a 0-byte one was silently made a
    new empty store, and `dvc repro` (up to date) registered nothing into it."""
    store = project / "mlflow.db"
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"")
    size = store.stat().st_size
    capsys.readouterr()
    assert promote.main([action]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: MLflow store {store}: ")
    assert "dvc repro -f select" in err[0]
    assert store.stat().st_size == size  # left as it was: nothing created in its place


def test_two_promotions_cannot_interleave(project, capsys):
    """Two `make promote` at once both ran the gate and both recorded replacing v1."""
    import threading

    first = register_model("good")
    promote.run(PARAMS)
    second = register_model("good")
    from pipeline import tracking

    with tracking.promotion_lock():
        waiting = threading.Thread(target=promote.run, args=(PARAMS,))
        waiting.start()
        waiting.join(timeout=3)
        assert waiting.is_alive()  # held at the lock, the gate not run
        assert champion() == first
    waiting.join(timeout=120)
    assert champion() == second
    assert "waiting for another promotion" in capsys.readouterr().err
    assert promote.run(PARAMS).reason.endswith("nothing to do")  # the next one finds it done
