"""Exact and near-duplicate detection, duplicate groups, and label conflicts inside groups.

BUSI has no patient ids and about 20% of its images are exact or near copies of another, some
filed under a different class. Grouping copies and keeping each group inside one split is what
stands in for a patient-level split; a group whose members disagree on the label is a data error
that a policy resolves (`prepare.conflict_policy`) and a report lists.

Three ways to find a pair, each recorded with the pair (`Pair.method`):

- `sha256`: byte-identical files;
- `phash`: a 64-bit perceptual hash of the whole image within `phash_threshold` bits. It catches
  resized, re-encoded, brightened or annotated copies, but a copy cropped by 10%, shifted by 10%
  or padded by 10% moves the hash far away (measured: 11%, 2% and 0% caught);
- `keypoints`: ORB keypoints at a fixed pixel scale, so a crop or a shift keeps the same pixels
  and nearly the same descriptors. A cheap candidate search (locality-sensitive hashing of the
  strongest descriptors, a few best-voted partners per image) proposes pairs; each proposal is
  verified by a RANSAC similarity transform (rotation, scale, shift) with enough inliers spread
  over the image, and by the correlation of the two images where the transform overlays them.
  No pair is verified unless proposed, so the cost grows about linearly with the image count.

Not found: mirrored copies (ORB is not mirror-invariant and the hash changes), copies that keep
less than about half of the original's area, and heavy warps or blurs that change the texture.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from pipeline.matching import Keypoints, Match, match

PHASH_INPUT = 128  # images are reduced to this many pixels (grey, box filter) before the phash

INDEXED = 150  # each image's strongest keypoints (of matching.KEYPOINTS) in the candidate index
# Candidate index: each table keys a descriptor by LSH_BITS of its bits, drawn from the LSH_POOL
# bits closest to 50/50 in this data set (many ORB bits are almost constant on ultrasound
# speckle, and keys made of them put most descriptors in a few buckets). Buckets holding more
# than LSH_BUCKET_CAP descriptors are common patterns, not evidence, and are ignored.
LSH_BITS = 20
LSH_TABLES = 10
LSH_POOL = 96
LSH_BUCKET_CAP = 32
MIN_VOTES = 2  # a single shared bucket is chance
CANDIDATE_DEPTH = 4  # best-voted partners considered per image, in units of `per_image`
VERIFY_BATCH = 64  # candidates verified together on threads before the groups are updated

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


def candidates(prints: Sequence[Keypoints], per_image: int) -> list[tuple[int, int]]:
    """Pairs worth verifying, most shared index buckets first: for every image, the `per_image`
    others that share the most buckets with it (at least `MIN_VOTES`), as (i, j) with i < j.

    Cost: a sort per table over all indexed descriptors, not a comparison of every pair.
    """
    indexed = [p.descriptors[:INDEXED] for p in prints]
    owner = np.concatenate([np.full(len(d), i, np.int64) for i, d in enumerate(indexed)])
    if len(owner) < 2:
        return []
    descriptors = np.concatenate(indexed)
    pool = np.argsort(np.abs(_bit_means(descriptors) - 0.5), kind="stable")[:LSH_POOL]
    rng = np.random.default_rng(0)  # fixed: the same data always gives the same candidates
    n = len(prints)
    shared = [
        _bucket_pairs(_keys(descriptors, rng.choice(pool, LSH_BITS, replace=False)), owner, n)
        for _ in range(LSH_TABLES)
    ]
    ids, votes = np.unique(np.concatenate(shared), return_counts=True)
    keep = votes >= MIN_VOTES
    return _best_partners(ids[keep] // n, ids[keep] % n, votes[keep], per_image)


def _bit_means(descriptors: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """How often each of the 256 descriptor bits is set (in chunks: unpacking all at once would
    take 256 bytes per descriptor)."""
    total = np.zeros(256)
    for start in range(0, len(descriptors), chunk):
        total += np.unpackbits(descriptors[start : start + chunk], axis=1).sum(axis=0)
    return total / len(descriptors)


def _keys(descriptors: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """One integer key per descriptor made of the chosen bit positions (numpy's bit order)."""
    key = np.zeros(len(descriptors), np.int64)
    for j, bit in enumerate(bits):
        key |= ((descriptors[:, bit // 8] >> (7 - bit % 8)) & 1).astype(np.int64) << j
    return key


def _bucket_pairs(key: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """`i * n + j` (i < j) for every two descriptors of images i != j that share a bucket of at
    most `LSH_BUCKET_CAP` descriptors; once per pair of descriptors."""
    order = np.argsort(key, kind="stable")
    key, owner = key[order], owner[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    small = np.repeat((sizes > 1) & (sizes <= LSH_BUCKET_CAP), sizes)
    key, owner = key[small], owner[small]
    found = []
    for offset in range(1, LSH_BUCKET_CAP):  # sorted keys: a bucket is a run of equal keys
        same = key[offset:] == key[:-offset]
        if not same.any():
            break
        a, b = owner[:-offset][same], owner[offset:][same]
        other = a != b
        found.append(np.minimum(a, b)[other] * n + np.maximum(a, b)[other])
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _best_partners(
    a: np.ndarray, b: np.ndarray, votes: np.ndarray, per_image: int
) -> list[tuple[int, int]]:
    """Pairs among the `per_image` most-voted partners of either image, most votes first."""
    source, target, strength = np.r_[a, b], np.r_[b, a], np.r_[votes, votes]
    order = np.lexsort((target, -strength, source))  # by image, most votes first, then stable
    source, target, strength = source[order], target[order], strength[order]
    first = np.r_[True, source[1:] != source[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(source)), 0))
    top = (np.arange(len(source)) - start) < per_image
    best: dict[tuple[int, int], int] = {}
    for s, t, v in zip(source[top], target[top], strength[top], strict=True):
        best[(int(min(s, t)), int(max(s, t)))] = int(v)
    return sorted(best, key=lambda pair: (-best[pair], pair))


@dataclass(frozen=True)
class Pair:
    """Two items (indices, a < b) found to be duplicates, and how."""

    a: int
    b: int
    method: str  # "sha256", "phash", "keypoints" or "phash+keypoints"
    hash_distance: int  # phash Hamming distance, in bits
    match: Match | None  # the keypoint verification, when it ran (not for byte-identical files)


def find_pairs(
    sha256s: Sequence[str],
    phashes: Sequence[int],
    prints: Sequence[Keypoints],
    *,
    phash_threshold: int,
    min_inliers: int,
    min_correlation: float,
    per_image: int,
) -> list[Pair]:
    """The duplicate pairs that make the groups: byte-identical files, perceptual hashes within
    `phash_threshold` bits, and keypoint candidates that pass verification (`Match.accepted`).

    Candidates are verified best-voted first, and a pair already joined through other pairs is
    skipped, so a large group does not use up its members' budget of `per_image` verifications
    on each other. Hash pairs are verified too, so the report shows what keypoints make of them.
    """
    if not len(sha256s) == len(phashes) == len(prints):
        raise ValueError("sha256s, phashes and prints must have the same length")
    joined = _UnionFind(len(sha256s))
    exact = _identical(sha256s)
    hashes = np.array([int(h) for h in phashes], dtype=np.uint64)
    close = [p for p in phash_pairs(hashes, phash_threshold) if p not in set(exact)]
    found: list[tuple[int, int, str, Match | None]] = [(i, j, "sha256", None) for i, j in exact]
    for (i, j), result in zip(close, _verify_all(prints, close), strict=True):
        agreed = result is not None and result.accepted(min_inliers, min_correlation)
        found.append((i, j, "phash+keypoints" if agreed else "phash", result))
    for i, j, _, _ in found:
        joined.union(i, j)
    queue = candidates(prints, per_image * CANDIDATE_DEPTH)
    found += _verified(prints, queue, joined, per_image, min_inliers, min_correlation)
    return [
        Pair(i, j, method, hamming(int(hashes[i]), int(hashes[j])), result)
        for i, j, method, result in sorted(found, key=lambda f: f[:2])
    ]


def _verified(
    prints: Sequence[Keypoints],
    queue: list[tuple[int, int]],
    joined: _UnionFind,
    per_image: int,
    min_inliers: int,
    min_correlation: float,
) -> list[tuple[int, int, str, Match]]:
    """Verify candidates in order, in batches, skipping pairs already joined and images out of
    budget; join and return the accepted ones."""
    budget = np.full(len(prints), per_image)
    accepted = []
    for start in range(0, len(queue), VERIFY_BATCH):
        batch = [
            (i, j)
            for i, j in queue[start : start + VERIFY_BATCH]
            if joined.find(i) != joined.find(j) and max(budget[i], budget[j]) > 0
        ]
        for (i, j), result in zip(batch, _verify_all(prints, batch), strict=True):
            budget[[i, j]] -= 1
            if result is not None and result.accepted(min_inliers, min_correlation):
                joined.union(i, j)
                accepted.append((i, j, "keypoints", result))
    return accepted


class _UnionFind:
    """Disjoint sets of item indices (path halving; the smaller index is the root)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _identical(sha256s: Sequence[str]) -> list[tuple[int, int]]:
    """(first, other) for every file byte-identical to an earlier one."""
    first: dict[str, int] = {}
    pairs = []
    for i, digest in enumerate(sha256s):
        if first.setdefault(digest, i) != i:
            pairs.append((first[digest], i))
    return pairs


def phash_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """Every pair of hashes at most `threshold` bits apart (O(n^2) over 64-bit ints: about a
    second for 10,000 images)."""
    pairs = []
    for i in range(len(hashes) - 1):
        for j in np.flatnonzero(_distances(hashes[i], hashes[i + 1 :]) <= threshold):
            pairs.append((i, i + 1 + int(j)))
    return pairs


def _verify_all(prints: Sequence[Keypoints], pairs: list[tuple[int, int]]) -> list[Match | None]:
    """`match` for every pair, on a few threads (OpenCV releases the GIL)."""
    workers = min(4, os.cpu_count() or 1)
    if workers < 2 or len(pairs) < 16:
        return [match(prints[i], prints[j]) for i, j in pairs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: match(prints[p[0]], prints[p[1]]), pairs))


def group(sha256s: Sequence[str], links: Iterable[tuple[int, int]]) -> list[str]:
    """A group id for every item: items joined by a link share a group (transitively, by
    union-find), and byte-identical files always do.

    The id is `g-` plus the first 12 hex digits of the smallest SHA-256 in the group, so it does
    not depend on the order of the items or on files elsewhere in the data set.
    """
    joined = _UnionFind(len(sha256s))
    for i, j in list(links) + _identical(sha256s):
        joined.union(i, j)
    smallest: dict[int, str] = {}
    for i, digest in enumerate(sha256s):
        root = joined.find(i)
        smallest[root] = min(smallest.get(root, digest), digest)
    return [f"g-{smallest[joined.find(i)][:12]}" for i in range(len(sha256s))]


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
