"""The promotion gate, without a registry: absolute floors that a NaN never passes, test groups
left out whole when either model saw one of their images, a refusal counted as a miss for its
class, and the non-inferiority test at its nominal rate when one side refuses."""

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import promotion_gate
from pipeline.serving.rule import Served
from tests.factories import make_prepared, project_params

RAW = {
    "promote": {"min_macro_f1": 0.5, "min_malignant_sensitivity": 0.5, "min_test_images": 6},
    "mlflow": {"experiment": "tests"},
}
PARAMS = project_params(RAW)


def test_a_challenger_under_an_absolute_floor_is_refused():
    ok, reason = promotion_gate.floors({"macro_f1": 0.40, "malignant_sensitivity": 0.99}, PARAMS)
    assert not ok
    assert "macro_f1 0.4000 < promote.min_macro_f1 0.5000" in reason
    ok, reason = promotion_gate.floors({"macro_f1": 0.90, "malignant_sensitivity": 0.30}, PARAMS)
    assert not ok
    assert "malignant_sensitivity" in reason


def test_an_undefined_metric_never_passes_a_gate():
    ok, _ = promotion_gate.floors({"macro_f1": math.nan, "malignant_sensitivity": 1.0}, PARAMS)
    assert not ok


@pytest.fixture
def paired_test_split(tmp_path, monkeypatch) -> pd.DataFrame:
    """A prepared set whose 12 test images form 6 groups of two (duplicates or one patient's
    images share a group, as prepare writes them); returns the test rows in manifest order."""
    monkeypatch.chdir(tmp_path)
    make_prepared(tmp_path, per_split={"train": 1, "val": 1, "test": 4})
    path = tmp_path / "data" / "prepared" / "manifest.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    test = frame.index[frame["split"] == "test"]
    frame.loc[test, "group"] = [f"pair-{i // 2}" for i in range(len(test))]
    frame.to_csv(path, index=False)
    return frame.loc[test].reset_index(drop=True)


def test_a_test_group_is_left_out_whole_when_either_model_saw_one_of_its_images(
    paired_test_split,
):
    test = paired_test_split
    challenger = frozenset({test["sha256"][0]})  # pair-0
    champion = frozenset({test["sha256"][5]})  # pair-2
    images, rows, counts = promotion_gate.held_out(
        PARAMS, {"challenger": challenger, "champion": champion}
    )
    assert sorted(set(rows["group"])) == ["pair-1", "pair-3", "pair-4", "pair-5"]
    assert len(images) == len(rows) == 8
    assert [Path(p).name for p in images.paths] == [Path(p).name for p in rows["path"]]
    assert counts == {
        "test_images": 12,
        "held_out_images": 8,
        "held_out_groups": 4,
        "left_out_seen_in_training": 4,
        "left_out_groups": 2,
        "test_images_in_challenger_training": 1,
        "test_images_in_champion_training": 1,
    }
    _, rows, _ = promotion_gate.held_out(PARAMS, {"challenger": frozenset(), "champion": champion})
    assert "pair-2" not in set(rows["group"])  # the champion's overlap alone leaves it out
    assert len(rows) == 10


@pytest.mark.parametrize(("minimum", "refused"), [(6, False), (7, True)])
def test_overlap_is_refused_exactly_when_fewer_than_min_test_images_remain(
    paired_test_split, minimum, refused
):
    test = paired_test_split
    seen = {  # three pairs seen between them: 6 of 12 images remain
        "challenger": frozenset(test["sha256"][[0, 2]]),
        "champion": frozenset(test["sha256"][[4]]),
    }
    params = project_params(RAW | {"promote": RAW["promote"] | {"min_test_images": minimum}})
    if not refused:
        images, _, counts = promotion_gate.held_out(params, seen)
        assert len(images) == counts["held_out_images"] == 6
        return
    with pytest.raises(
        promotion_gate.TooFewUnseen, match=r"only 6 of 12 .*min_test_images 7"
    ) as info:
        promotion_gate.held_out(params, seen)
    assert info.value.counts["held_out_images"] == 6
    assert info.value.counts["left_out_groups"] == 3


def test_an_out_of_scope_answer_is_a_miss_for_its_class_never_a_class_of_its_own():
    y = np.array([0, 1, 2, 1])
    p = np.eye(3)[[0, 1, 2, 1]] * 0.9 + 0.05
    served = Served(
        p, np.array([0, 1, 2, 1]), np.array([False, False, False, True]),
        np.array([False, True, False, False]),
    )  # fmt: skip
    metrics = promotion_gate.served_metrics(y, served, positive=1)
    assert metrics["out_of_scope"] == 1
    assert metrics["coverage"] == 0.75
    assert metrics["malignant_sensitivity"] == 0.5  # the refused malignant image is not flagged
    # benign 1, malignant 2/3 (one found of two, none wrongly), normal 1: three classes, not four
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)


def test_coverage_is_a_gate_of_its_own():
    ok, reason = promotion_gate.floors(
        {"macro_f1": 0.9, "malignant_sensitivity": 0.9, "coverage": 0.85}, PARAMS
    )
    assert not ok
    assert "test coverage 0.8500 < promote.min_coverage 0.9000" in reason


@pytest.mark.parametrize("refused", [(0.05, 0.0), (0.0, 0.05)], ids=["challenger", "champion"])
def test_an_equal_challenger_is_accepted_at_the_nominal_rate_when_one_side_refuses(refused):
    """Simulated promotions (bench/promotion_gate.py) of equally good models at the BUSI test
    size: one side refuses 5% of the images, mixed between its right and wrong answers so that it
    stays exactly as good (bench.promotion_gate.equal_refusal_mix). Scored as a fourth class with
    F1 0, a refusing challenger was accepted in 1% of simulations and a refusing champion's
    challenger in 82%; counted as a miss for its true class the rate stays the gate's own."""
    from bench.promotion_gate import gate_runs

    args = argparse.Namespace(reps=150, bootstrap=300, pairs=0.3, discordance=0.15)
    nominal, _ = gate_runs(117, 0.0, args, 0.05, np.random.default_rng(5))
    rate, _ = gate_runs(117, 0.0, args, 0.05, np.random.default_rng(5), refused)
    assert 0.1 < nominal < 0.9  # the gate's own rate for equal models at this size (0.35)
    assert abs(rate - nominal) <= 0.1
