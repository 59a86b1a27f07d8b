"""Exact and near-duplicate detection, duplicate groups, and label conflicts inside groups.

BUSI has no patient ids and about 20% of its images are exact or near copies of another, some
filed under a different class. Grouping copies and keeping each group inside one split is what
stands in for a patient-level split; a group whose members disagree on the label is a data error
that a policy resolves (`prepare.conflict_policy`) and a report lists.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

PHASH_INPUT = 128  # images are reduced to this many pixels (grey, box filter) before the phash

# Set bits per byte value, for Hamming distances on numpy versions without `np.bitwise_count`.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def sha256(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes: equal for byte-identical files only."""
    return hashlib.sha256(data).hexdigest()


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash (imagehash.phash) as an int; near-identical images differ in few bits.

    The image is first reduced to a `PHASH_INPUT`-pixel grey square with a box filter: the hash
    only looks at 32x32 pixels anyway, and reducing first is several times faster on BUSI-sized
    images while treating every image the same way.
    """
    small = image.convert("L").resize((PHASH_INPUT, PHASH_INPUT), Image.Resampling.BOX)
    bits = imagehash.phash(small).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (a ^ b).bit_count()


def group(sha256s: Sequence[str], phashes: Sequence[int], threshold: int) -> list[str]:
    """A duplicate-group id for every item: byte-identical files, and images whose perceptual
    hashes differ in at most `threshold` bits, share a group (transitively, by union-find).

    The id is `g-` plus the first 12 hex digits of the smallest SHA-256 in the group, so it does
    not depend on the order of the items or on files elsewhere in the data set.
    """
    n = len(sha256s)
    if len(phashes) != n:
        raise ValueError("sha256s and phashes must have the same length")
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, digest in enumerate(sha256s):
        union(i, first.setdefault(digest, i))
    hashes = np.array([int(h) for h in phashes], dtype=np.uint64)
    for i in range(n - 1):  # O(n^2) over 64-bit ints: ~0.1 s for a few thousand images
        for j in np.flatnonzero(_distances(hashes[i], hashes[i + 1 :]) <= threshold):
            union(i, i + 1 + int(j))
    smallest: dict[int, str] = {}
    for i, digest in enumerate(sha256s):
        root = find(i)
        smallest[root] = min(smallest.get(root, digest), digest)
    return [f"g-{smallest[find(i)][:12]}" for i in range(n)]


def _distances(one: np.uint64, many: np.ndarray) -> np.ndarray:
    xor = np.bitwise_xor(many, one)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(xor)
    return _POPCOUNT[xor.view(np.uint8)].reshape(-1, 8).sum(axis=1)


@dataclass(frozen=True)
class Conflict:
    """A duplicate group whose members carry different labels, and what the policy did."""

    group: str
    members: tuple[int, ...]  # indices into the items, in input order
    labels: tuple[str, ...]  # the label of each member
    kept_label: str | None  # the label kept (policy "majority" with a clear majority), else None
    action: str  # human-readable, for the conflicts report


def resolve_conflicts(
    labels: Sequence[str], groups: Sequence[str], policy: str
) -> tuple[list[bool], list[Conflict]]:
    """Which items to keep, and the conflicts found.

    Policy `drop` drops every member of a group with more than one label. Policy `majority` keeps
    the members that carry the group's most common label and drops the others; a tie has no
    majority, so the whole group is dropped then too.
    """
    if policy not in ("drop", "majority"):
        raise ValueError(f"unknown conflict policy {policy!r}")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    keep = [True] * len(labels)
    conflicts = []
    for g in sorted(members):
        idx = members[g]
        counts = Counter(labels[i] for i in idx).most_common()
        if len(counts) < 2:
            continue
        winner = None
        if policy == "majority" and counts[0][1] > counts[1][1]:
            winner = counts[0][0]
        for i in idx:
            keep[i] = labels[i] == winner
        tally = ", ".join(f"{n} {label}" for label, n in sorted(counts))
        if winner is not None:
            dropped = len(idx) - counts[0][1]
            action = f"kept {counts[0][1]} {winner}, dropped {dropped} ({tally})"
        elif policy == "majority":
            action = f"dropped all {len(idx)}: no majority ({tally})"
        else:
            action = f"dropped all {len(idx)} ({tally})"
        conflicts.append(Conflict(g, tuple(idx), tuple(labels[i] for i in idx), winner, action))
    return keep, conflicts
