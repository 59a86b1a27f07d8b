"""Stage `select`: choose the better model on validation, release it with its decision rule.

Three steps. Choose: the higher validation `select.metric` wins (ties: malignant sensitivity);
the test split is never used to choose. Release: `models/selected/` becomes the released model,
the winner's Keras file plus release.json with the decision rule evaluate fitted on validation
(`reports/evaluate/models/<arch>/rule.json`: referral threshold, calibration temperature when
evaluate kept it, OOD threshold), copied as it is, and its provenance, and the same model as
model.onnx, released only when ONNX Runtime answers the validation images as Keras does
(pipeline.export; with `select.int8`, also its INT8 quantization: pipeline.quantize). Register: the
release is logged to the winner's MLflow run as the serving pyfunc (pipeline.serving.pyfunc) and,
for a run of the committed pipeline with `select.register: true`, registered as
`select.model_name` with alias `select.alias`. Inside `dvc exp run` nothing is registered and no
alias moves: the experiment's release is logged and tagged with the experiment's name, so
`mlflow ui` compares it, and `@challenger` stays where it was.
Writes `reports/selection.json` and `reports/model_card.md` (nothing in them changes from run to
run but the results: the version number and the test split's look count are in the copy of the
card attached to the registered version) and `models/selected/`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from pipeline import export, ledger, paths, quantize, registry, tracking
from pipeline.cli import stage_main
from pipeline.config import Params, uses_demo_data
from pipeline.datasets import load_set, read_manifest
from pipeline.errors import UserError
from pipeline.export import PARITY_TOLERANCE
from pipeline.files import staged_dir, write_json, write_text
from pipeline.model_card import render_model_card
from pipeline.serving import predlog, pyfunc
from pipeline.serving.classifier import load_classifier
from pipeline.serving.ood import OOD_FILE
from pipeline.serving.release import INT8_FILE, ONNX_FILE, record_onnx, write_release
from pipeline.serving.rule import DecisionRule
from pipeline.synthetic import case_rng, render_case

EVALUATE_DIR = paths.EVALUATE_REPORTS
RULE_FILE = "rule.json"  # pipeline.evaluate.RULE_FILE: select does not import the evaluate stage
SELECTION_FILE = paths.SELECTION
MODEL_CARD_FILE = paths.MODEL_CARD
SELECTED_DIR = paths.SELECTED
TIE_BREAK = "malignant_sensitivity"
REGISTER_ATTEMPTS = 3


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


def read_rule(arch: str, classes: tuple[str, ...]) -> DecisionRule:
    """The rule evaluate fitted for `arch` on validation
    (`reports/evaluate/models/<arch>/rule.json`), released as written: nothing here rebuilds it
    from metric fields."""
    path = paths.evaluate_dir(arch) / RULE_FILE
    try:
        rule = DecisionRule.from_dict(_read_json(path))
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"{path}: not a decision rule ({exc}); rerun evaluate (dvc repro)"
        ) from None
    if rule.classes != tuple(classes):
        raise UserError(
            f"{path}: the rule's classes {list(rule.classes)} are not params' {list(classes)}; "
            "rerun evaluate (dvc repro)"
        )
    return rule


def run(params: Params) -> dict:
    """Choose the winner on validation metrics, write the release and the model card, and register
    it.

    Test figures play no part in the choice: they are reported once, after it."""
    archs = tuple(params.train.backbones)
    metrics = {arch: _read_json(paths.evaluate_dir(arch) / "metrics.json") for arch in archs}
    winner, reason = choose(metrics, params.select.metric)
    validation = {a: _value(metrics[a]["val"].get(params.select.metric)) for a in archs}
    runner_up = max((a for a in archs if a != winner), key=validation.__getitem__, default=None)
    run_id = _read_json(paths.model_dir(winner) / "run.json")["run_id"]
    manifest = registry.file_sha256(paths.MANIFEST)
    rule = read_rule(winner, params.classes)
    experiment = tracking.experiment_name()
    selection: dict[str, Any] = {
        "winner": winner,
        "metric": params.select.metric,
        "reason": reason,
        "validation": validation,
        "paired_comparison": _paired(winner, runner_up),
        "rule": rule.to_dict(),
        "manifest_sha256": manifest,
        "synthetic_data": uses_demo_data(params),
        "model_name": params.select.model_name,
        "alias": params.select.alias if params.select.register and not experiment else None,
    }
    tracking.setup(params.mlflow.experiment)
    provenance = _release(params, winner, rule, run_id, selection, experiment)
    summary = _read_json(paths.DATA_REPORTS / "summary.json", required=False)

    def card(result: dict, version: str | None) -> str:
        return render_model_card(
            winner, result, summary, selection, selection["synthetic_data"],
            model_name=params.select.model_name, version=version,
            card=dataclasses.asdict(params.card),
        )  # fmt: skip

    registered = card(_test_use_counted(metrics[winner], params), provenance["version"])
    committed = card(_test_use_uncounted(metrics[winner]), None)
    write_json(SELECTION_FILE, selection)
    write_text(MODEL_CARD_FILE, committed)
    client = mlflow.MlflowClient()
    client.log_text(run_id, registered, "model_card.md")
    if provenance["version"] is not None:
        client.update_model_version(params.select.model_name, provenance["version"], registered)
    choice = f"{winner} ({reason}; {selection['paired_comparison']['note']})"
    _print_outcome(params, choice, provenance, experiment, rule)
    return selection | {"version": provenance["version"]}


def _release(
    params: Params,
    winner: str,
    rule: DecisionRule,
    run_id: str,
    selection: dict,
    experiment: str | None,
) -> dict[str, Any]:
    """Build models/selected/, log it as the winner's pyfunc and (outside experiments) register
    it; return its provenance. The version is written into the release before registering, and
    checked against the one the registry assigns (a deleted version shifts it: then again)."""
    name = params.select.model_name
    register = params.select.register and experiment is None
    expected = registry.next_version(name) if register else None
    for _ in range(REGISTER_ATTEMPTS):
        provenance = _provenance(params, winner, run_id, selection, expected, experiment)
        with staged_dir(SELECTED_DIR) as out:
            write_release(
                out, paths.model_dir(winner) / "model.keras", rule, provenance,
                ood_file=_ood_file(winner, rule), trained_on=_seen(),
            )  # fmt: skip
            _finish_release(out, params)
        with mlflow.start_run(run_id=run_id):
            info = pyfunc.log_release(
                SELECTED_DIR,
                _example_scan(params),
                name="release",
                tags=_tags(provenance, selection),
            )
        if not register:
            return provenance
        got = registry.register(
            info.model_uri, name, params.select.alias, _tags(provenance, selection)
        )
        if got == expected:
            registry.describe_model(name, _description(params))
            return provenance
        registry.delete_version(name, got)
        expected = str(int(got) + 1)
    raise UserError(f"{name}: the registry kept assigning other version numbers; rerun select")


def _test_use_counted(result: dict, params: Params) -> dict:
    """The winner's results with the test ledger's count as of now, for the registry's card."""
    use = (result.get("test") or {}).get("test_use") or {}
    if not use.get("split_sha256"):
        return result
    counted = use | ledger.split_use(params.mlflow.experiment, use["split_sha256"])
    return result | {"test": result["test"] | {"test_use": counted}}


