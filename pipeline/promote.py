"""Promotion: move the registry's `champion` alias to the `challenger`, only through the gates.

`python -m pipeline.promote` (or `make promote`) loads `<select.model_name>@<select.alias>` (the
challenger) and `@<promote.alias>` (the champion, if any), evaluates both on the test split of
the current manifest (`data/prepared/`), and moves the champion alias only when the challenger
1. reaches `promote.min_macro_f1` and `promote.min_malignant_sensitivity` (absolute floors), and
2. is not more than `promote.max_regression` below the champion on either metric.
Test metrics are frozen report numbers for selection (select chooses on validation), so using
them here as a gate does not feed back into any choice among candidates.

The decision is written on the challenger version as `promotion_*` tags and to
`reports/promotion.json`; a refusal exits non-zero with one line saying why.
`python -m pipeline.promote rollback` (or `make rollback`) points the champion alias back at the
version it replaced.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from sklearn.metrics import f1_score

from pipeline import registry, tracking
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.datasets import PREPARED_DIR, load_set
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.serving.classifier import Classifier, load_classifier

DECISION_FILE = Path("reports/promotion.json")
GATED = ("macro_f1", "malignant_sensitivity")
ACTIONS = ("promote", "rollback")


class PromotionRefused(UserError):
    """The challenger did not pass the gates; the message is the one-line reason."""


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    challenger: str
    champion: str | None  # the version compared against (None: no champion yet)
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None


def decide(
    challenger: dict[str, float], champion: dict[str, float] | None, params: Params
) -> tuple[bool, str]:
    """Apply the gates to test metrics; return (promote?, reason). Pure, so tests pin the rules."""
    p = params.promote
    floors = {"macro_f1": p.min_macro_f1, "malignant_sensitivity": p.min_malignant_sensitivity}
    for name, floor in floors.items():
        if not challenger[name] >= floor:  # also refuses a NaN
            return False, f"test {name} {challenger[name]:.4f} < promote.min_{name} {floor:.4f}"
    if champion is None:
        return True, "no champion yet; the challenger passes the absolute gates"
    for name in GATED:
        if not challenger[name] >= champion[name] - p.max_regression:
            return False, (
                f"test {name} {challenger[name]:.4f} regresses more than "
                f"promote.max_regression {p.max_regression:.4f} below the champion's "
                f"{champion[name]:.4f}"
            )
    return True, "passes the absolute gates and does not regress against the champion"


def evaluate_on_test(name: str, version: str, params: Params) -> dict[str, float | int]:
    """Macro-F1 and malignant sensitivity of a registered release on the test split, decided by
    the release's own rule (the answer it would serve), through the serving core."""
    test = load_set(PREPARED_DIR, params.classes, split="test")
    if len(test) == 0:
        raise UserError(f"{PREPARED_DIR / 'manifest.csv'}: the test split is empty")
    classifier = load_release(name, version)
    if classifier.classes != params.classes:
        raise UserError(
            f"{name} version {version}: model classes {list(classifier.classes)} differ from "
            f"params classes {list(params.classes)}"
        )
    answers = classifier.predict_many(list(test.images))
    decided = np.array([params.classes.index(a["class"]) for a in answers])
    positive = params.classes.index("malignant")
    found = (decided == positive)[test.labels == positive]
    return {
        "macro_f1": float(f1_score(test.labels, decided, average="macro", zero_division=0)),
        "malignant_sensitivity": float(found.mean()) if len(found) else 0.0,
        "n_test": len(test),
    }


def load_release(name: str, version: str) -> Classifier:
    """The registered release `name` version `version`, or a UserError saying what is wrong."""
    try:
        return load_classifier(f"models:/{name}/{version}", tracking_uri=tracking.tracking_uri())
    except Exception as exc:  # missing, truncated or not a release: one line, not a traceback
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(
            f"{name} version {version}: cannot be loaded ({type(exc).__name__}: {detail[:200]}); "
            "register a new version with `dvc repro` (select)"
        ) from None


