"""prepare's reports: reports/data/summary.json's figures, the rejects, conflicts and duplicate
pairs as CSV, the two contact sheets a human reviews, and the lines prepare prints.

pipeline.prepare keeps the procedure (find, inspect, group, split, write); this module turns what
it found into what a person reads, as evaluate_report does for evaluate.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline import curation, duplicates, images, layouts, matching, paths, splits
from pipeline.config import Params
from pipeline.files import printable
from pipeline.inspection import Item

PAIR_COLUMNS = (
    "group",
    "source_a",
    "source_b",
    "label_a",
    "label_b",
    "method",
    "hash_distance",
    *matching.MATCH_COLUMNS,
)


SHEET_GROUPS = 24  # duplicate groups on their contact sheet, largest first
SHEET_IMAGES = 6  # per class and split on the contact sheet


def excluded_summary(excluded: list[tuple[str, str]], unmatched: list[curation.Rule]) -> dict:
    """What data.exclude left out, by reason, and how many of its rules matched no file."""
    reasons = Counter(reason.split(": ", 1)[1] for _, reason in excluded)
    return {
        "total": len(excluded),
        "by_reason": dict(sorted(reasons.items())),
        "rules_matching_nothing": len(unmatched),
    }


def grouping_summary(items: list[Item], split_groups: list[str]) -> dict:
    """Whether the split is patient-level (every image has a patient or study), image-level
    (none has: near-duplicate groups only) or mixed, with the counts behind it."""
    with_id = sum(bool(i.ids) for i in items)
    level = "patient" if with_id == len(items) else "image" if with_id == 0 else "mixed"
    kinds = {k.split("-", 1)[0] for i in items for k in i.ids}
    return {
        "split_level": level,
        "ids_from": ", ".join(sorted(kinds)) or "none",
        "images_with_id": with_id,
        "split_groups": len(set(split_groups)),
        "id_groups": len({g for g in split_groups if not g.startswith("g-")}),
    }


def contact_sheet(rows: list[dict], out: Path, classes: tuple[str, ...]) -> Image.Image:
    """One row per class and split, `SHEET_IMAGES` images spread evenly over the manifest order."""
    sheet_rows = []
    for label in classes:
        for split in splits.SPLITS:
            paths = [r["path"] for r in rows if r["label"] == label and r["split"] == split]
            picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, SHEET_IMAGES).round()})
            chosen = [Image.open(out / paths[i]) for i in picks] if paths else []
            sheet_rows.append((f"{label} / {split}\n{len(paths)} images", chosen))
    return images.contact_sheet(sheet_rows)


def group_sheet(items: list[Item], groups: list[str], keep: list[bool]) -> Image.Image:
    """The `SHEET_GROUPS` largest duplicate groups, one row each, members side by side, captioned
    with their labels and whether they were dropped, so a human can judge the grouping."""
    members: dict[str, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    largest = sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m))
    rows = []
    for m in largest[:SHEET_GROUPS]:
        labels = "/".join(sorted({items[k].record.label for k in m}))
        dropped = " (dropped)" if not keep[m[0]] else ""
        caption = f"{groups[m[0]]}\n{len(m)} images, {labels}{dropped}"
        rows.append((caption, [Image.open(items[k].fitted) for k in m]))
    return images.contact_sheet(rows or [("no duplicate groups", [])], columns=8)


def pair_rows(pairs: list[duplicates.Pair], items: list[Item], groups: list[str]) -> list[dict]:
    """duplicates.csv: every pair with its group, both sources and labels, and how it was found."""
    rows = [
        {
            "group": groups[q.a],
            "source_a": items[q.a].record.source,
            "source_b": items[q.b].record.source,
            "label_a": items[q.a].record.label,
            "label_b": items[q.b].record.label,
            "method": q.method,
            "hash_distance": q.hash_distance,
            **matching.match_fields(q.match),
        }
        for q in pairs
    ]
    return sorted(rows, key=lambda r: (r["group"], r["source_a"], r["source_b"]))


def data_summary(
    params: Params,
    found: layouts.Found,
    items: list[Item],
    rejects: list[tuple[str, str]],
    groups: list[str],
    conflicts: list[duplicates.Conflict],
    rows: list[dict],
    pairs: list[duplicates.Pair],
) -> dict[str, Any]:
    """reports/data/summary.json: counts per class and split, rejects, masks, conversions,
    duplicates and conflicts."""
    cells = Counter((r["label"], r["split"]) for r in rows)
    return {
        "total": len(rows),
        "classes": {
            label: {s: cells[label, s] for s in splits.SPLITS}
            | {"total": sum(cells[label, s] for s in splits.SPLITS)}
            for label in params.classes
        },
        "splits": {s: sum(cells[c, s] for c in params.classes) for s in splits.SPLITS},
        "found": {"images": len(found.records), "valid": len(items)},
        "rejects": {
            "total": len(rejects),
            "fraction": round(len(rejects) / len(found.records), 4) if found.records else 0.0,
            "by_reason": dict(Counter(reason.split(":", 1)[0] for _, reason in rejects)),
        },
        "skipped": dict(Counter(reason.split(":", 1)[0] for _, reason in found.skipped)),
        "masks": _masks_summary(found, items, rows),
        "converted": dict(Counter(i.mode for i in items if i.mode != "RGB")),
        "duplicates": _duplicates_summary(items, groups, pairs),
        "conflicts": {
            "groups": len(conflicts),
            "images_dropped": len(items) - len(rows),
        },
    }


def _masks_summary(found: layouts.Found, items: list[Item], rows: list[dict]) -> dict[str, Any]:
    """Masks attached to the kept images, and their lesion areas (or why none was measured)."""
    with_masks = sum(bool(r["masks"]) for r in rows)
    kept = {r["source"] for r in rows}
    notes = [i.mask_note for i in items if i.mask_note and i.record.source in kept]
    unmeasured = Counter(note.split(":", 1)[0] for note in notes)
    return {
        "attached": sum(len(r["masks"].split(";")) for r in rows if r["masks"]),
        "images_with_masks": with_masks,
        "images_without_mask": len(rows) - with_masks if found.uses_masks else 0,
        "images_with_lesion_area": sum(bool(r["mask_area"]) for r in rows),
        "area_not_measured": dict(sorted(unmeasured.items())),
        "area_not_measured_example": notes[0] if notes else None,
    }


def _duplicates_summary(
    items: list[Item], groups: list[str], pairs: list[duplicates.Pair]
) -> dict[str, Any]:
    """Duplicate groups among the valid images (before conflicts are dropped), and how found."""
    sizes = Counter(groups)
    shared = Counter(i.sha256 for i in items)
    return {
        "groups": sum(n > 1 for n in sizes.values()),
        "images_in_groups": sum(n for n in sizes.values() if n > 1),
        "exact_copies": sum(n - 1 for n in shared.values()),
        "largest_group": max(sizes.values(), default=0),
        "pairs_by_method": dict(sorted(Counter(q.method for q in pairs).items())),
    }


def reject_rows(rejects: list[tuple[str, str]], found: layouts.Found) -> list[dict]:
    """rejects.csv: every rejected, skipped or excluded file and why, by source."""
    return [{"source": s, "reason": r} for s, r in sorted(rejects + list(found.skipped))]


def conflict_csv(conflicts: list[duplicates.Conflict], items: list[Item]) -> str:
    """label_conflicts.csv: each group whose members disagree on the label, and what was done."""
    rows = [
        {
            "group": c.group,
            "sources": ";".join(items[i].record.source for i in c.members),
            "labels": ";".join(c.labels),
            "action": c.action,
        }
        for c in conflicts
    ]
    return csv_text(("group", "sources", "labels", "action"), rows)


def csv_text(columns: Iterable[str], rows: Iterable[dict]) -> str:
    r"""CSV text (prepare's reports and the external stage's); a file name that is not UTF-8 is
    written with its odd bytes as `\xNN`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {k: printable(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows
    )
    return buffer.getvalue()


def print_summary(summary: dict[str, Any], found: layouts.Found, rows: list[dict]) -> None:
    """A few lines on stdout; the details are in reports/data/."""
    per_class = ", ".join(f"{c} {v['total']}" for c, v in summary["classes"].items())
    per_split = ", ".join(f"{s} {n}" for s, n in summary["splits"].items())
    print(f"prepare: {summary['total']} images ({per_class}; {per_split}) -> {paths.PREPARED}/")
    print(
        f"prepare: {summary['rejects']['total']} rejected, "
        f"{summary['duplicates']['groups']} duplicate groups, "
        f"{summary['conflicts']['groups']} label conflicts (see {paths.DATA_REPORTS}/)"
    )
    for kind, n in sorted(summary["skipped"].items()):
        print(f"prepare: warning: {n} skipped as {kind} (see {paths.DATA_REPORTS}/rejects.csv)")
    excluded, grouping = summary["excluded"], summary["grouping"]
    if excluded["total"]:
        reasons = ", ".join(f"{r} {n}" for r, n in excluded["by_reason"].items())
        print(f"prepare: {excluded['total']} excluded by data.exclude ({reasons})")
    if excluded["rules_matching_nothing"]:
        print(
            f"prepare: warning: {excluded['rules_matching_nothing']} data.exclude rules match "
            "no file (a typo excludes nothing)"
        )
    print(
        f"prepare: {grouping['split_level']}-level split: {grouping['split_groups']} groups "
        f"({grouping['id_groups']} by patient/study id; {grouping['images_with_id']} images "
        "have an id)"
    )
    missing = [r["source"] for r in rows if found.uses_masks and not r["masks"]]
    if missing:
        print(f"prepare: warning: {len(missing)} images have no mask, e.g. {missing[0]}")
    unmeasured = summary["masks"]["area_not_measured"]
    if unmeasured:
        kinds = ", ".join(f"{k} {n}" for k, n in unmeasured.items())
        print(
            f"prepare: warning: lesion area not measured for {sum(unmeasured.values())} images "
            f"({kinds}; e.g. {summary['masks']['area_not_measured_example']}): they are left "
            "out of the lesion-size subgroups"
        )
    for label, cells in summary["classes"].items():
        empty = [s for s in splits.SPLITS if not cells[s]]
        if empty:  # a group never straddles splits, so a class needs three groups to fill them
            print(
                f"prepare: warning: class {label!r} has no image in {', '.join(empty)} "
                f"(too few distinct images): its recall and F1 there are undefined and macro "
                f"metrics are averaged without it; add images of that class"
            )
