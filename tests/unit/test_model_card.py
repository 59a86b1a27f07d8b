"""pipeline.model_card: the card says what the model is for, how good it is, and what it is not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline import evaluate
from pipeline.card_results import LABELS, format_estimate
from pipeline.config import load_params
from pipeline.datasets import ImageSet
from pipeline.metrics import HEADLINE
from pipeline.model_card import RESEARCH_ONLY, SYNTHETIC_WARNING, render_model_card
from tests.factories import project_params

ROOT = Path(__file__).resolve().parents[2]

SELECTION = {
    "winner": "densenet121",
    "metric": "macro_f1",
    "reason": "higher validation macro_f1 (0.8000 vs 0.7000 for resnet50)",
    "run_id": "abc123",
    "model_name": "tumor-classifier",
    "version": "3",
    "alias": "challenger",
}
SUMMARY = {
    "images": 780,
    "counts": {
        "train": {"benign": 305, "malignant": 147, "normal": 93},
        "val": {"benign": 66, "malignant": 31, "normal": 20},
        "test": {"benign": 66, "malignant": 32, "normal": 20},
    },
    "duplicate_groups": 12,
    "conflict_groups": 2,
    "rejected": {"count": 1, "reasons": {"truncated": 1}},
    "sources": ["BUSI"],
}


@pytest.fixture(scope="module")
def metrics():
    """A real `{"val": M, "test": M}` as the evaluate stage writes it."""
    rng = np.random.default_rng(0)
    data, proba = {}, {}
    for split, n in (("val", 60), ("test", 70)):
        y = rng.integers(0, 3, n)
        logits = 2.5 * (rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y])
        data[split] = ImageSet(np.zeros((n, 2, 2, 3), np.uint8), y, [str(i) for i in range(n)])
        proba[split] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    params = project_params({"evaluate": {"bootstrap": 100}})
    return evaluate.evaluate_probabilities(data, proba, params)[1]


def test_every_card_carries_the_research_use_only_notice(metrics):
    for synthetic in (False, True):
        card = render_model_card("densenet121", metrics, SUMMARY, SELECTION, synthetic)
        assert RESEARCH_ONLY in card
        assert "not for clinical use" in card.lower()


def test_synthetic_data_is_flagged_at_the_top_and_in_the_limitations(metrics):
    card = render_model_card("densenet121", metrics, SUMMARY, SELECTION, True)
    assert SYNTHETIC_WARNING in card
    assert card.index(SYNTHETIC_WARNING) < card.index("## Model")
    assert "Synthetic demo data" in card.split("## Caveats and recommendations")[1]
    real = render_model_card("densenet121", metrics, SUMMARY, SELECTION, False)
    assert SYNTHETIC_WARNING not in real
    assert "Synthetic demo data" not in real


def test_metrics_appear_with_their_confidence_intervals(metrics):
    card = render_model_card("densenet121", metrics, SUMMARY, SELECTION, False)
    f1 = metrics["test"]["macro_f1"]
    assert f"{f1['value']:.3f} [{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]" in card
    sens = metrics["test"]["operating_point"]["sensitivity"]
    assert f"{sens['value']:.3f} [{sens['ci_low']:.3f}, {sens['ci_high']:.3f}]" in card
    lesion_auc = metrics["test"]["lesions"]["auc"]
    assert f"{lesion_auc['value']:.3f} [{lesion_auc['ci_low']:.3f}" in card
    assert f"p(malignant) >= {metrics['val']['operating_point']['threshold']:.4f}" in card
    assert f"T = {metrics['val']['calibration']['temperature']:.3f}" in card
    applied = metrics["val"]["calibration"]["applied"]
    assert ("Temperature scaling applied" in card) == applied
    low, high = project_params().evaluate.temperature_range  # the range the fit searched
    assert f"within [{low:g}, {high:g}] (`evaluate.temperature_range`)" in card
    assert "| malignant |" in card  # per-class table
    assert f"validation {metrics['val']['n']} ({metrics['val']['groups']})" in card


def test_data_summary_selection_and_limitations_are_shown(metrics):
    card = render_model_card("densenet121", metrics, SUMMARY, SELECTION, False)
    assert "| train | 305 | 147 | 93 |" in card
    assert "duplicate groups 12" in card
    assert "conflict groups 2" in card
    assert "`tumor-classifier` version 3 (`@challenger` when selected)" in card
    assert SELECTION["reason"] in card
    for heading in (
        "## Model details", "## Intended use", "## Factors", "## Metrics", "## Evaluation data",
        "## Training data", "## Quantitative analyses", "### Subgroups",
        "## Ethical considerations", "## Caveats and recommendations", "## TRIPOD+AI items",
    ):  # fmt: skip
        assert heading in card
    for detail in ("Owner:", "Date:", "Licence:", "Citation:", "Version:"):
        assert detail in card
    assert "Expect lower performance on other sites" in card
    assert "- Duplicates: " in card


@pytest.mark.parametrize("summary", [None, {}, {"odd": [1, {"x": 2}]}, {"counts": {}}])
def test_missing_or_unexpected_inputs_still_render(summary):
    card = render_model_card("resnet50", {"val": {}, "test": {}}, summary, None, True)
    assert RESEARCH_ONLY in card
    assert SYNTHETIC_WARNING in card
    assert card.endswith("\n")


def test_the_card_says_how_often_the_test_split_was_looked_at(metrics):
    seen = {**metrics, "test": {**metrics["test"], "test_use": {"looks": 7, "models": 3}}}
    card = render_model_card("densenet121", seen, SUMMARY, SELECTION, False)
    assert "looked at 7 times by 3 models" in card
    assert "| Test-set reuse | 7 looks by 3 models |" in card


def test_the_committed_card_points_at_the_count_without_a_number_that_grows(metrics):
    look = {"time_utc": "2026-12-04T21:00:00+00:00", "model_sha256": "cd" * 32,
            "purpose": "evaluate: test report"}  # fmt: skip
    use = {"file": "reports/test_looks.csv", "ledger": "busi-test-ledger",
           "split_sha256": "ab" * 32, "look": look}  # fmt: skip
    seen = {**metrics, "test": {**metrics["test"], "test_use": use}}
    card = render_model_card("densenet121", seen, SUMMARY, SELECTION, False)
    assert "every look at this test split is counted" in card
    assert "| Test-set reuse | counted in `reports/test_looks.csv` |" in card
    assert "look taken 2026-12-04T21:00:00+00:00 (UTC)" in card  # the row these figures are
    assert "None times" not in card


def test_subgroups_show_their_size_and_small_ones_no_estimate(metrics):
    rows = [
        {"subgroup": "<= 500 px", "images": 8, "groups": 7, "note": "fewer than 10 images"},
        {
            "subgroup": "> 500 px",
            "images": 62,
            "groups": 60,
            "accuracy": metrics["test"]["accuracy"],
        },
    ]
    seen = {**metrics, "test": {**metrics["test"], "subgroups": {"source image size": rows}}}
    card = render_model_card("densenet121", seen, SUMMARY, SELECTION, False)
    assert "| <= 500 px | 8 | 7 | fewer than 10 images |" in card
    assert f"| > 500 px | 62 | 60 | {format_estimate(metrics['test']['accuracy'])} |" in card
    assert "Not evaluated" not in card


def test_subgroup_analyses_the_data_cannot_support_are_named_with_the_reason(metrics):
    gap = "lesion size: no benign or malignant image has a mask marking its lesion"
    seen = {**metrics, "test": {**metrics["test"], "subgroups_not_evaluated": [gap]}}
    card = render_model_card("densenet121", seen, SUMMARY, SELECTION, False)
    factors = card.split("## Factors")[1].split("\n## ")[0]
    assert f"- Not evaluated: {gap}." in factors


def test_the_card_labels_every_headline_metric():
    assert tuple(LABELS) == HEADLINE


def test_the_ood_check_shows_its_auroc_per_family_and_the_share_of_test_refused(metrics):
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 30)
    inside = {s: rng.normal(size=(n, 6)) for s, n in (("val", 60), ("test", 70))}
    pooled = {"train": rng.normal(size=(90, 6)) + labels[:, None] * 0.1, **inside}
    pooled |= {"textures": rng.normal(size=(20, 6)) * 4, "colour": rng.normal(size=(20, 6))}
    _, found, check = evaluate.ood_evaluation(pooled, labels, 0.95, np.repeat([0, 1, 2], 20))
    card = render_model_card(
        "densenet121",
        {s: metrics[s] | {"ood": found[s]} for s in ("val", "test")},
        SUMMARY,
        SELECTION,
        False,
    )
    section = card.split("### Out-of-distribution inputs")[1].split("###")[0]
    assert f"| textures | 20 | {found['test']['auroc']['textures']:.3f} |" in section
    assert found["test"]["auroc"]["textures"] > 0.9 > found["test"]["auroc"]["colour"]
    assert (check.scores["val"] > check.threshold).mean() <= 0.05 + 1 / 60
    assert check.threshold == found["test"]["threshold"]


def test_the_card_says_whether_the_split_is_patient_level_and_what_was_excluded(metrics):
    image_level = render_model_card("densenet121", metrics, SUMMARY, SELECTION, False)
    assert "Split: image-level" in image_level
    assert "so the split is image-level" in image_level
    assert "(`data.exclude`): none." in image_level
    summary = SUMMARY | {
        "grouping": {"split_level": "patient", "ids_from": "patient, study", "split_groups": 40},
        "excluded": {"total": 5, "by_reason": {"axilla view": 4, "annotations": 1}},
    }
    card = render_model_card("densenet121", metrics, summary, SELECTION, False)
    assert "Split: patient-level" in card
    assert "(40 groups)" in card
    assert "patient ids keep each patient in one split" in card
    assert "image-level" not in card
    assert "Labels are per image" not in card
    assert "before splitting: 5 images (axilla view: 4, annotations: 1)" in card


def test_refusals_are_stated_once_per_class_and_the_card_scores_the_served_answers():
    """An OOD check refusing 3 malignant test images: the card shows 3/20 for malignant and the
    class metrics count them wrong, the answered-only macro-F1 apart."""
    rng = np.random.default_rng(4)
    data, proba, scores = {}, {}, {}
    for split in ("val", "test"):
        y = np.repeat([0, 1, 2], 20)
        logits = 4.0 * np.eye(3)[y] + rng.normal(size=(60, 3))
        data[split] = ImageSet(np.zeros((60, 2, 2, 3), np.uint8), y, [str(i) for i in range(60)])
        proba[split] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        scores[split] = np.zeros(60)
    scores["test"][[20, 21, 22]] = 9.0  # three malignant test images beyond the threshold
    check = evaluate.OodCheck(5.0, "test score", scores)
    params = project_params({"evaluate": {"bootstrap": 50}})
    rule, found = evaluate.evaluate_probabilities(data, proba, params, ood=check)
    assert rule.ood_threshold == 5.0
    test = found["test"]
    assert test["refused_by_class"]["malignant"]["n"] == 3
    assert test["coverage"]["n"] == 57
    assert test["per_class"]["malignant"]["refused"] == 3
    assert test["malignant_sensitivity"]["value"] <= 17 / 20  # a refusal is a miss
    assert test["operating_point"]["counts"]["fn"] >= 3  # a refused malignant is not flagged
    card = render_model_card("densenet121", found, SUMMARY, SELECTION, False)
    assert "| Refused as out of scope, true malignant | 0/20 = 0.000" in card
    assert "| 3/20 = 0.150 [0.032, 0.379] |" in card
    assert "| Coverage: answered images | 60/60 = 1.000" in card
    assert "Macro F1, answered images only" in card


def card_facts(params_file: str) -> dict[str, str]:
    return dataclasses.asdict(load_params(ROOT / params_file).card)


def test_the_demo_card_states_no_licence_or_ethics_and_no_busi_fact(metrics):
    card = render_model_card(
        "densenet121", metrics, SUMMARY, SELECTION, True, card=card_facts("params.yaml")
    )
    assert "whose licence is: not stated." in card
    assert "- Ethics approval and de-identification of the data: not stated." in card
    assert "- Population: not stated." in card
    for busi in ("Al-Dhabyani", "CC BY", "Baheya", "aged 25", "2018", "one hospital"):
        assert busi not in card, busi


def test_the_busi_card_states_what_the_busi_publisher_states(metrics):
    facts = card_facts("params-busi.yaml")
    card = render_model_card("densenet121", metrics, SUMMARY, SELECTION, False, card=facts)
    assert f"whose licence is: {facts['licence']}." in card
    assert f"as the data's provider states: {facts['ethics']}." in card
    assert f"- Site and dates of acquisition: {facts['site']}." in card
    assert "Al-Dhabyani" in card
    assert "women aged 25 to 75" in card
    assert render_model_card("densenet121", metrics, SUMMARY, SELECTION, False).count(
        "not stated"
    ) >= len(facts)  # without a card section every fact is "not stated"


def test_the_card_shows_the_worst_errors_and_the_refusals_by_class(metrics):
    card = render_model_card("densenet121", metrics, SUMMARY, SELECTION, False)
    failures = card.split("### Failure cases (test)")[1].split("\n## ")[0]
    shown = metrics["test"]["failure_cases"]
    assert 0 < len(shown) <= 5
    assert failures.count("\n| ") == len(shown) + 1  # the header and one row per case
    assert shown[0]["image"] in failures
    assert "| Refused as out of scope, true malignant |" in card
