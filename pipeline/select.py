"""Stage `select`: pick the better model on validation metrics and register it in MLflow.

The test split stays an unbiased report: it is never used to choose. The winner is registered as
`select.model_name` with alias `select.alias` (default `challenger`); moving `champion` is a
separate, gated step (promotion). Writes `reports/selection.json`, `reports/model_card.md` and
`models/selected/` (the winning model and its registration record).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow

from pipeline import registry, tracking
from pipeline.cli import stage_main
from pipeline.config import ARCHS, Params, uses_demo_data
from pipeline.datasets import PREPARED_DIR
from pipeline.errors import UserError
from pipeline.files import staged_dir, write_json, write_text
from pipeline.model_card import render_model_card

EVALUATE_DIR = Path("reports/evaluate")
SELECTION_FILE = Path("reports/selection.json")
MODEL_CARD_FILE = Path("reports/model_card.md")
SELECTED_DIR = Path("models/selected")
TIE_BREAK = "malignant_sensitivity"


def choose(metrics: dict[str, dict], metric: str) -> tuple[str, str]:
    """(winning arch, reason) by the validation `metric`; ties go to malignant sensitivity."""

    def key(arch: str) -> tuple[float, float]:
        val = metrics[arch]["val"]
        if metric not in val:
            known = sorted(k for k, v in val.items() if isinstance(v, dict) and "value" in v)
            raise UserError(
                f"select.metric: {metric!r} is not a validation metric; use one of {known}"
            )
        return (_value(val[metric]), _value(val.get(TIE_BREAK)))

    ranked = sorted(metrics, key=key, reverse=True)
    winner, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
    if runner_up is None:
        return winner, f"only {winner} was evaluated"
    w, r = key(winner), key(runner_up)
    if w[0] > r[0]:
        reason = f"higher validation {metric} ({w[0]:.4f} vs {r[0]:.4f} for {runner_up})"
    elif w[1] > r[1]:
        reason = (
            f"validation {metric} tied at {w[0]:.4f}; "
            f"higher validation {TIE_BREAK} ({w[1]:.4f} vs {r[1]:.4f})"
        )
    else:
        reason = f"validation {metric} and {TIE_BREAK} tied; first in params order"
    return winner, reason


def _value(entry: dict | float | None) -> float:
    if isinstance(entry, dict):
        entry = entry.get("value")
    return float("-inf") if entry is None else float(entry)


def run(params: Params) -> dict:
    metrics = {arch: _read_json(EVALUATE_DIR / arch / "metrics.json") for arch in ARCHS}
    winner, reason = choose(metrics, params.select.metric)
    run_info = _read_json(Path("models") / winner / "run.json")
    synthetic = uses_demo_data(params)
    summary = _read_json(Path("reports/data/summary.json"), required=False)
    manifest_hash = registry.file_sha256(PREPARED_DIR / "manifest.csv")
    threshold = (metrics[winner]["val"].get("operating_point") or {}).get("threshold")
    selection = {
        "winner": winner,
        "metric": params.select.metric,
        "reason": reason,
        "validation": {a: _value(metrics[a]["val"].get(params.select.metric)) for a in ARCHS},
        "test_reported_not_used": {
            a: _value(metrics[a]["test"].get(params.select.metric)) for a in ARCHS
        },
        "run_id": run_info["run_id"],
        "manifest_sha256": manifest_hash,
        "synthetic_data": synthetic,
        "operating_point_threshold": threshold,
    }
    card = render_model_card(winner, metrics[winner], summary, selection, synthetic)

    tracking.setup(params.mlflow.experiment)
    tags = {
        "arch": winner,
        "git_commit": tracking.git_commit(),
        "manifest_sha256": manifest_hash,
        "data_kind": "synthetic-demo" if synthetic else "user-data",
        "selection_metric": params.select.metric,
        "selection_reason": reason,
        **_metric_tags(metrics[winner]),
    }
    if threshold is not None:
        tags["operating_point_threshold"] = f"{threshold:.6f}"
    version = registry.register(
        run_info["run_id"], params.select.model_name, params.select.alias, tags
    )
    selection.update(
        model_name=params.select.model_name, version=version, alias=params.select.alias
    )
    client = mlflow.MlflowClient()
    client.log_text(run_info["run_id"], card, "model_card.md")
    client.log_dict(run_info["run_id"], selection, "selection.json")
    client.update_model_version(params.select.model_name, version, description=card)

    write_json(SELECTION_FILE, selection)
    write_text(MODEL_CARD_FILE, card)
    with staged_dir(SELECTED_DIR) as out:
        shutil.copyfile(Path("models") / winner / "model.keras", out / "model.keras")
        shutil.copyfile(Path("models") / winner / "classes.json", out / "classes.json")
        write_json(out / "registration.json", selection)
    print(
        f"select: {winner} ({reason}); registered {params.select.model_name} "
        f"version {version} as @{params.select.alias}"
    )
    return selection


def _metric_tags(metrics: dict) -> dict[str, str]:
    tags = {}
    for split in ("val", "test"):
        for name, entry in metrics[split].items():
            if isinstance(entry, dict) and "value" in entry and entry["value"] is not None:
                tags[f"{split}_{name}"] = f"{entry['value']:.4f}"
                if entry.get("ci_low") is not None:
                    tags[f"{split}_{name}_ci95"] = (
                        f"[{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"
                    )
    return tags


def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise UserError(f"{path}: not found; run the stages before select (dvc repro)")
        return {}
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
