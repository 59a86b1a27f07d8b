"""Stage `augment`: balance the classes of the train split with seeded augmented copies.

Only the train split is read, so val and test are never augmented and never seen in training.
Output: `data/augmented/manifest.csv` (path,label,source,augmented) and its images; originals are
copied in so that training reads one folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.augmentation import augment_image, balance_counts
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.datasets import read_manifest, read_rgb
from pipeline.errors import UserError
from pipeline.files import staged_dir
from pipeline.paths import AUGMENTED, MANIFEST, PREPARED


def run(params: Params) -> dict[str, int]:
    """Write the class-balanced, seeded augmented copies of the train split to data/augmented/.

    Only the train split: validation and test stay as prepared, so they measure real images."""
    frame = read_manifest(MANIFEST)
    train = frame[frame["split"] == "train"].sort_values("path")
    counts = {label: int((train["label"] == label).sum()) for label in params.classes}
    empty = [label for label, n in counts.items() if n == 0]
    if empty:
        raise UserError(f"{MANIFEST}: no train images for class(es) {empty}")
    needed = balance_counts(counts, params.augment.target_per_class)
    rng = np.random.default_rng(params.seed)
    rows = []
    with staged_dir(AUGMENTED) as out:
        for label in params.classes:
            members = train[train["label"] == label]["path"].tolist()
            (out / "images" / label).mkdir(parents=True)
            for rel in members:
                target = Path("images") / label / Path(rel).name
                shutil.copyfile(PREPARED / rel, out / target)
                rows.append((str(target), label, rel, 0))
            for i in range(needed[label]):
                rel = members[int(rng.integers(len(members)))]
                image = augment_image(read_rgb(PREPARED / rel), rng, params.augment)
                target = Path("images") / label / f"aug-{i:05d}-{Path(rel).name}"
                cv2.imwrite(str(out / target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                rows.append((str(target), label, rel, 1))
        manifest = pd.DataFrame(rows, columns=["path", "label", "source", "augmented"])
        manifest.to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    totals = {label: counts[label] + needed[label] for label in params.classes}
    print(f"augment: train {counts} -> {totals}")
    return totals


def main(argv: list[str] | None = None) -> int:
    """The `augment` stage's command line (dvc.yaml); a user error is one line and exit code 2."""
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
