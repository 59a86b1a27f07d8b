"""Evaluation figures (PNG) and the tables behind them (CSV for `dvc plots`).

Figures are built on `matplotlib.figure.Figure` directly, not pyplot: no global figure state, no
GUI backend to pick (PNG output goes through Agg), nothing to close. Every function returns a
Figure or a DataFrame; `save_png` and `save_csv` write them atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.files import write_bytes, write_text


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Render with Agg and write atomically."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def save_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a table for `dvc plots` atomically, with LF line ends on every platform."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


# --- DVC plot data -------------------------------------------------------------------------------


def predictions_table(
    paths: list[str], y: np.ndarray, proba: np.ndarray, classes: tuple[str, ...] | list[str]
) -> pd.DataFrame:
    """`path,label,predicted,p_<class>...` per image, probabilities rounded to 6 decimals."""
    names = np.asarray(classes, dtype=object)
    frame = pd.DataFrame(
        {"path": paths, "label": names[np.asarray(y)], "predicted": names[proba.argmax(1)]}
    )
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = np.round(proba[:, k], 6)
    return frame


# --- figures -------------------------------------------------------------------------------------


def history_figure(history: pd.DataFrame, title: str, best_epoch: int | None = None) -> Figure:
    """Training curves: loss, accuracy and whole-val-set macro-F1 per epoch, train beside val.

    Epochs as numbered in `history` (from 1, as Keras prints them); the best epoch, the one the
    saved model holds, is marked in every panel. Constrained layout keeps the suptitle clear of
    the panel titles.
    """
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    panels = [
        ("loss", ["loss", "val_loss"]),
        ("accuracy", ["accuracy", "val_accuracy"]),
        ("macro-F1", ["val_macro_f1"]),
    ]
    for ax, (name, columns) in zip(fig.subplots(1, 3), panels, strict=True):
        for column in columns:
            if column in history:
                ax.plot(history["epoch"], history[column], marker="o", label=column)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label="best epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def confusion_figure(
    matrix: np.ndarray | list,
    classes: tuple[str, ...] | list[str],
    normalize: bool,
    title: str,
    columns: tuple[str, ...] | list[str] | None = None,
) -> Figure:
    """Confusion matrix (rows = true): counts, or row-normalised (recall on the diagonal).

    `columns` names the answers when they are more than the classes (the served rule's
    `out_of_scope` refusal as a last column); default: the classes."""
    columns = list(columns or classes)
    counts = np.asarray(matrix, dtype=np.float64)
    if normalize:
        totals = counts.sum(1, keepdims=True)
        shown = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        shown = counts
    k, c = len(classes), len(columns)
    fig = Figure(figsize=(1.2 * c + 2.2, 1.1 * k + 1.6))
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, shown.max()))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for i in range(k):
        for j in range(c):
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
            dark = shown[i, j] > (0.5 if normalize else shown.max() / 2)
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    ax.set(
        xticks=range(c), yticks=range(k), xticklabels=columns, yticklabels=classes,
        xlabel="predicted", ylabel="true", title=title,
    )  # fmt: skip
    return fig


def roc_figure(rows: list[dict], auc: dict[str, float | None], title: str) -> Figure:
    """One-vs-rest ROC curves from `metrics.roc_points` rows, the AUC in the legend."""
    fig = Figure(figsize=(4.8, 4.4))
    ax = fig.add_subplot()
    frame = pd.DataFrame(rows, columns=["class", "fpr", "tpr"])
    for name, part in frame.groupby("class", sort=False):
        value = auc.get(str(name))
        label = f"{name} (AUC {value:.3f})" if value is not None else str(name)
        ax.plot(part["fpr"], part["tpr"], drawstyle="steps-post", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def reliability_figure(
    curves: dict[str, list[dict]],
    title: str,
    axes: tuple[str, str] = ("confidence (top class)", "accuracy"),
) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per curve name.

    `curves` maps a label (e.g. "before", "after T=1.7") to rows with `confidence`, `accuracy`
    and `count` (`metrics.reliability_bins`); `axes` names what they hold when it is not the top
    class (p(malignant) against the observed fraction malignant, say).
    """
    fig = Figure(figsize=(4.8, 5.0 + 0.2 * len(curves)), layout="constrained")
    ax, counts = fig.subplots(2, 1, height_ratios=[4, 0.4 + 0.3 * len(curves)], sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for row, (label, rows) in enumerate(curves.items()):
        used = [r for r in rows if r["count"]]
        x, y = [r["confidence"] for r in used], [r["accuracy"] for r in used]
        (line,) = ax.plot(x, y, marker="o", label=label)
        # Each bin's image count, one row per curve under the diagram, at the bin's centre: a bin
        # of 2 images says little, and a reader must see that before trusting a gap from the
        # diagonal (written beside the points, the curves' counts fell on each other).
        for r in used:
            centre = (r["bin_low"] + r["bin_high"]) / 2 if "bin_low" in r else r["confidence"]
            counts.text(centre, row, str(r["count"]), ha="center", va="center",
                        fontsize="x-small", color=line.get_color())  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=axes[0], ylabel=axes[1])
    ax.xaxis.set_tick_params(labelbottom=True)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    counts.set_ylim(len(curves) - 0.5, -0.5)
    counts.set_yticks(range(len(curves)), [str(label) for label in curves], fontsize="x-small")
    counts.set_title("images per bin", fontsize="small", loc="left")
    counts.tick_params(axis="x", bottom=False, labelbottom=False)
    for side in ("top", "right", "bottom"):
        counts.spines[side].set_visible(False)
    return fig


