"""Train / val / test split, stratified by class and grouped, from a seed.

A pure function of (labels, groups, fractions, seed): the same inputs give the same split on any
machine, and every member of a group lands in the same split, so a copy of a training image can
never be used to score the model. The groups are duplicate groups merged with patient (or study)
groups where the data names them (`merge_groups`): one patient's images, similar or not, stay on
one side. Patient ids enter only as salted hashes (`pseudonym`), never raw.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def assign_splits(
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[str]:
    """The split (`train`, `val` or `test`) of every item.

    Groups are stratified by their (majority) label. Within a class, groups are visited largest
    first, equal sizes in a seeded random order, and each goes to the split furthest below its
    share relative to its target (so a class of three single images gets one in each split, and
    large classes land within one group of the requested fractions). Each class draws from its own
    random stream, seeded from `seed` and the class name, so adding images to one class does not
    reshuffle another.
    """
    if len(labels) != len(groups):
        raise ValueError("labels and groups must have the same length")
    if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
        raise ValueError("need 0 < val_fraction, 0 < test_fraction, and their sum below 1")
    fractions = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_class: dict[str, list[str]] = {}
    for g in sorted(members):
        counts = Counter(labels[i] for i in members[g]).most_common()
        top = min(label for label, n in counts if n == counts[0][1])
        by_class.setdefault(top, []).append(g)

    result = [""] * len(labels)
    for label in sorted(by_class):
        class_groups = by_class[label]
        rng = np.random.default_rng([seed, _stable_int(label)])
        shuffled = [class_groups[i] for i in rng.permutation(len(class_groups))]
        ordered = sorted(shuffled, key=lambda g: -len(members[g]))  # stable: keeps shuffle order
        targets = fractions * sum(len(members[g]) for g in ordered)
        filled = np.zeros(3)
        for g in ordered:
            k = int(np.argmax((targets - filled) / targets))  # ties: the first, i.e. train
            filled[k] += len(members[g])
            for i in members[g]:
                result[i] = SPLITS[k]
    return result


def pseudonym(kind: str, value: str, salt: str) -> str:
    """`<kind>-` plus 16 hex digits of SHA-256(salt, kind, value): stable for one site's salt,
    and not reversible by hashing a list of likely ids without it. The only form in which a
    patient or study id may be written anywhere."""
    digest = hashlib.sha256("\x00".join((salt, kind, value)).encode()).hexdigest()
    return f"{kind}-{digest[:16]}"


def merge_groups(groups: Sequence[str], keys: Sequence[Sequence[str]]) -> list[str]:
    """Join items that share a group or any key (patient and study pseudonyms), transitively.

    A merged group that holds a key is named by its smallest key (`patient-...` sorts before
    `study-...`), else it keeps its group name, so names do not depend on the order of the items.
    """
    if len(groups) != len(keys):
        raise ValueError("groups and keys must have the same length")
    parent = list(range(len(groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, names in enumerate(keys):
        for name in (groups[i], *names):
            j = first.setdefault(name, i)
            parent[find(i)] = find(j)
    named: dict[int, tuple[int, str]] = {}
    for i, names in enumerate(keys):
        candidate = (0, min(names)) if names else (1, groups[i])
        root = find(i)
        named[root] = min(named.get(root, candidate), candidate)
    return [named[find(i)][1] for i in range(len(groups))]


def _stable_int(text: str) -> int:
    """A seed component from a string that, unlike `hash()`, is the same in every process."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
