"""External validation (pipeline.external and its modules): a site is screened against the
development data, scored through the release, and reported with intervals and calibration."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import external, external_card, prepare, synthetic
from pipeline.errors import UserError
from pipeline.external_report import served, site_figures
from pipeline.ledger import ledger_experiment
from tests.factories import (
    enter_project,
    left_out_pairs,
    make_release,
    mini_classifier,
    project_params,
)

DEV = Path("data/raw/dev")
SITE = Path("data/external/site-b")


def _csv_layout(folder: Path, patient_of) -> None:
    """labels.csv over the class folders `synthetic` wrote, with a patient id per image."""
    rows = [
        {
            "path": p.relative_to(folder).as_posix(),
            "label": p.parent.name,
            "patient_id": patient_of(p),
        }
        for p in sorted(folder.glob("*/*.png"))
        if not p.stem.endswith("_mask")
    ]
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)


def _params():
    site = {"name": "site-b", "path": str(SITE / "labels.csv"), "group_column": None}
    return project_params(
        {
            "data": {"raw_dir": str(DEV / "labels.csv"), "external": [site]},
            "prepare": {"image_size": 32},
            "evaluate": {"bootstrap": 40},
        }
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A development set (CSV with patient ids), a release, and a site holding an exact copy, a
    20% crop and a new image of a development patient among its own images; the stage run."""
    root = tmp_path_factory.mktemp("external")
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        synthetic.generate(DEV, 45, 64, seed=1)
        _csv_layout(DEV, lambda p: f"dev-{p.parent.name}-{p.stem.split('(')[1][:-1]}")
        synthetic.generate_site(SITE, 30, 48, seed=1)
        shutil.copy(DEV / "benign" / "benign (2).png", SITE / "benign" / "copy.png")
        scan = Image.open(DEV / "malignant" / "malignant (2).png")
        w, h = scan.size
        scan.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(
            SITE / "malignant" / "crop.png"
        )
        fresh, _ = synthetic.render_case("normal", np.random.default_rng(99), 48)
        Image.fromarray(fresh).save(SITE / "normal" / "same-patient.png")
        same = {"same-patient": "dev-normal-3"}
        _csv_layout(SITE, lambda p: same.get(p.stem, f"site-{p.parent.name}-{p.stem}"))
        Path("data/exclude.csv").write_text("path,reason\n")
        params = _params()
        prepare.run(params)
        make_release(root / "models" / "selected", mini_classifier(), 0.3, version=None)
        test = {
            "test": {
                "macro_f1": {"value": 0.9},
                "operating_point": {"sensitivity": {"value": 0.95}},
            }
        }
        (root / "reports/evaluate/models/resnet50").mkdir(parents=True)
        (root / "reports/evaluate/models/resnet50/metrics.json").write_text(json.dumps(test))
        summary = external.run(params)
    return root, summary


def test_copies_crops_and_patients_of_development_images_are_left_out_and_listed(scored):
    root, summary = scored
    (site,) = summary["sites"]
    pairs = left_out_pairs(root, "site-b")
    assert {k: v["how"] for k, v in pairs.items()} == {
        "benign/copy.png": "exact",
        "malignant/crop.png": "crop/shift",
        "normal/same-patient.png": "same patient",
    }
    assert pairs["benign/copy.png"]["development_source"] == "benign/benign (2).png"
    assert pairs["malignant/crop.png"]["development_source"] == "malignant/malignant (2).png"
    assert site["counts"]["left_out_duplicating_development"] == 3
    assert site["counts"]["kept"] == 30
    assert site["case_mix"]["images"] == 30


