"""Promotion: move the registry's `champion` alias to the `challenger`, only through the gate.

`python -m pipeline.promote` (or `make promote`) loads the released models
`<select.model_name>@<select.alias>` (the challenger) and `@<promote.alias>` (the champion, if
any) and scores both by their served answers (each release's own rule, out-of-scope refusal
included: pipeline.serving.rule.serve), on the test images of the current manifest that neither
model saw: a test group any of whose images is in either release's
`trained_on.txt` (its train and validation images, by content hash) is left out, and fewer than
`promote.min_test_images` remaining is a refusal. The alias moves only when the challenger
1. reaches `promote.min_macro_f1` (the class answer over the three classes, a refusal counted
   wrong and never a class of its own), `promote.min_malignant_sensitivity` (the referral flag,
   a refused malignant image not flagged) and `promote.min_coverage` (the answered share, its own
   check), and
2. is non-inferior to the champion: the one-sided 95% lower bound of the paired, group-level
   bootstrap difference in that macro-F1 (challenger - champion) lies above `-promote.margin`
   (pipeline.statistics.non_inferiority; bench/promotion_gate.py prints its error rates, with
   and without refusals).
The external stage's figures for the challenger (reports/external/summary.json, when it scored this
very model) are named in the record, and gate it only with `promote.external_gate`.
Every look at the test split is recorded in the test ledger (pipeline.ledger), and the decision,
with the interval and how often the split has been looked at, goes on the challenger version as
`promotion_*` tags and to `reports/promotion.json`; a refusal exits non-zero with one line saying
why. `python -m pipeline.promote rollback` (or `make rollback`) points the champion alias back at
the version it replaced, after checking that version still loads.
The gate itself (images, answers, verdict) is pipeline.promotion_gate's; this module acts on it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt

import mlflow

from pipeline import paths, registry, tracking
from pipeline.card_results import format_estimate
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.promotion_gate import Decision, TooFewUnseen, fetch, judge

DECISION_FILE = paths.PROMOTION
ACTIONS = ("promote", "rollback")
PROMOTION_HEADING = "## Promotion"


class PromotionRefused(UserError):
    """The challenger did not pass the gate; the message is the one-line reason."""


def promote(params: Params) -> Decision:
    """Move @champion to the @challenger version if it passes the gates on unseen test images.

    The verdict and its evidence are recorded either way; a refusal leaves @champion where it
    was."""
    name, p = params.select.model_name, params.promote
    challenger = registry.version_by_alias(name, params.select.alias)
    if challenger is None:
        raise UserError(f"{name}@{params.select.alias}: not found; run `dvc repro` (select) first")
    champion = registry.version_by_alias(name, p.alias)
    if champion is not None and champion.version == challenger.version:
        return _unchanged(name, str(challenger.version), p.alias)
    if challenger.tags.get("promotion_status") == "rolled_back":
        raise UserError(
            f"{name} version {challenger.version} was rolled back from @{p.alias}; "
            f"register a new @{params.select.alias} (dvc repro) before promoting again"
        )
    manifest = registry.file_sha256(paths.MANIFEST)
    try:
        ours = fetch(name, str(challenger.version))
        theirs = fetch(name, str(champion.version)) if champion else None
        decision = judge(params, ours, theirs, manifest)
    except UserError as exc:
        decision = Decision(
            False,
            str(exc),
            str(challenger.version),
            str(champion.version) if champion else None,
            {},
            None,
            dict(exc.counts) if isinstance(exc, TooFewUnseen) else {},
        )
    _record(decision, params, manifest)
    if not decision.promoted:
        raise PromotionRefused(
            f"promotion refused: {name} version {challenger.version}: {decision.reason}"
        )
    registry.set_alias(name, p.alias, str(challenger.version))
    registry.describe_version(name, str(challenger.version), _card(name, decision, params))
    if champion is not None:
        _note(name, str(champion.version), f"No longer `@{p.alias}` since {_now()}: version "
              f"{challenger.version} passed the gate against it.")  # fmt: skip
    print(f"promote: {name} version {challenger.version} is now @{p.alias} ({decision.reason})")
    return decision


def _card(name: str, decision: Decision, params: Params) -> str:
    """The version's model card (select's) with the promotion section regenerated."""
    card = registry.version_description(name, decision.challenger).split(PROMOTION_HEADING)[0]
    ni = decision.evidence.get("non_inferiority") or {}
    use = decision.evidence.get("test_split_use") or {}
    lines = [
        PROMOTION_HEADING,
        "",
        f"- Promoted to `@{params.promote.alias}` on {_now()}: {decision.reason}.",
        f"- Compared with version {decision.champion or 'none (first champion)'} on "
        f"{decision.evidence.get('held_out_images')} test images in "
        f"{decision.evidence.get('held_out_groups')} groups that neither model saw "
        f"({decision.evidence.get('left_out_seen_in_training')} images in "
        f"{decision.evidence.get('left_out_groups')} groups left out: a model trained on one of "
        "their images).",
        f"- Test metrics of the served answers: {_pairs(decision.challenger_metrics)}.",
        *(
            f"- {name.replace('_', ' ')} {format_estimate(found)} (exact 95% interval, duplicate "
            "groups counted once)"
            for name, found in (decision.evidence.get("intervals") or {}).items()
        ),
    ]
    if ni:
        lines.append(
            f"- Macro-F1 difference {ni['difference']:+.4f}, one-sided 95% lower bound "
            f"{ni['lower_bound']:+.4f}, margin {ni['margin']} (paired cluster bootstrap)."
        )
    if use:
        lines.append(
            f"- This test split has been looked at {use['looks']} times by {use['models']} models."
        )
    lines += _external_lines(decision.evidence.get("external"), params.promote.external_gate)
    return card.rstrip() + "\n\n" + "\n".join(lines) + "\n"


def _external_lines(sites: dict[str, dict] | None, gated: bool) -> list[str]:
    """The external figures of this version, when the external stage scored it."""
    if not sites:
        return ["- External validation: none for this version."]
    how = "gated (promote.external_gate)" if gated else "reported, not gated"
    return [
        f"- External validation ({how}), site {name}: {_pairs(_finite(figures))}."
        for name, figures in sites.items()
    ]


def _finite(figures: dict[str, float | None]) -> dict[str, float]:
    return {k: v for k, v in figures.items() if v is not None}


def _note(name: str, version: str, line: str) -> None:
    """Add a dated line to a version's card, under its promotion section: a card says where the
    aliases pointed at the moment it names, and its history grows with each move."""
    card = registry.version_description(name, version).rstrip()
    heading = "" if PROMOTION_HEADING in card else f"\n\n{PROMOTION_HEADING}\n"
    registry.describe_version(name, version, f"{card}{heading}\n- {line}\n")


def _pairs(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {_tag(v)}" for k, v in metrics.items())


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
    fetch(name, previous)  # never roll back onto a version that cannot serve
    registry.set_alias(name, alias, previous)
    when = _now()
    registry.tag_version(
        name,
        current.version,
        {"promotion_status": "rolled_back", "promotion_rolled_back_at": when},
    )
    _note(
        name,
        current.version,
        f"Rolled back on {when}: `@{alias}` moved back to version {previous}.",
    )
    _note(name, previous, f"`@{alias}` again since {when} (rollback of version {current.version}).")
    print(f"rollback: {name}@{alias} moved from version {current.version} back to {previous}")
    return previous


def run(params: Params, action: str = "promote") -> Decision | str:
    """Promote (the default) or roll back, after pointing MLflow at the project's store."""
    if action not in ACTIONS:
        raise UserError(f"action: expected one of {list(ACTIONS)}, got {action!r}")
    tracking.check_store(tracking.tracking_uri())  # never a new empty store in a broken one's place
    tracking.setup(params.mlflow.experiment)
    with tracking.promotion_lock():
        return promote(params) if action == "promote" else rollback(params)


