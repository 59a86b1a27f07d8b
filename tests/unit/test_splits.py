"""Grouped, stratified, seeded train / val / test split (pipeline/splits.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipeline.splits import SPLITS, assign_splits

SEEDS = [0, 1, 42, 2026]


def _data(seed: int) -> tuple[list[str], list[str]]:
    """~600 items in three unbalanced classes, with duplicate groups of 1 to 4 members."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for label, n_groups in (("benign", 250), ("malignant", 120), ("normal", 80)):
        for g in range(n_groups):
            size = int(rng.choice([1, 1, 1, 2, 3, 4]))
            labels += [label] * size
            groups += [f"{label}-{g}"] * size
    return labels, groups


def _split(labels, groups, seed, val=0.15, test=0.15):
    return assign_splits(labels, groups, val_fraction=val, test_fraction=test, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_duplicate_group_lands_in_exactly_one_split(seed):
    labels, groups = _data(seed)
    result = _split(labels, groups, seed)
    splits_of_group: dict[str, set[str]] = {}
    for g, s in zip(groups, result, strict=True):
        splits_of_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in splits_of_group.values())
    assert set(result) == set(SPLITS)


@pytest.mark.parametrize("seed", SEEDS)
def test_fractions_are_honoured_within_each_class(seed):
    labels, groups = _data(seed)
    result = _split(labels, groups, seed, val=0.2, test=0.1)
    for label in ("benign", "malignant", "normal"):
        counts = Counter(s for lab, s in zip(labels, result, strict=True) if lab == label)
        total = sum(counts.values())
        for split, want in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
            assert abs(counts[split] / total - want) <= 4 / total + 0.01, (label, split, counts)


def test_the_same_inputs_give_the_same_split_and_another_seed_another():
    labels, groups = _data(7)
    assert _split(labels, groups, 7) == _split(labels, groups, 7)
    assert _split(labels, groups, 7) != _split(labels, groups, 8)


def test_a_class_of_three_single_images_gets_one_in_each_split():
    labels = ["rare"] * 3 + ["common"] * 30
    groups = [f"g{i}" for i in range(33)]
    result = _split(labels, groups, 0)
    assert sorted(result[:3]) == ["test", "train", "val"]


def test_adding_images_to_one_class_does_not_reshuffle_another():
    labels, groups = ["benign"] * 20 + ["normal"] * 20, [f"g{i}" for i in range(40)]
    before = _split(labels, groups, 3)
    after = _split(labels + ["normal"] * 5, groups + [f"extra{i}" for i in range(5)], 3)
    assert after[:20] == before[:20]


def test_order_of_items_does_not_matter():
    labels, groups = _data(5)
    order = np.random.default_rng(0).permutation(len(labels))
    shuffled = _split([labels[i] for i in order], [groups[i] for i in order], 5)
    original = _split(labels, groups, 5)
    assert [original[i] for i in order] == shuffled


def test_patient_keys_and_duplicate_groups_merge_transitively_whatever_the_order():
    from pipeline.splits import merge_groups, pseudonym

    a, b = pseudonym("patient", "A", "salt-1234"), pseudonym("study", "S", "salt-1234")
    groups = ["g-1", "g-2", "g-2", "g-3", "g-4"]
    keys = [[a], [], [b], [a, b], []]  # 0 and 3 by patient, 2 and 3 by study, 1 and 2 by copy
    merged = merge_groups(groups, keys)
    assert merged[:4] == [a] * 4
    assert merged[4] == "g-4"
    order = [4, 2, 0, 3, 1]
    assert merge_groups([groups[i] for i in order], [keys[i] for i in order]) == [
        merged[i] for i in order
    ]
    assert pseudonym("patient", "A", "salt-5678") != a  # another site, another name
