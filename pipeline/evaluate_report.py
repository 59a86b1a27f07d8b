"""The evaluate stage's reports: figures, CSV tables and markdown drawn from its results.

pipeline.evaluate computes (the rule, the served answers, every figure in `<arch>/metrics.json`);
this module only draws and records them: the predictions tables, the confusion figures, the ROC
and reliability plots the DVC templates read, the test images with their Grad-CAM maps,
`comparison.md` and `test.md`, the short DVC metrics file, the validation figures on the training
runs in MLflow and the terminal summary. Every picture and table shows the served answers: the
class answer with `out_of_scope` for a refusal, the referral flag, the served probabilities.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline import cam, metrics, paths, plots
from pipeline.calibration import reliability_curve
from pipeline.card_results import LABELS, format_estimate, refusal_rows
from pipeline.config import Params
from pipeline.datasets import ImageSet
from pipeline.served_metrics import decisions
from pipeline.serving.rule import OUT_OF_SCOPE, Served
from pipeline.tracking import HEADLINE_COLUMNS

SPLITS = ("val", "test")


def headline(results: dict[str, dict]) -> dict[str, dict]:
    """The DVC metrics file: four validation numbers per model, what `dvc exp show` lays out.

    Keys, all on validation: `f1` macro-F1; for malignant at the chosen operating point `sens`
    sensitivity and `spec` specificity; `auc` its one-vs-rest AUC. Short on purpose: DVC makes
    `<arch>.<key>` a column of `dvc exp show`, whose width is set by these names (it must fit in
    200 columns with `--only-changed`; the long names took 492). Everything else (intervals,
    lesions-only AUC, threshold, OOD, test) is in `<arch>/metrics.json`.
    """
    return {arch: headline_of(result["val"]) for arch, result in results.items()}


def headline_of(val: dict) -> dict[str, float | None]:
    """One model's four headline numbers (see `headline`) from its validation figures."""
    op = val["operating_point"]
    return {
        "f1": val["macro_f1"]["value"],
        "sens": (op.get("sensitivity") or {}).get("value"),
        "spec": (op.get("specificity") or {}).get("value"),
        "auc": (op.get("auc") or {}).get("value"),
    }


def view_columns(val: dict) -> dict[str, float]:
    """The headline numbers the MLflow runs view shows under their short names (`val_<key>`,
    tracking.HEADLINE_COLUMNS): the flat names of the flag's figures are too long for a column."""
    short = {f"val_{key}": value for key, value in headline_of(val).items()}
    return {k: v for k, v in short.items() if k in HEADLINE_COLUMNS and v is not None}


def write_reports(
    out: Path,
    model: keras.Model,
    test_features: np.ndarray,
    data: dict[str, ImageSet],
    raw: dict[str, np.ndarray],
    served: dict[str, Served],
    result: dict,
    params: Params,
    arch: str = "model",
) -> None:
    """Predictions, plot data and figures of one model into its (staged) output folder.

    `raw` are the model's probabilities per split, `served` the rule's answers. Validation goes
    where development looks (`figures/`, and the CSVs `dvc plots` reads, one per backbone in
    each of reports/evaluate/plots/<plot>/); test goes to `test/`, which nothing in the
    development loop shows.
    """
    classes = params.classes
    for split in SPLITS:
        table = predictions_table(data[split].paths, data[split].labels, served[split], classes)
        plots.save_csv(table, out / f"predictions_{split}.csv")
    test = out / "test"

    def val_csv(plot: str) -> Path:
        return paths.evaluate_plot(plot, arch)

    def test_csv(plot: str) -> Path:
        return test / f"{plot}.csv"

    for split, csv_at, png_dir in (("val", val_csv, out / "figures"), ("test", test_csv, test)):
        _split_figures(
            csv_at, png_dir, split, data[split].labels, raw[split], served[split],
            result=result, params=params, arch=arch,
        )  # fmt: skip
    _test_images(test, model, test_features, data["test"], served["test"], params, arch)


def predictions_table(
    paths: list[str], y: np.ndarray, served: Served, classes: tuple[str, ...]
) -> pd.DataFrame:
    """`path,label,predicted,refer,p_<class>...` per image: the served answer (`out_of_scope`
    for a refusal, `refer` empty there) and the served probabilities, rounded to 6 decimals."""
    table = plots.predictions_table(paths, y, served.probabilities, classes)
    table["predicted"] = _answer_names(served, classes)
    refer = pd.Series(served.refer, dtype="boolean").mask(served.refused)
    table.insert(3, "refer", refer)
    return table


def _answer_names(served: Served, classes: tuple[str, ...]) -> np.ndarray:
    return np.asarray([*classes, OUT_OF_SCOPE], dtype=object)[decisions(served)]