def _unchanged(name: str, version: str, alias: str) -> Decision:
    reason = f"version {version} is already @{alias}; nothing to do"
    write_json(
        DECISION_FILE, {"model_name": name, "promotion_status": "unchanged", "reason": reason}
    )
    print(f"promote: {name} {reason}")
    return Decision(False, reason, version, version, {}, None)


def _record(decision: Decision, params: Params, manifest: str) -> None:
    """Tags on the challenger version (when it exists) and reports/promotion.json."""
    tags = {
        "promotion_status": "promoted" if decision.promoted else "refused",
        "promotion_reason": decision.reason[:5000],
        "promotion_compared_to": decision.champion or "none",
        "promotion_time": _now(),
        "promotion_manifest_sha256": manifest,
        "promotion_gate": (
            f"min_macro_f1={params.promote.min_macro_f1} "
            f"min_malignant_sensitivity={params.promote.min_malignant_sensitivity} "
            f"min_coverage={params.promote.min_coverage} "
            f"margin={params.promote.margin} min_test_images={params.promote.min_test_images}"
        ),
        **{f"promotion_test_{k}": _tag(v) for k, v in decision.challenger_metrics.items()},
        **{
            f"promotion_champion_test_{k}": _tag(v)
            for k, v in (decision.champion_metrics or {}).items()
        },
    }
    for key in ("held_out_images", "left_out_seen_in_training", "left_out_groups"):
        if key in decision.evidence:
            tags[f"promotion_{key}"] = str(decision.evidence[key])
    ni = decision.evidence.get("non_inferiority") or {}
    if ni.get("lower_bound") is not None:
        tags["promotion_macro_f1_difference_lower_bound"] = _tag(ni["lower_bound"])
    use = decision.evidence.get("test_split_use") or {}
    if use:
        tags["promotion_test_split_looks"] = f"{use['looks']} looks by {use['models']} models"
    for site, figures in (decision.evidence.get("external") or {}).items():
        for key in ("macro_f1", "malignant_sensitivity"):
            if figures.get(key) is not None:
                tags[f"promotion_external_{site}_{key}"] = _tag(figures[key])
    if decision.promoted:
        tags["promotion_previous_champion"] = decision.champion or "none"
    # a version that vanished keeps its record in reports/promotion.json
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        registry.tag_version(params.select.model_name, decision.challenger, tags)
    write_json(DECISION_FILE, {"model_name": params.select.model_name, **_plain(decision), **tags})


def _plain(decision: Decision) -> dict:
    return {
        "promoted": decision.promoted,
        "challenger_version": decision.challenger,
        "champion_version": decision.champion,
        "challenger_test": decision.challenger_metrics,
        "champion_test": decision.champion_metrics,
        "evidence": decision.evidence,
    }


def _tag(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """`make promote` / `make rollback`; a user error is one line and exit code 2."""

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", nargs="?", default="promote", choices=ACTIONS)

    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
