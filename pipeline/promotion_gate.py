"""The promotion gate: which test images both releases may be judged on, what each release
answers for them, and whether the challenger passes (absolute floors, then paired
non-inferiority against the champion, then the external sites when `promote.external_gate`).

pipeline.promote runs it and acts on the verdict (aliases, tags, the card, reports/promotion.json,
rollback); this module decides, and touches the registry only to read a release and the ledger
only to record each look at test. bench/promotion_gate.py measures its error rates.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from pipeline import external_report, ledger, paths
from pipeline.config import Params
from pipeline.datasets import ImageSet, load_set, read_manifest
from pipeline.errors import UserError
from pipeline.served_metrics import decisions as decided
from pipeline.served_metrics import shares
from pipeline.serving.classifier import Classifier, download_release, load_classifier
from pipeline.serving.release import read_release
from pipeline.serving.rule import Served, serve
from pipeline.statistics import non_inferiority

EXTERNAL_SUMMARY = paths.EXTERNAL_REPORTS / "summary.json"  # the external stage's (after select)


class TooFewUnseen(UserError):
    """Fewer test images than `promote.min_test_images` are unseen by both models: a refusal that
    carries the held-out counts, so the promotion record shows how much overlap caused it."""

    def __init__(self, message: str, counts: dict[str, int]):
        super().__init__(message)
        self.counts = counts


@dataclass(frozen=True)
class Candidate:
    """A registered release as promotion sees it: the serving core, its hash and what it saw."""

    version: str
    classifier: Classifier
    model_sha256: str
    trained_on: frozenset[str]


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on the challenger, with the evidence written to reports/promotion.json."""

    promoted: bool
    reason: str
    challenger: str
    champion: str | None  # the version compared against (None: no champion yet)
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    evidence: dict[str, Any] = field(default_factory=dict)  # held-out images, interval, looks


def floors(metrics: dict[str, float], params: Params) -> tuple[bool, str]:
    """The absolute gates on the challenger's own test metrics (a NaN never passes)."""
    p = params.promote
    for name, floor in (
        ("macro_f1", p.min_macro_f1),
        ("malignant_sensitivity", p.min_malignant_sensitivity),
        ("coverage", p.min_coverage),
    ):
        if not metrics[name] >= floor:
            return False, f"test {name} {metrics[name]:.4f} < promote.min_{name} {floor:.4f}"
    return True, "passes the absolute gates"