def _split_figures(
    csv_at: Callable[[str], Path], png_dir: Path, split: str, y: np.ndarray, raw: np.ndarray,
    served: Served, *, result: dict, params: Params, arch: str,
) -> None:  # fmt: skip
    """Confusion (with the refusals as a last column), ROC and the reliability of p(malignant)
    of one split's served answers: PNGs, and the ROC and reliability data as CSV (validation's
    confusion is drawn from every model's matrix, pipeline.comparison_plots; a split's answers
    per image are its predictions table). ROC and reliability are of the answered images'
    served probabilities.

    The ROC and reliability CSVs are long tables with a series column (`class`, `probabilities`)
    that the project's DVC templates (.dvc/plots/) draw as one line per series.
    """
    classes, report = params.classes, result[split]
    n = f"{len(y)} images"
    columns = [*classes, OUT_OF_SCOPE]
    for normalize, kind in ((False, "counts"), (True, "normalized")):
        title = f"{arch}, {split}: confusion ({'row-normalised' if normalize else 'counts'}), {n}"
        fig = plots.confusion_figure(report["confusion_matrix"], classes, normalize, title, columns)
        plots.save_png(fig, png_dir / f"confusion_{kind}_{split}.png")
    ans = served.answered
    shown_n = f"{int(ans.sum())} answered of {n}"
    roc = metrics.roc_points(y[ans], served.probabilities[ans], classes)
    plots.save_csv(pd.DataFrame(roc, columns=["class", "fpr", "tpr"]), csv_at(f"roc_{split}"))
    auc = {c: v["roc_auc"] for c, v in report["answered"]["per_class"].items()}
    fig = plots.roc_figure(roc, auc, f"{arch}, {split}: ROC, one-vs-rest, {shown_n}")
    plots.save_png(fig, png_dir / f"roc_{split}.png")
    curves = _reliability_curves(y[ans], raw[ans], report["calibration"], params)
    rows = [{"probabilities": name, **r} for name, bins in curves.items() for r in bins]
    plots.save_csv(pd.DataFrame(rows), csv_at(f"reliability_{split}"))
    shown = {
        name: [{**r, "confidence": r["predicted"], "accuracy": r["observed"]} for r in bins]
        for name, bins in curves.items()
    }
    fig = plots.reliability_figure(
        shown,
        f"{arch}, {split}: reliability of p(malignant), {shown_n}",
        axes=("mean predicted p(malignant)", "observed fraction malignant"),
    )
    plots.save_png(fig, png_dir / f"reliability_{split}.png")


def _reliability_curves(
    y: np.ndarray, p: np.ndarray, calibration: dict, params: Params
) -> dict[str, list[dict]]:
    """Non-empty reliability bins of p(malignant): raw, and temperature-scaled when a temperature
    was fitted (before / after), the one served marked as such."""
    m, n_bins = params.classes.index(params.positive_class), params.evaluate.ece_bins
    t, applied = calibration.get("temperature"), calibration.get("applied")
    probabilities = {"raw": p}
    if t:
        probabilities[f"temperature-scaled T={t:.2f}"] = metrics.apply_temperature(p, t)
    curves = {}
    for name, q in probabilities.items():
        is_served = (name == "raw") != bool(applied and t)
        label = f"{name} (served)" if is_served else name
        bins = reliability_curve(y == m, q[:, m], n_bins)
        curves[label] = [r for r in bins if r["count"]]
    return curves


def _test_images(
    out: Path,
    model: keras.Model,
    features: np.ndarray,
    test: ImageSet,
    served: Served,
    params: Params,
    arch: str,
) -> None:
    """Sample answers and Grad-CAM maps of test images, per class."""
    e, classes, y, p = params.evaluate, params.classes, test.labels, served.probabilities
    answers = _answer_names(served, classes)
    captions = [
        f"true {classes[t]}\n{name}" if refused else f"true {classes[t]}\n{name} {q[k]:.2f}"
        for t, name, k, q, refused in zip(y, answers, served.labels, p, served.refused, strict=True)
    ]
    if e.samples_per_class:
        picks = plots.choose_samples(y, p, classes, e.samples_per_class, params.seed)
        fig = plots.image_grid(test.images, picks, captions, f"{arch}, test: sample answers")
        plots.save_png(fig, out / "samples_test.png")
    picks = {
        f"true {name}": [int(i) for i in np.flatnonzero(y == k)[: e.gradcam_per_class]]
        for k, name in enumerate(classes)
    }
    chosen = sorted(i for idx in picks.values() for i in idx)
    if not chosen:
        return
    maps = cam.maps_from_features(model, features[chosen], served.labels[chosen])
    cells = cam.grid(model)  # each cell drawn where the backbone centres it, not spread evenly
    tiles: dict[int, np.ndarray] = {}  # the image and its overlay side by side
    for i, heat in zip(chosen, maps, strict=True):
        gap = np.full((test.images.shape[1], 2, 3), 255, dtype=np.uint8)
        tiles[i] = np.hstack([test.images[i], gap, cam.overlay(test.images[i], heat, cells=cells)])
    title = f"{arch}, test: class activation maps (Grad-CAM) of the most probable class"
    plots.save_png(plots.image_grid(tiles, picks, captions, title), out / "gradcam_test.png")