def test_each_site_is_reported_with_intervals_calibration_refusals_and_differences(scored):
    root, summary = scored
    figures = summary["sites"][0]["figures"]
    # an untrained model may flag every image: NPV is then undefined (None), never made up
    assert figures["referral"].keys() >= {"sensitivity", "specificity", "ppv", "npv"}
    for estimate in (
        figures["referral"]["sensitivity"],
        figures["class_metrics"]["refusal_counted_wrong"]["macro_f1"],
    ):
        assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"]
    assert figures["refusals"]["refused"] + figures["refusals"]["answered"] == 30
    assert {"calibration_in_the_large", "slope"} <= figures["calibration"].keys() or (
        "note" in figures["calibration"]
    )
    diffs = {row["figure"]: row for row in summary["sites"][0]["differences"]}
    macro = diffs["macro-F1 (refusal counted wrong)"]
    assert macro["difference"] == pytest.approx(macro["external"] - 0.9)
    text = (root / "reports/external/model_card_section.md").read_text()
    assert text.startswith("## External validation")
    assert "site-b" in text
    assert "| benign share |" in text


def test_every_scoring_of_a_site_is_a_look_in_the_ledger(scored):
    import mlflow

    root, summary = scored
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    ledger = client.get_experiment_by_name(ledger_experiment("busi-tumor-classification"))
    (look,) = client.search_runs([ledger.experiment_id])
    assert look.data.tags["purpose"] == "external: site-b"
    assert look.data.tags["test_split_sha256"] == summary["sites"][0]["ledger"]["split_sha256"]


def test_no_site_is_reported_as_none(tmp_path, monkeypatch):
    summary = {"sites": [], "model": {}, "rule": "", "model_sha256": "0" * 64}
    assert "None." in external_card.section(summary)


def test_the_section_replaces_the_cards_pending_one_and_keeps_the_rest():
    card = "# Card\n\n## External validation\n\n- pending\n\n## Ethical considerations\n\n- x\n"
    spliced = external_card.splice(card, "## External validation\n\n- figures\n")
    assert (
        spliced
        == "# Card\n\n## External validation\n\n- figures\n\n## Ethical considerations\n\n- x\n"
    )


@pytest.mark.parametrize(
    ("external", "message"),
    [
        ([{"name": "b", "path": "elsewhere/b"}], "data.external[0].path"),
        ([{"name": "Site B", "path": "data/external/b"}], "data.external[0].name"),
        ([{"name": "b", "path": "data/external/b"}] * 2, "data.external[1].name"),
    ],
)
def test_a_bad_external_set_stops_with_its_key(external, message):
    sites = [site | {"group_column": None} for site in external]
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        project_params({"data": {"external": sites}})


def test_an_external_set_inside_the_development_data_is_refused():
    site = {"name": "b", "path": "data/external/dev/b", "group_column": None}
    with pytest.raises(UserError, match=r"data\.external\[0\]\.path: .* overlaps data\.raw_dir"):
        project_params({"data": {"raw_dir": "data/external/dev", "external": [site]}})


def test_class_metrics_count_a_refusal_wrong_and_the_flag_counts_it_unreferred():
    classes = ("benign", "malignant", "normal")
    y = np.array([0, 0, 1, 1, 2, 2])
    answers = [
        {"class": c, "decision": {"refer": r}, "probabilities": {"malignant": p}}
        for c, r, p in [
            ("benign", False, 0.1), ("benign", True, 0.4), ("malignant", True, 0.9),
            ("out_of_scope", None, 0.8), ("normal", False, 0.0), ("benign", False, 0.1),
        ]
    ]  # fmt: skip
    out = served(answers, classes, "malignant")
    found = site_figures(
        y, out, np.arange(6).astype(str).astype(object), classes, positive="malignant",
        n_bootstrap=0, seed=0, prevalence=0.2, n_bins=5,
    )  # fmt: skip
    wrong, answered = (
        found["class_metrics"]["refusal_counted_wrong"],
        found["class_metrics"]["answered"],
    )
    assert wrong["accuracy"]["value"] == pytest.approx(4 / 6)
    assert answered["accuracy"]["value"] == pytest.approx(4 / 5)
    assert wrong["recall_1"]["value"] == pytest.approx(1 / 2)  # the refused malignant is missed
    assert found["referral"]["sensitivity"]["value"] == pytest.approx(1 / 2)
    assert found["refusals"]["malignant"] == {"refused": 1, "images": 2}


