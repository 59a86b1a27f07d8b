"""The DVC plots that put every model in one chart: training curves and validation confusion.

DVC draws one chart per file, and dvc.yaml names no backbone (a third one needs no line there),
so a chart of every model needs one file holding every model: a long table with a `model`
column, written by evaluate (the stage that has every model) and drawn by a template of
.dvc/plots/ that colours (curves) or facets (confusion) by it.

    reports/evaluate/plots/training_curves.csv  model, epoch, metric, split, value
        each train@<arch>'s history.csv: accuracy and loss (training and validation) and the
        validation macro-F1 that early stopping follows (.dvc/plots/training_curves.json)
    reports/evaluate/plots/confusion_val.csv    model, actual, predicted, images, share
        the served answers on validation, `share` of the true class (row-normalised), every
        cell written, zeros included (.dvc/plots/confusion_shares.json)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline import paths, plots
from pipeline.errors import UserError
from pipeline.serving.rule import OUT_OF_SCOPE

# history.csv column -> (metric, split): the panel and the line style it is drawn in
CURVES = {
    "accuracy": ("accuracy", "training"),
    "val_accuracy": ("accuracy", "validation"),
    "loss": ("loss", "training"),
    "val_loss": ("loss", "validation"),
    "val_macro_f1": ("macro-F1", "validation"),
}
DIGITS = 6  # the committed tables change only where a value does


def read_histories(archs: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each model's per-epoch history (train@<arch>'s history.csv); a missing one is a user error
    naming the file and the stage that writes it, raised before evaluate's work."""
    histories = {}
    for arch in archs:
        path = paths.training_history(arch)
        if not path.is_file():
            raise UserError(f"{path}: not found; run `dvc repro train@{arch}` first")
        histories[arch] = pd.read_csv(path)
    return histories


def curves_table(histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """`model,epoch,metric,split,value`: one row per model, epoch and curve of CURVES (a column a
    history lacks is left out), models in the order given."""
    frames = []
    for arch, history in histories.items():
        columns = [c for c in CURVES if c in history]
        long = history.melt(id_vars="epoch", value_vars=columns, var_name="curve")
        long[["metric", "split"]] = [CURVES[c] for c in long["curve"]]
        long.insert(0, "model", arch)
        frames.append(long[["model", "epoch", "metric", "split", "value"]])
    table = pd.concat(frames, ignore_index=True)
    table["value"] = table["value"].round(DIGITS)
    return table


def confusion_table(
    matrices: Mapping[str, Sequence[Sequence[int]]],
    classes: Sequence[str],
    answers: Sequence[str],
) -> pd.DataFrame:
    """`model,actual,predicted,images,share`: every cell of each model's confusion matrix (true
    classes as rows, `answers` as columns, the refusal among them), `share` of its row."""
    rows = []
    for arch, matrix in matrices.items():
        counts = np.asarray(matrix, dtype=np.int64)
        if counts.shape != (len(classes), len(answers)):
            raise ValueError(f"{arch}: confusion matrix {counts.shape}, expected "
                             f"{len(classes)} classes x {len(answers)} answers")  # fmt: skip
        totals = counts.sum(1)
        for i, actual in enumerate(classes):
            for j, predicted in enumerate(answers):
                share = counts[i, j] / totals[i] if totals[i] else 0.0
                rows.append((arch, actual, predicted, int(counts[i, j]), round(share, DIGITS)))
    return pd.DataFrame(rows, columns=["model", "actual", "predicted", "images", "share"])


def write(
    histories: Mapping[str, pd.DataFrame], results: Mapping[str, dict], classes: Sequence[str]
) -> None:
    """Both tables where dvc.yaml declares them (evaluate's plots); `results` are evaluate's per
    model, whose validation confusion matrix has the refusals as a last column."""
    plots.save_csv(curves_table(histories), paths.TRAINING_CURVES)
    matrices = {arch: result["val"]["confusion_matrix"] for arch, result in results.items()}
    table = confusion_table(matrices, classes, [*classes, OUT_OF_SCOPE])
    plots.save_csv(table, paths.CONFUSION_SHARES)