def comparison_markdown(results: dict[str, dict], comparison: dict, split: str) -> str:
    """The models side by side on one split, then their paired difference.

    `val` is the development view (`comparison.md`, printed by `make demo`); `test` is the test
    report (`test.md`), headed by how often this test split has been looked at.
    """
    archs = list(results)
    reports = {a: results[a][split] for a in archs}
    first = reports[archs[0]]
    title = "Validation" if split == "val" else "Test"
    lines = [f"# Model comparison: {title.lower()}", ""]
    if split == "test":
        lines += [_test_use_line({a: reports[a].get("test_use") for a in archs}), ""]
    lines += [
        f"{title}: {first.get('n')} images in {first.get('groups')} groups. Every figure scores "
        "the served answers (the released rule, out-of-scope refusal included): class metrics "
        "the class answer over every image with a refusal counted wrong; ROC-AUC, Brier and ECE "
        "the served probabilities of the answered images; the referral rows the flag, a refused "
        "malignant image not flagged. Point estimates with 95% intervals: exact on the effective "
        "number of images (duplicate groups count once) for every share (accuracy, sensitivity, "
        "specificity, PPV, NPV, coverage, refused), a cluster bootstrap (groups resampled within "
        "class) for the rest. Selection uses validation only.",
        "",
        "| metric | " + " | ".join(archs) + " |",
        "|---" * (len(archs) + 1) + "|",
    ]
    lines += refusal_rows(reports, archs)
    for key, label in LABELS.items():
        cells = [format_estimate(reports[a].get(key)) for a in archs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [format_estimate((reports[a].get("answered") or {}).get("macro_f1")) for a in archs]
    lines.append("| Macro F1, answered images only | " + " | ".join(cells) + " |")
    lines += _decision_rows(reports, archs)
    lines += ["", *_paired_lines(comparison, split)]
    return "\n".join(readable(lines)) + "\n"


def readable(lines: list[str], width: int = 100) -> list[str]:
    """The same markdown, readable where printed raw (`make demo` prints comparison.md): each
    table's columns padded to one width, prose and bullets wrapped at `width`."""
    out: list[str] = []
    table: list[list[str]] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
            continue
        if table:
            out += _aligned(table)
            table = []
        indent = "  " if line.startswith("- ") else ""
        out += textwrap.wrap(line, width, subsequent_indent=indent) if len(line) > width else [line]
    return out[:-1]


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows if set(row[i]) != {"-"}) for i in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        if all(set(cell) == {"-"} for cell in cells):  # the header's rule
            return "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(row) for row in rows]