def _site_with_calibration(sharpen: float) -> dict:
    """400 answered scans whose malignancy follows p(malignant) = sigmoid(logit / sharpen): the
    served probabilities are right for sharpen 1 and too extreme for a larger one."""
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.98, 400)
    malignant = rng.uniform(size=400) < truth
    served_p = 1 / (1 + np.exp(-sharpen * np.log(truth / (1 - truth))))
    y = np.where(malignant, 1, rng.choice([0, 2], size=400))
    answers = [
        {
            "class": "malignant" if p >= 0.5 else "benign",
            "decision": {"refer": bool(p >= 0.5)},
            "probabilities": {"malignant": float(p)},
        }
        for p in served_p
    ]
    classes = ("benign", "malignant", "normal")
    return site_figures(
        y, served(answers, classes, "malignant"), np.arange(400).astype(str).astype(object),
        classes, positive="malignant", n_bootstrap=200, seed=0, prevalence=0.2, n_bins=5,
    )["calibration"]  # fmt: skip


def test_calibration_in_the_large_and_slope_have_intervals_that_find_a_site_drift():
    right, extreme = _site_with_calibration(1.0), _site_with_calibration(2.0)
    for line in (right, extreme):
        for name in ("calibration_in_the_large", "slope"):
            assert line[name]["ci_low"] < line[name]["value"] < line[name]["ci_high"]
    assert right["slope"]["ci_low"] < 1 < right["slope"]["ci_high"]
    cil = right["calibration_in_the_large"]
    assert cil["ci_low"] < 0 < cil["ci_high"]
    assert extreme["slope"]["ci_high"] < 0.75  # predictions twice too extreme: slope about 1/2
    assert right["observed_share"] == pytest.approx(right["expected_share"], abs=0.06)


def test_promotion_names_the_external_figures_of_the_same_model_and_gates_only_when_asked():
    from pipeline import promote, promotion_gate
    from pipeline.external_report import promotion_figures

    wrong = {"macro_f1": {"value": 0.4}}
    figures = {
        "images": 30,
        "class_metrics": {"refusal_counted_wrong": wrong},
        "referral": {"sensitivity": {"value": 0.9}},
    }
    summary = {"model_sha256": "a" * 64, "sites": [{"name": "b", "figures": figures}]}
    assert promotion_figures(summary, "b" * 64) is None  # another model's figures
    sites = promotion_figures(summary, "a" * 64)
    assert sites["b"]["macro_f1"] == 0.4
    assert sites["b"]["images"] == 30
    params = project_params({"promote": {"external_gate": True}})
    ok, reason = promotion_gate.external_gate(sites, params, "passes")
    assert not ok
    assert reason.startswith("external site b: macro_f1 0.4000 < promote.min_macro_f1")
    assert not promotion_gate.external_gate(None, params, "passes")[0]
    assert promote._external_lines(sites, gated=False)[0].startswith(
        "- External validation (reported, not gated), site b: images 30, macro_f1 0.4000"
    )


def test_batched_answers_with_a_padded_last_batch_are_each_images_own(mini_release):
    from pipeline.serving.classifier import load_classifier

    classifier = load_classifier(mini_release[0])
    images = np.random.default_rng(0).integers(0, 256, (external.BATCH + 5, 32, 32, 3), np.uint8)
    answers = external._answers(classifier, images)
    assert len(answers) == len(images)
    for k in (0, external.BATCH - 1, external.BATCH, len(images) - 1):
        alone = classifier.predict(images[k])["probabilities"]["malignant"]
        assert answers[k]["probabilities"]["malignant"] == pytest.approx(alone, abs=1e-5)