def choose_samples(
    y: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    per_class: int,
    seed: int,
) -> dict[str, list[int]]:
    """Indices for the sample grid: correct and wrong per true class, and the most confident errors.

    Random picks are seeded; the most confident errors are the wrong predictions with the
    highest top-class probability. Keys are the row titles.
    """
    rng = np.random.default_rng(seed)
    pred = proba.argmax(1)
    rows: dict[str, list[int]] = {}
    for k, name in enumerate(classes):
        for kind, mask in (("correct", (y == k) & (pred == k)), ("wrong", (y == k) & (pred != k))):
            found = np.flatnonzero(mask)
            picked = rng.choice(found, size=min(per_class, found.size), replace=False)
            rows[f"{kind}: true {name}"] = sorted(int(i) for i in picked)
    errors = np.flatnonzero(pred != y)
    by_confidence = errors[np.argsort(-proba[errors].max(1), kind="stable")]
    rows["most confident errors"] = [int(i) for i in by_confidence[:per_class]]
    return rows


def image_grid(
    images: np.ndarray | Mapping[int, np.ndarray],
    rows: dict[str, list[int]],
    captions: list[str],
    title: str,
) -> Figure:
    """Images in labelled rows (row title = key of `rows`), one caption per image index.

    `images` is indexed by the indices in `rows`: an array, or a mapping for just those images.
    """
    empty = [name for name, idx in rows.items() if not idx]
    rows = {name: idx for name, idx in rows.items() if idx}  # no blank rows: named below instead
    n_rows = max(1, len(rows))
    n_cols = max([1] + [len(idx) for idx in rows.values()])
    first = next((images[i] for idx in rows.values() for i in idx), np.zeros((1, 1)))
    aspect = first.shape[1] / first.shape[0]
    fig = Figure(figsize=(1.9 * aspect * n_cols + 1.6, 2.1 * n_rows + 0.4), layout="constrained")
    fig.suptitle(title)
    if empty:
        fig.supxlabel(f"no images: {'; '.join(empty)}", fontsize="small")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (name, indices) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(name, fontsize="small")
            if c < len(indices):
                ax.imshow(images[indices[c]])
                ax.set_title(captions[indices[c]], fontsize="x-small")
    return fig