def fetch(name: str, version: str) -> Candidate:
    """Download, check and load a registered release, or a UserError saying what is wrong."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            release = read_release(download_release(f"models:/{name}/{version}", tmp))
            classifier = load_classifier(release.folder)
            return Candidate(
                str(version),
                classifier,
                ledger.file_sha256(str(release.model_path)),
                release.trained_on(),
            )
    except Exception as exc:  # missing, truncated or not a release: one line, not a traceback
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(
            f"{name} version {version}: cannot be loaded ({type(exc).__name__}: {detail}); "
            "register a new version with `dvc repro` (select)"
        ) from None


def held_out(
    params: Params, seen_by: dict[str, frozenset[str]]
) -> tuple[ImageSet, pd.DataFrame, dict[str, int]]:
    """The test images whose whole group is unseen by every model, with their manifest rows
    (group, sha256) in the same order, and the counts for the record.

    `seen_by` maps each model (`challenger`, `champion`) to the image hashes it trained and
    validated on (its release's trained_on.txt). A group with any image either model saw is left
    out whole: its other images are duplicates or the same patient, so they are not new to that
    model either. TooFewUnseen when fewer than `promote.min_test_images` images remain.
    """
    test = load_set(paths.PREPARED, params.classes, split="test")
    frame = read_manifest(paths.MANIFEST)
    frame = frame[frame["split"] == "test"].reset_index(drop=True)
    seen = frozenset().union(*seen_by.values())
    tainted = set(frame.loc[frame["sha256"].isin(seen), "group"])
    keep = ~frame["group"].isin(tainted).to_numpy()
    counts = {"test_images": len(frame), "held_out_images": int(keep.sum()),
              "held_out_groups": int(frame.loc[keep, "group"].nunique()),
              "left_out_seen_in_training": int((~keep).sum()),
              "left_out_groups": len(tainted)}  # fmt: skip
    for name, hashes in seen_by.items():
        counts[f"test_images_in_{name}_training"] = int(frame["sha256"].isin(hashes).sum())
    if counts["held_out_images"] < params.promote.min_test_images:
        raise TooFewUnseen(
            f"only {counts['held_out_images']} of {len(frame)} test images are unseen by both "
            f"models (promote.min_test_images {params.promote.min_test_images}); the others are "
            "in a model's training data: add new test data before promoting",
            counts,
        )
    subset = ImageSet(
        test.images[keep],
        test.labels[keep],
        [p for p, k in zip(test.paths, keep, strict=True) if k],
    )
    return subset, frame.loc[keep].reset_index(drop=True), counts


def decisions(candidate: Candidate, test: ImageSet) -> Served:
    """What the release answers for the test images: its engine, then its own rule with the
    out-of-scope refusal (pipeline.serving.rule.serve), batch by batch as the service runs it."""
    classifier = candidate.classifier
    proba: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, len(test), 64):
        batch = np.stack([classifier.engine.prepare(i) for i in test.images[start : start + 64]])
        p, s = classifier.forward(batch)
        proba.append(p)
        if s is not None:
            scores.append(s)
    ood = np.concatenate(scores) if scores else None
    return serve(classifier.release.rule, np.concatenate(proba), ood)


def served_metrics(y: np.ndarray, served: Served, positive: int) -> dict[str, float]:
    """The gate's figures of served answers: macro-F1 of the class answer over the K classes (a
    refusal is a miss for its true class, never a class of its own: scikit-learn's `labels=`),
    malignant sensitivity of the referral flag (a refused malignant image is not flagged),
    coverage (the answered share) and the count refused."""
    k = served.probabilities.shape[1]
    found = served.refer[y == positive]
    f1 = f1_score(y, decided(served), labels=list(range(k)), average="macro", zero_division=0)
    return {
        "macro_f1": float(f1),
        "malignant_sensitivity": float(found.mean()) if found.size else float("nan"),
        "coverage": float(served.answered.mean()) if len(y) else float("nan"),
        "out_of_scope": int(served.refused.sum()),
    }


def judge(params: Params, ours: Candidate, theirs: Candidate | None, manifest: str) -> Decision:
    """Score both releases on the held-out test images and apply the gate."""
    classes = params.classes
    seen_by = {"challenger": ours.trained_on}
    if theirs is not None:
        seen_by["champion"] = theirs.trained_on
    test, rows, counts = held_out(params, seen_by)
    groups = rows["group"].to_numpy()
    positive = classes.index(params.positive_class)
    mine = decisions(ours, test)
    metrics = served_metrics(test.labels, mine, positive) | {"n_test": len(test)}
    split = ledger.split_fingerprint(rows["sha256"])
    _look(params, ours, split, manifest, metrics)
    ok, reason = floors(metrics, params)
    evidence: dict[str, Any] = dict(counts)
    evidence["intervals"] = shares(test.labels, mine, positive, groups)
    other, other_metrics = None, None
    if theirs is not None:
        other = decisions(theirs, test)
        other_metrics = served_metrics(test.labels, other, positive) | {"n_test": len(test)}
        _look(params, theirs, split, manifest, other_metrics)
        record = non_inferiority(
            test.labels, decided(mine), decided(other), groups, margin=params.promote.margin,
            metric="macro_f1", positive=positive, seed=params.seed,
        )  # fmt: skip
        evidence["non_inferiority"] = record.as_dict()
        if ok:
            ok, reason = record.accepted, f"non-inferiority {record.reason}"
    elif ok:
        reason = "no champion yet; the challenger passes the absolute gates"
    evidence["test_split_use"] = ledger.split_use(params.mlflow.experiment, split)
    evidence["external"] = external_report.promotion_figures(_external_summary(), ours.model_sha256)
    if ok and params.promote.external_gate:
        ok, reason = external_gate(evidence["external"], params, reason)
    theirs_version = theirs.version if theirs else None
    return Decision(ok, reason, ours.version, theirs_version, metrics, other_metrics, evidence)


def _external_summary() -> dict[str, Any]:
    if not EXTERNAL_SUMMARY.is_file():
        return {}
    return json.loads(EXTERNAL_SUMMARY.read_text())


def external_gate(sites: dict[str, dict] | None, params: Params, reason: str) -> tuple[bool, str]:
    """`promote.external_gate`: every external site clears the same two floors as test."""
    if not sites:
        return False, (
            "promote.external_gate is on but reports/external/summary.json has no figures for "
            "this version; name the sites in data.external and run `dvc repro`"
        )
    for name, figures in sites.items():
        values = {k: float("nan") if figures[k] is None else figures[k] for k in figures}
        passed, why = floors(values, params)
        if not passed:
            return False, f"external site {name}: {why.replace('test ', '', 1)}"
    return True, f"{reason}; every external site clears the floors"


def _look(params: Params, candidate: Candidate, split: str, manifest: str, metrics: dict) -> None:
    ledger.record_look(
        params.mlflow.experiment,
        split_sha256=split,
        manifest_sha256=manifest,
        model=f"{params.select.model_name}/{candidate.version}",
        model_sha256=candidate.model_sha256,
        purpose="promote",
        metrics={k: float(v) for k, v in metrics.items() if np.isfinite(v)},
    )