def promote(params: Params) -> Decision:
    name, p = params.select.model_name, params.promote
    challenger = registry.version_by_alias(name, params.select.alias)
    if challenger is None:
        raise UserError(f"{name}@{params.select.alias}: not found; run `dvc repro` (select) first")
    champion = registry.version_by_alias(name, p.alias)
    if champion is not None and champion.version == challenger.version:
        reason = f"version {challenger.version} is already @{p.alias}; nothing to do"
        write_json(
            DECISION_FILE, {"model_name": name, "promotion_status": "unchanged", "reason": reason}
        )
        print(f"promote: {name} {reason}")
        return Decision(False, reason, str(challenger.version), str(champion.version), {}, None)
    if challenger.tags.get("promotion_status") == "rolled_back":
        raise UserError(
            f"{name} version {challenger.version} was rolled back from @{p.alias}; "
            f"register a new @{params.select.alias} (dvc repro) before promoting again"
        )
    manifest = registry.file_sha256(PREPARED_DIR / "manifest.csv")
    trained_on = challenger.tags.get("manifest_sha256")
    if trained_on and trained_on != manifest:
        raise UserError(
            f"{name} version {challenger.version} was selected on another data manifest; "
            "run `dvc pull` / `dvc repro` so its test split is the one it was held out from"
        )
    try:
        ours = evaluate_on_test(name, challenger.version, params)
        theirs = evaluate_on_test(name, champion.version, params) if champion else None
    except UserError as exc:
        _record_refusal(params, str(challenger.version), str(exc), manifest)
        raise PromotionRefused(f"promotion refused: {exc}") from None
    ok, reason = decide(ours, theirs, params)
    decision = Decision(
        ok, reason, str(challenger.version), champion and str(champion.version), ours, theirs
    )
    _record(decision, params, manifest)
    if not ok:
        raise PromotionRefused(f"promotion refused: {name} version {challenger.version}: {reason}")
    registry.set_alias(name, p.alias, challenger.version)
    print(f"promote: {name} version {challenger.version} is now @{p.alias} ({reason})")
    return decision


def rollback(params: Params) -> str:
    """Point the champion alias back at the version the current champion replaced."""
    name, alias = params.select.model_name, params.promote.alias
    current = registry.version_by_alias(name, alias)
    if current is None:
        raise UserError(f"{name}@{alias}: not found; nothing to roll back")
    previous = current.tags.get("promotion_previous_champion", "none")
    if previous == "none":
        raise UserError(
            f"{name} version {current.version} replaced no champion; nothing to roll back to"
        )
    load_release(name, previous)  # never roll back onto a version that cannot serve
    registry.set_alias(name, alias, previous)
    registry.tag_version(
        name,
        current.version,
        {"promotion_status": "rolled_back", "promotion_rolled_back_at": _now()},
    )
    print(f"rollback: {name}@{alias} moved from version {current.version} back to {previous}")
    return previous


def run(params: Params, action: str = "promote") -> Decision | str:
    if action not in ACTIONS:
        raise UserError(f"action: expected one of {list(ACTIONS)}, got {action!r}")
    tracking.setup(params.mlflow.experiment)
    return promote(params) if action == "promote" else rollback(params)


def _record_refusal(params: Params, version: str, reason: str, manifest: str) -> None:
    """A refusal before any metric (a version that does not load) is recorded like any other."""
    decision = Decision(False, reason, version, None, {}, None)
    try:
        _record(decision, params, manifest)
    except mlflow.exceptions.MlflowException:
        write_json(DECISION_FILE, {"model_name": params.select.model_name, **_plain(decision)})


def _record(decision: Decision, params: Params, manifest: str) -> None:
    tags = {
        "promotion_status": "promoted" if decision.promoted else "refused",
        "promotion_reason": decision.reason,
        "promotion_compared_to": decision.champion or "none",
        "promotion_time": _now(),
        "promotion_manifest_sha256": manifest,
        "promotion_gates": (
            f"min_macro_f1={params.promote.min_macro_f1} "
            f"min_malignant_sensitivity={params.promote.min_malignant_sensitivity} "
            f"max_regression={params.promote.max_regression}"
        ),
        **{f"promotion_test_{k}": _tag(v) for k, v in decision.challenger_metrics.items()},
        **{
            f"promotion_champion_test_{k}": _tag(v)
            for k, v in (decision.champion_metrics or {}).items()
        },
    }
    if decision.promoted:
        tags["promotion_previous_champion"] = decision.champion or "none"
    registry.tag_version(params.select.model_name, decision.challenger, tags)
    write_json(DECISION_FILE, {"model_name": params.select.model_name, **_plain(decision), **tags})


def _plain(decision: Decision) -> dict:
    return {
        "promoted": decision.promoted,
        "challenger_version": decision.challenger,
        "champion_version": decision.champion,
        "challenger_test": decision.challenger_metrics,
        "champion_test": decision.champion_metrics,
    }


def _tag(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", nargs="?", default="promote", choices=ACTIONS)

    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
