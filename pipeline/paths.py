"""Where the stages read and write, relative to the project root: one home for each folder, so
the stages and their tests agree (dvc.yaml spells them too, for DVC: tests/unit/test_paths.py
checks that it spells them the same).

    data/prepared/      prepare: the images (<split>/<class>/) and manifest.csv
    data/augmented/     augment: the balanced train split
    models/<arch>/      train: one backbone's model.keras and run.json
    models/selected/    select: the release every surface serves
    data/external/      other sites' sets (data.external), never split or trained on
    reports/<stage>/    each stage's reports
"""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")
MANIFEST = PREPARED / "manifest.csv"
AUGMENTED = Path("data/augmented")
MODELS = Path("models")
SELECTED = MODELS / "selected"
REPORTS = Path("reports")
DATA_REPORTS = REPORTS / "data"  # prepare's summary.json, rejects, duplicates, contact sheets
DATA_FAILURES = REPORTS / "data-failures"  # not a DVC output: survives a failed `dvc repro`
TRAIN_REPORTS = REPORTS / "train"  # reports/train/<arch>/
EVALUATE_REPORTS = REPORTS / "evaluate"  # reports/evaluate/<arch>/ and the comparison
SELECTION = REPORTS / "selection.json"
MODEL_CARD = REPORTS / "model_card.md"
PROMOTION = REPORTS / "promotion.json"  # `make promote`'s decision (not a DVC output)
EXTERNAL_DATA = Path("data/external")  # every data.external set lives below it (external's dep)
EXTERNAL_REPORTS = REPORTS / "external"  # the external stage: external.md, summary.json, sites/
BRING_HOME = Path("build/bring-home")  # a workspace run's outputs and release (git-ignored)


def model_dir(arch: str) -> Path:
    """models/<arch>/: what `train --arch <arch>` writes."""
    return MODELS / arch