def _decision_rows(reports: dict[str, dict], archs: list[str]) -> list[str]:
    """Rows for the served decision (threshold chosen on val) and the lesion-only question."""
    rows = []
    ops = {a: reports[a].get("operating_point") or {} for a in archs}
    lesions = {a: reports[a].get("lesions") or {} for a in archs}
    rows.append("| Referral threshold on p(malignant) (chosen on val) | "
                + " | ".join(_number(ops[a].get("threshold")) for a in archs) + " |")  # fmt: skip
    for key, label in (
        ("sensitivity", "Referral flag: malignant sensitivity"),
        ("specificity", "Referral flag: specificity"),
        ("ppv", "Referral flag: PPV (this sample)"),
        ("npv", "Referral flag: NPV (this sample)"),
        ("ppv_at_prevalence", "Referral flag: PPV at the params prevalence"),
        ("npv_at_prevalence", "Referral flag: NPV at the params prevalence"),
        ("auc", "Malignant vs rest AUC (served p(malignant))"),
    ):
        rows.append(
            f"| {label} | " + " | ".join(format_estimate(ops[a].get(key)) for a in archs) + " |"
        )
    for key, label in (
        ("auc", "AUC"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
    ):
        cells = [format_estimate(lesions[a].get(key)) for a in archs]
        rows.append(f"| Lesions only (benign vs malignant): {label} | " + " | ".join(cells) + " |")
    return rows


def _paired_lines(comparison: dict, split: str) -> list[str]:
    lines: list[str] = []
    for pair in comparison["pairs"]:
        lines += _pair_lines(pair["a"], pair["b"], pair[split])
    return lines


def _pair_lines(a: str, b: str, paired: dict) -> list[str]:
    lines = [f"## Paired difference ({a} minus {b}, same images)", ""]
    for key in ("macro_f1", "malignant_auc"):
        d = paired[key]
        verdict = (
            "distinguishable from noise" if d["distinguishable"]
            else "not distinguishable from noise (the interval contains 0)"
        )  # fmt: skip
        lines.append(
            f"- {key}: {format_estimate(d['difference'])} over {d['images']} images in "
            f"{d['groups']} groups: {verdict}."
        )
    mc = paired["mcnemar"]
    lines.append(
        f"- McNemar (class answers, a refusal wrong): {mc['only_a_correct']} images right "
        f"only by {a}, "
        f"{mc['only_b_correct']} only by {b}; exact p = {mc['p_value']:.3f} (treats images as "
        "independent, so slightly optimistic with duplicate groups)."
    )
    return [*lines, ""]


def _test_use_line(uses: dict[str, dict | None]) -> str:
    """Which look of the test ledger each model's figures are, and when it was taken."""
    found = {a: u for a, u in uses.items() if u}
    if not found:
        return "Test use: not recorded."
    first = next(iter(found.values()))
    taken = "; ".join(
        f"{a}: {u['look']['time_utc']} (model sha256 {u['look']['model_sha256'][:12]})"
        for a, u in found.items()
        if u.get("look")
    )
    return (
        "**Every look at this test split is counted**: one row per look in "
        f"`{first.get('file')}` (committed; split sha256 {first['split_sha256'][:12]}), the "
        f"figures in MLflow experiment `{first['ledger']}`. These figures are the looks taken "
        f"{taken} (UTC). `evaluate` prints the count and the model card attached to the "
        "registered version states it. Every look that informs a choice makes these numbers more "
        "optimistic."
    )


def flat_metrics(report: dict, prefix: str) -> dict[str, float]:
    """MLflow metric names for one split's report: `<prefix>_<path>` (+ `_ci_low`, `_ci_high`).

    Numbers and estimates at any depth; lists (tables, curves) and text are left to the JSON.
    """
    flat: dict[str, float] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict) and "value" in node and "ci_low" in node:
            for part, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                if node[part] is not None:
                    flat[f"{name}{suffix}"] = float(node[part])
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{name}_{safe_name(str(key))}")
        elif isinstance(node, int | float) and not isinstance(node, bool):
            flat[name] = float(node)

    walk({k: v for k, v in report.items() if k != "subgroups"}, prefix)
    return flat


def log_to_mlflow(
    params: Params, inputs: dict[str, dict], results: dict[str, dict], folder: Path
) -> None:
    """Validation only on the training runs (`inputs[arch]["run_id"]`), with the plots and
    comparison.md under `folder`: test numbers live in the ledger, not beside them."""
    client = mlflow.MlflowClient()
    for arch, result in results.items():
        run_id = inputs[arch]["run_id"]
        flat = flat_metrics(result["val"], "val") | view_columns(result["val"])
        # Training logs val_accuracy / val_macro_f1 per epoch; log after its last step so the
        # run's latest value is the one of the saved model, evaluated here.
        clashes = [k for k in flat if k in client.get_run(run_id).data.metrics]
        step = 1 + max(
            (m.step for k in clashes for m in client.get_metric_history(run_id, k)), default=-1
        )
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(flat, step=step)
            log_settings(client, run_id, params)
            mlflow.log_dict(result["val"], "evaluate/val_metrics.json")
            figures = paths.evaluate_dir(arch) / "figures"
            mlflow.log_artifacts(str(figures), artifact_path="evaluate/plots")
            mlflow.log_artifact(str(folder / "comparison.md"), artifact_path="evaluate")


def log_settings(client: mlflow.MlflowClient, run_id: str, params: Params) -> None:
    """The evaluate settings as the run's params (`evaluate.<key>`), comparable in the runs table.

    MLflow params are write-once: when the same trained model is evaluated again with other
    settings (only `evaluate` changed, so DVC kept the training), the new values become tags of
    the same name, which the runs table shows too.
    """
    settings = {f"evaluate.{k}": str(v) for k, v in dataclasses.asdict(params.evaluate).items()}
    logged = client.get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in settings.items() if k not in logged})
    mlflow.set_tags({k: v for k, v in settings.items() if k in logged and logged[k] != v})


def print_summary(results: dict[str, dict], use: dict, folder: Path) -> None:
    """Validation on the terminal; test only as a pointer and a count."""
    for arch, result in results.items():
        val, op = result["val"], result["val"]["operating_point"]
        print(
            f"evaluate {arch}: val macro-F1 {format_estimate(val['macro_f1'])}, malignant "
            f"sensitivity at threshold {format_estimate(op.get('sensitivity'))}"
        )
    print(
        f"evaluate: test figures in {folder / 'test.md'} (this test split: "
        f"{use.get('looks', '?')} looks by {use.get('models', '?')} models, recorded in MLflow)"
    )


def safe_name(name: str) -> str:
    """`name` with the characters MLflow refuses in a metric name replaced by `_`."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
