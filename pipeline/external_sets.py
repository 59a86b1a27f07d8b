"""External validation sets (`data.external`): prepared like development data, kept apart from it.

Each set is found, validated and converted by prepare's own functions (the same layouts, the same
rejections, the same fitting), and its own duplicates and patients are grouped the same way, but
it is never split and nothing is fitted on it. Before it is scored, every image that repeats a
development image is left out, with the pair listed:

- `exact`: byte-identical files (SHA-256);
- `near`: perceptual hashes within `prepare.phash_threshold` bits (re-encoded, resized, brightened);
- `crop/shift`: prepare's two-step keypoint search (pipeline.duplicates: candidates from the
  locality-sensitive index over both sets, then RANSAC and correlation), cross pairs only;
- `same patient`: a patient or study pseudonym (salted with `data.id_salt`) found in both.

A left-out image takes its within-site group (its copies and its patient's other images) with it:
they are not new to the model either. The development side is read again from `data.raw_dir`,
only the files the manifest kept, through the same inspection, so crops are matched at the
original resolution, not at the prepared one.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import duplicates, layouts, matching, splits
from pipeline.config import ExternalSet, Params, PrepareParams
from pipeline.errors import UserError
from pipeline.inspection import Item, find_duplicates, inspect_all, parallel

LEAK_COLUMNS = (
    "external_source",
    "external_label",
    "development_source",
    "development_label",
    "development_split",
    "how",
    "hash_distance",
    *matching.MATCH_COLUMNS,
)
ROW_COLUMNS = ("source", "label", "group", "sha256", "width", "height", "status")


@dataclass(frozen=True)
class Leak:
    """An external image found in development data, and how it was found."""

    external: int  # index into the site's valid items
    development: int  # index into the development items
    how: str  # "exact", "near", "crop/shift" or "same patient"
    hash_distance: int
    match: matching.Match | None = None


@dataclass
class Site:
    """One prepared external set: the images to score and everything left out on the way."""

    name: str
    source: str  # data.external[i].path
    images: np.ndarray  # (N, S, S, 3) uint8, prepared like data/prepared
    labels: np.ndarray  # (N,) class indices
    groups: np.ndarray  # (N,) duplicate or patient group ids (the unit of the intervals)
    rows: list[dict]  # one row per valid image: source, label, group, sha256, size, status
    leak_rows: list[dict]  # one row per development pair found (LEAK_COLUMNS)
    counts: dict[str, int] = field(default_factory=dict)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # originals of the kept images
    answers: list[dict] = field(default_factory=list)  # the release's answers, once scored


def development_items(params: Params, manifest: Sequence[dict], scratch: Path) -> list[Item]:
    """The development images the manifest kept, inspected again from `data.raw_dir` (their
    fingerprints are not stored: keypoints are several KB per image)."""
    wanted = {row["source"]: row for row in manifest}
    found = layouts.discover(params.data.raw_dir, params.classes, params.data.group_column)
    records = [r for r in found.records if r.source in wanted]
    missing = len(wanted) - len(records)
    if missing:
        raise UserError(
            f"data.raw_dir: {missing} images of data/prepared/manifest.csv are no longer in "
            f"{params.data.raw_dir}; rerun prepare (dvc repro) before external validation"
        )
    return inspect_all(records, scratch, params.prepare, params.data.id_salt)[0]


def prepare_site(
    site: ExternalSet, params: Params, development: list[Item], dev_rows: dict[str, dict]
) -> Site:
    """Find, validate and convert one external set, group it, and leave out what repeats
    development data (module doc). `dev_rows`: the manifest row of each development source."""
    p = params.prepare
    found = _discover(site, params)
    with tempfile.TemporaryDirectory(prefix="external-") as tmp:
        items, rejects = inspect_all(found.records, Path(tmp), p, params.data.id_salt)
        _check_usable(site, len(found.records), rejects, items, p)
        _, groups = find_duplicates(items, p)
        labels = [i.record.label for i in items]
        keep, conflicts = duplicates.resolve_conflicts(labels, groups, p.conflict_policy)
        groups = splits.merge_groups(groups, [i.ids for i in items])
        leaks = find_leaks(items, development, p)
        leaked_groups = {groups[leak.external] for leak in leaks}
        status = [_status(k, keep[k], groups[k], leaks, leaked_groups) for k in range(len(items))]
        kept = [k for k, s in enumerate(status) if s == "kept"]
        arrays = [np.asarray(Image.open(items[k].fitted).convert("RGB")) for k in kept]
    size = params.prepare.image_size
    return Site(
        name=site.name,
        source=site.path,
        images=np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8),
        labels=np.array([params.classes.index(items[k].record.label) for k in kept], np.int64),
        groups=np.array([groups[k] for k in kept], dtype=object),
        rows=[_row(item, groups[k], status[k]) for k, item in enumerate(items)],
        leak_rows=[_leak_row(leak, items, development, dev_rows) for leak in leaks],
        counts={
            "found": len(found.records),
            "rejected": len(rejects),
            "valid": len(items),
            "label_conflict_groups": len(conflicts),
            "left_out_duplicating_development": sum(s.startswith("duplicates") for s in status),
            "left_out_with_their_group": sum(s.startswith("group of") for s in status),
            "left_out_label_conflict": sum(s == "label conflict" for s in status),
            "kept": len(kept),
            "kept_groups": len({groups[k] for k in kept}),
        },
        rejects=rejects + list(found.skipped),
        sizes=[(items[k].width, items[k].height) for k in kept],
    )


def find_leaks(external: list[Item], development: list[Item], p: PrepareParams) -> list[Leak]:
    """Every (external, development) pair that is one image or one patient, each external image
    once with its strongest evidence (exact, then same patient, near, crop/shift)."""
    found: dict[int, Leak] = {}
    by_sha = {d.sha256: j for j, d in enumerate(development)}
    by_id: dict[str, int] = {}
    for j, d in enumerate(development):
        for key in d.ids:
            by_id.setdefault(key, j)
    dev_hashes = np.array([d.phash for d in development], dtype=np.uint64)
    for i, e in enumerate(external):
        distances = _hamming(dev_hashes, e.phash)
        if e.sha256 in by_sha:
            j = by_sha[e.sha256]
            found[i] = Leak(i, j, "exact", int(distances[j]))
        elif shared := sorted(set(e.ids) & by_id.keys()):
            j = by_id[shared[0]]
            found[i] = Leak(i, j, "same patient", int(distances[j]))
        elif len(dev_hashes) and distances.min() <= p.phash_threshold:
            j = int(distances.argmin())
            found[i] = Leak(i, j, "near", int(distances[j]))
    for i, j, verified in _keypoint_pairs(external, development, set(found), p):
        distance = duplicates.hamming(external[i].phash, development[j].phash)
        found[i] = Leak(i, j, "crop/shift", distance, verified)
    return [found[i] for i in sorted(found)]


def _keypoint_pairs(
    external: list[Item], development: list[Item], done: set[int], p: PrepareParams
) -> list[tuple[int, int, matching.Match]]:
    """Cross pairs proposed by pipeline.duplicates' candidate index over both sets and accepted by
    its verification: at most `prepare.keypoint_candidates` checks per external image, best-voted
    first, stopping at the first accepted one."""
    n = len(development)
    prints = [d.keys for d in development] + [e.keys for e in external]
    queue = duplicates.candidates(prints, p.keypoint_candidates * duplicates.CANDIDATE_DEPTH)
    per_image: dict[int, list[int]] = {}
    for a, b in queue:  # a < b: a cross pair has its development image first
        if a < n <= b and b - n not in done:
            per_image.setdefault(b - n, []).append(a)
    jobs = [(i, j) for i, js in per_image.items() for j in js[: p.keypoint_candidates]]
    results = parallel(lambda job: matching.match(prints[job[1]], prints[n + job[0]]), jobs)
    accepted: dict[int, tuple[int, matching.Match]] = {}
    for (i, j), m in zip(jobs, results, strict=True):
        if (
            m is not None
            and i not in accepted
            and m.accepted(p.keypoint_inliers, p.keypoint_correlation)
        ):
            accepted[i] = (j, m)
    return [(i, j, m) for i, (j, m) in sorted(accepted.items())]


def _hamming(hashes: np.ndarray, one: int) -> np.ndarray:
    """Bits differing between `one` and each 64-bit hash in `hashes`."""
    xor = np.bitwise_xor(hashes, np.uint64(one))
    return np.unpackbits(xor.view(np.uint8)).reshape(-1, 64).sum(axis=1)


def _discover(site: ExternalSet, params: Params) -> layouts.Found:
    """The set's records; layouts' errors name `data.raw_dir`, so they are renamed for the site."""
    try:
        return layouts.discover(site.path, params.classes, site.group_column)
    except UserError as error:
        key = f"data.external[{site.name}]"
        message = str(error).replace("data.raw_dir", key).replace("data.group_column", key)
        raise UserError(message) from None


def _check_usable(
    site: ExternalSet,
    found: int,
    rejects: list[tuple[str, str]],
    items: list[Item],
    p: PrepareParams,
) -> None:
    """Prepare's limits, applied to the site: rejects under `prepare.max_reject_fraction`."""
    if not found:
        raise UserError(
            f"data.external[{site.name}]: no image found in {site.path}; expected class folders "
            "or a CSV with path,label columns"
        )
    if len(rejects) / found > p.max_reject_fraction:
        kinds = Counter(reason.split(":", 1)[0] for _, reason in rejects).most_common()
        raise UserError(
            f"data.external[{site.name}]: {len(rejects)} of {found} image files were rejected "
            f"({', '.join(f'{k} {n}' for k, n in kinds)}; e.g. {rejects[0][0]}: {rejects[0][1]}), "
            f"over prepare.max_reject_fraction {p.max_reject_fraction:.0%}; fix or remove them"
        )


def _status(k: int, keep: bool, group: str, leaks: list[Leak], leaked: set[str]) -> str:
    """Why image k is left out, or "kept"."""
    own = next((leak for leak in leaks if leak.external == k), None)
    if own is not None:
        return f"duplicates development ({own.how})"
    if group in leaked:
        return "group of a development duplicate"
    return "kept" if keep else "label conflict"


def _row(item: Item, group: str, status: str) -> dict:
    return {
        "source": item.record.source,
        "label": item.record.label,
        "group": group,
        "sha256": item.sha256,
        "width": item.width,
        "height": item.height,
        "status": status,
    }


def _leak_row(
    leak: Leak, external: list[Item], development: list[Item], dev_rows: dict[str, dict]
) -> dict:
    e, d = external[leak.external], development[leak.development]
    return {
        "external_source": e.record.source,
        "external_label": e.record.label,
        "development_source": d.record.source,
        "development_label": d.record.label,
        "development_split": dev_rows.get(d.record.source, {}).get("split", ""),
        "how": leak.how,
        "hash_distance": leak.hash_distance,
        **matching.match_fields(leak.match),
    }
