"""Subgroups come from what prepare's manifest records (pipeline/subgroups.py)."""

import numpy as np
import pandas as pd

from pipeline import subgroups
from pipeline.evaluate import split_facts

LESION_SIZE = "lesion size (mask area)"


def manifest(areas: list[str], labels: list[str], splits: list[str] | None = None) -> pd.DataFrame:
    """A manifest as prepare writes it and stages read it (every value a string)."""
    n = len(areas)
    return pd.DataFrame(
        {
            "label": labels,
            "split": splits or ["test"] * n,
            "group": [f"g{i}" for i in range(n)],
            "sha256": [f"{i:064x}" for i in range(n)],
            "masks": [f"m{i}_mask.png" for i in range(n)],
            "mask_area": areas,
            "width": ["500"] * n,
            "height": ["400"] * n,
        }
    )


def test_lesion_size_bands_are_tertiles_of_every_lesion_and_say_their_cut():
    areas = [f"{a:.6f}" for a in np.linspace(0.01, 0.30, 30)]
    frame = manifest([*areas, "", ""], ["benign"] * 15 + ["malignant"] * 15 + ["normal"] * 2)
    labels, order = subgroups.define(frame, frame)[LESION_SIZE]
    assert order == ["<= 10.67 % of image", "10.67-20.33 % of image", "> 20.33 % of image"]
    assert [int((labels == name).sum()) for name in order] == [10, 10, 10]
    assert labels[0] == order[0]
    assert labels[29] == order[2]
    assert labels[30] is None  # normal scans have no lesion size
    assert labels[31] is None


def test_a_lesion_without_a_measured_area_is_in_no_size_band_but_still_counted_elsewhere():
    frame = manifest(["0.02", "", "0.2", "0.1"], ["benign", "malignant", "benign", "malignant"])
    found = subgroups.define(frame, frame)
    labels, _ = found[LESION_SIZE]
    assert labels[1] is None
    assert all(label is not None for label in labels[[0, 2, 3]])
    assert list(found["lesions per image (mask files)"][0]) == ["single lesion"] * 4


def test_bands_are_cut_on_the_whole_manifest_so_every_split_shares_the_edges():
    areas = [f"{a:.3f}" for a in np.linspace(0.01, 0.3, 12)]
    frame = manifest(areas, ["malignant"] * 12, ["train"] * 9 + ["test"] * 3)
    facts = split_facts(frame, "test")
    labels, order = facts.subgroups[LESION_SIZE]
    assert list(labels) == [order[2]] * 3  # the largest lesions, judged against all twelve


def test_without_any_lesion_area_there_is_no_size_table_and_the_gap_is_named():
    frame = manifest(["", "", ""], ["benign", "malignant", "normal"])  # e.g. DICOM or a plain CSV
    assert LESION_SIZE not in subgroups.define(frame, frame)
    gap = "lesion size: no benign or malignant image has a mask marking its lesion"
    assert subgroups.missing(frame) == [gap]
    assert split_facts(frame, "test").subgroup_gaps == (gap,)  # the report and card name it
    older = frame.drop(columns="mask_area")  # a manifest from before prepare recorded areas
    assert LESION_SIZE not in subgroups.define(older, older)
    assert "lesion size: prepare records no mask areas" in subgroups.missing(older)