def _test_use_uncounted(result: dict) -> dict:
    """The winner's results without the ledger's count, for the committed card: the count grows
    with every look, so a rerun on the same data would change a committed file (it is in the
    registry's copy of the card, in MLflow and on the terminal)."""
    use = (result.get("test") or {}).get("test_use")
    if not use:
        return result
    kept = {k: v for k, v in use.items() if k not in ("looks", "models")}
    return result | {"test": result["test"] | {"test_use": kept}}


def _seen() -> list[str]:
    """Hashes of the train and validation images: what the model was fitted and chosen on."""
    frame = read_manifest(paths.MANIFEST)
    return list(frame.loc[frame["split"].isin(["train", "val"]), "sha256"])


def _finish_release(folder: Path, params: Params) -> None:
    """model.onnx, checked against Keras on the validation split (and INT8 with `select.int8`),
    then the monitor's reference: the validation images answered by the engine the release
    serves, as prediction-log rows (sizes before prepare fitted them, from the manifest)."""
    val = load_set(paths.PREPARED, params.classes, split="val")
    rows = read_manifest(paths.MANIFEST)
    rows = rows[rows["split"] == "val"]
    aligned = len(rows) == len(val)
    started = time.perf_counter()
    onnx: dict[str, Any] = {"served": ONNX_FILE, "int8": None}
    onnx["parity"] = export.add_onnx(folder, load_classifier(folder), val.images, PARITY_TOLERANCE)
    print(
        f"select: {ONNX_FILE} answers the {len(val)} validation images as Keras (max |diff| "
        f"{onnx['parity']['max_abs_probability_difference']:.1e}); "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    if params.select.int8:
        started = time.perf_counter()
        groups = rows["group"].to_numpy() if "group" in rows and aligned else None
        train = load_set(paths.PREPARED, params.classes, split="train")
        base = load_classifier(folder, engine="onnx")
        int8 = quantize.add_int8(
            folder, base, train.images, val.images, val.labels, groups,
            params.select.int8_margin, params.seed,
        )  # fmt: skip
        onnx["int8"] = int8
        onnx["served"] = INT8_FILE if int8["served"] else ONNX_FILE
        agreement = int8["agreement"]
        print(
            f"select: INT8 {'served' if int8['served'] else 'not served'}: answers as the float "
            f"model on {agreement['same']}/{int8['images']} validation images "
            f"({int8['differing_on_a_threshold']} of the others on a threshold); {int8['reason']}; "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
    record_onnx(folder, onnx)
    if {"width", "height"} <= set(rows.columns) and aligned:
        sizes = list(zip(rows["width"].astype(int), rows["height"].astype(int), strict=True))
    else:
        sizes = [(image.shape[1], image.shape[0]) for image in val.images]
    classifier = load_classifier(folder, engine="auto")
    predlog.write_reference(
        folder / predlog.REFERENCE_FILE, predlog.replay(classifier, val.images, sizes)
    )


def _ood_file(winner: str, rule: DecisionRule) -> Path | None:
    """The OOD statistics evaluate fitted for the winner, when its rule has an OOD threshold."""
    if rule.ood_threshold is None:
        return None
    path = paths.evaluate_dir(winner) / OOD_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found; rerun evaluate (dvc repro)")
    return path


def _provenance(
    params: Params,
    winner: str,
    run_id: str,
    selection: dict,
    version: str | None,
    experiment: str | None,
) -> dict[str, Any]:
    synthetic = selection["synthetic_data"]
    return {
        "model_name": params.select.model_name,
        "version": version,
        "arch": winner,
        "run_id": run_id,
        "manifest_sha256": selection["manifest_sha256"],
        "git_commit": tracking.git_commit(),
        "data_kind": tracking.data_kind(synthetic),
        "synthetic_data": synthetic,
        "dvc_experiment": experiment,
    }


def _tags(provenance: dict[str, Any], selection: dict) -> dict[str, str]:
    """A short set of version tags describing it (an answer never depends on them)."""
    winner = selection["winner"]
    tags = {
        "arch": winner,
        "data_kind": provenance["data_kind"],
        "git_commit": provenance["git_commit"],
        "manifest_sha256": provenance["manifest_sha256"],
        "val_" + selection["metric"]: f"{selection['validation'][winner]:.4f}",
    }
    if provenance["dvc_experiment"]:
        tags["dvc_experiment"] = provenance["dvc_experiment"]
    return tags


def _description(params: Params) -> str:
    return (
        "Breast-ultrasound classifier (benign / malignant / normal), released by the `select` "
        "stage with its decision rule inside (release.json). Research use only; not a medical "
        f"device. Aliases: @{params.select.alias} (latest selected), @{params.promote.alias} "
        "(passed the promotion gate)."
    )


def _example_scan(params: Params) -> np.ndarray:
    """The pyfunc's input example: a synthetic scan of the training size, never a patient's."""
    size = params.prepare.image_size
    return render_case("benign", case_rng(params.seed, "benign", 0), size)[0]


def _print_outcome(
    params: Params, choice: str, provenance: dict, experiment: str | None, rule: DecisionRule
) -> None:
    name, alias = params.select.model_name, params.select.alias
    if provenance["version"] is not None:
        where = f"registered {name} version {provenance['version']} as @{alias}"
    elif experiment:
        where = f"experiment {experiment}: logged, not registered (aliases unchanged)"
    else:
        where = "not registered (select.register: false)"
    print(f"select: {choice}; {where}\nselect: decision rule: {rule.describe()}")


def _paired(winner: str, runner_up: str | None) -> dict[str, Any]:
    """Whether the validation difference between the winner and the runner-up is distinguishable
    from noise (evaluate's paired cluster bootstrap of that pair), so the record never oversells
    a point-value win."""
    pairs = _read_json(EVALUATE_DIR / "comparison.json", required=False).get("pairs") or []
    pair: dict[str, Any] = next((p for p in pairs if {p["a"], p["b"]} == {winner, runner_up}), {})
    f1 = (pair.get("val") or {}).get("macro_f1") or {}
    if "distinguishable" not in f1:
        return {"macro_f1": None, "note": "no paired comparison recorded (comparison.json)"}
    verdict = "distinguishable from noise" if f1["distinguishable"] else "not distinguishable"
    return {
        "macro_f1": f1 | {"a": pair["a"], "b": pair["b"]},
        "note": f"validation macro-F1 difference from {runner_up} {verdict}",
    }


def _value(entry: dict | float | None) -> float:
    if isinstance(entry, dict):
        entry = entry.get("value")
    return float("-inf") if entry is None else float(entry)


def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise UserError(f"{path}: not found; run the stages before select (dvc repro)")
        return {}
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    """The `select` stage's command line (dvc.yaml); a user error is one line and exit code 2."""
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
