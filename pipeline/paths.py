"""Where the stages read and write, relative to the project root: one home for each folder, so
the stages and their tests agree (dvc.yaml spells them too, for DVC: tests/unit/test_paths.py
checks that it spells them the same).

    data/prepared/      prepare: the images (<split>/<class>/) and manifest.csv
    data/augmented/     augment: the balanced train split
    models/trained/<arch>/  train: one backbone's model.keras and run.json
    models/selected/    select: the release every surface serves
    reports/evaluate/models/<arch>/  evaluate: one backbone's rule, metrics, predictions, figures
    reports/evaluate/plots/<plot>/<arch>.csv  evaluate: the validation plots DVC draws per model
    reports/evaluate/plots/<plot>.csv  evaluate: those it draws with every model in one chart

Everything per backbone sits in a folder of its own kind (models/trained/, .../models/,
.../plots/<plot>/), so dvc.yaml names each folder once and a backbone added to
train.backbones needs no new line there: evaluate depends on models/trained/, select on
reports/evaluate/ (a dep on models/ would contain select's own models/selected).
    data/external/      other sites' sets (data.external), never split or trained on
    reports/<stage>/    each stage's reports
"""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")
MANIFEST = PREPARED / "manifest.csv"
AUGMENTED = Path("data/augmented")
MODELS = Path("models")
TRAINED = MODELS / "trained"  # train@<arch>'s outs, one folder each (evaluate's dep)
SELECTED = MODELS / "selected"
REPORTS = Path("reports")
DATA_REPORTS = REPORTS / "data"  # prepare's summary.json, rejects, duplicates, contact sheets
DATA_FAILURES = REPORTS / "data-failures"  # not a DVC output: survives a failed `dvc repro`
TRAIN_REPORTS = REPORTS / "train"  # reports/train/<arch>/
EVALUATE_REPORTS = REPORTS / "evaluate"  # the comparison and the headline metrics
EVALUATE_MODELS = EVALUATE_REPORTS / "models"  # reports/evaluate/models/<arch>/
EVALUATE_PLOTS = EVALUATE_REPORTS / "plots"  # reports/evaluate/plots/<plot>/<arch>.csv
# every model in one table (pipeline.comparison_plots): one chart each in `dvc plots show`
TRAINING_CURVES = EVALUATE_PLOTS / "training_curves.csv"
CONFUSION_SHARES = EVALUATE_PLOTS / "confusion_val.csv"
SELECTION = REPORTS / "selection.json"
MODEL_CARD = REPORTS / "model_card.md"
PROMOTION = REPORTS / "promotion.json"  # `make promote`'s decision (not a DVC output)
EXTERNAL_DATA = Path("data/external")  # every data.external set lives below it (external's dep)
EXTERNAL_REPORTS = REPORTS / "external"  # the external stage: external.md, summary.json, sites/
BRING_HOME = Path("build/bring-home")  # a workspace run's outputs and release (git-ignored)


def model_dir(arch: str) -> Path:
    """models/trained/<arch>/: what `train --arch <arch>` writes."""
    return TRAINED / arch


def training_history(arch: str) -> Path:
    """reports/train/<arch>/history.csv: train@<arch>'s metrics per epoch."""
    return TRAIN_REPORTS / arch / "history.csv"


def evaluate_dir(arch: str) -> Path:
    """reports/evaluate/models/<arch>/: evaluate's rule, metrics, predictions and figures of one
    backbone."""
    return EVALUATE_MODELS / arch


def evaluate_plot(plot: str, arch: str) -> Path:
    """reports/evaluate/plots/<plot>/<arch>.csv: the data of one validation plot (`roc_val`,
    `reliability_val`) of one backbone; dvc.yaml declares each <plot>/ folder once."""
    return EVALUATE_PLOTS / plot / f"{arch}.csv"
