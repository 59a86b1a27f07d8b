"""Prepare: turn whatever is in `data.raw_dir` into a leakage-free, reviewable data set.

Finds the images (masks stay metadata), leaves out what the exclusion list (`data.exclude`) names,
validates and converts every file (PNG, JPEG, ... and DICOM; bad ones are rejected with a reason,
never a crash), groups exact and near-duplicates, resolves groups whose members carry different
labels, merges duplicate groups with patient or study groups where the data names them (DICOM
PatientID / StudyInstanceUID, a CSV's id column: hashed with `data.id_salt` first, never written
raw), splits train / val / test stratified by class and grouped, and writes:

    data/prepared/manifest.csv         path,label,split,group,sha256,phash,source,masks,mask_area,
                                       width,height (mask_area: lesion area / image area, union of
                                       the image's masks; empty where no mask marks a lesion)
    data/prepared/images/<label>/*.png 8-bit RGB, prepare.image_size square
    reports/data/summary.json          counts per class and split, rejects, duplicates, conflicts
    reports/data/rejects.csv           source,reason (rejected, skipped and excluded files)
    reports/data/label_conflicts.csv   group,sources,labels,action
    reports/data/duplicates.csv        every duplicate pair and how it was found (hash, keypoints)
    reports/data/duplicate_groups.png  the largest duplicate groups side by side, for a human
    reports/data/contact_sheet.png     a few images per class and split, for a human

Nothing in data/prepared is replaced unless the data set is usable (no empty class, rejects under
the limit). A failed run writes its full rejects report to reports/data-failures/ instead, which
is no DVC output (DVC deletes a stage's outputs before running it) and says where in its error.

Run: python -m pipeline.prepare [--params params.yaml]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from pipeline import curation, dicom, duplicates, images, layouts, matching, paths, splits
from pipeline.cli import stage_main
from pipeline.config import Params, PrepareParams
from pipeline.errors import UserError
from pipeline.files import (
    printable,
    remove_stale_staging,
    staged_dir,
    write_bytes,
    write_json,
    write_text,
)

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
MANIFEST_COLUMNS = (
    "path",
    "label",
    "split",
    "group",
    "sha256",
    "phash",
    "source",
    "masks",
    "mask_area",
    "width",
    "height",
)
SHEET_IMAGES = 6  # per class and split on the contact sheet
WORKERS = min(4, os.cpu_count() or 1)  # Pillow decodes and resizes with the GIL released
MASK_LEVEL = 128  # a mask pixel this bright or brighter is lesion (BUSI draws 0 / 255)


@dataclass(frozen=True)
class Item:
    """A record whose file passed validation, with what was learned from it."""

    record: layouts.Record
    fitted: Path  # the prepared PNG, in the scratch folder until its final name is known
    sha256: str
    phash: int
    keys: matching.Keypoints
    width: int
    height: int
    mode: str
    ids: tuple[str, ...] = ()  # patient/study pseudonyms (salted hashes), never raw ids
    mask_area: float | None = None  # lesion fraction of the image; None: no lesion marked
    mask_note: str | None = None  # why masks were there but no area was measured


def run(params: Params) -> dict[str, Any]:
    """Prepare the data set; return the summary (also written to reports/data/summary.json)."""
    p = params.prepare
    remove_stale_staging(paths.PREPARED)  # left by a run that was killed before it could clean up
    found, excluded, unmatched = _curated(params)
    # Each file is decoded once: a valid one is fitted and written to a scratch folder inside the
    # staged output, which replaces data/prepared/ only if every check below passes.
    with staged_dir(paths.PREPARED) as out:
        scratch = out / "scratch"
        items, rejects = inspect_all(found.records, scratch, p, params.data.id_salt)
        with _failure_report(rejects + excluded, found):
            _check_rejects(len(found.records), rejects, p)
            pairs, groups = find_duplicates(items, p)
            labels = [i.record.label for i in items]
            keep, conflicts = duplicates.resolve_conflicts(labels, groups, p.conflict_policy)
            kept = [k for k, ok in enumerate(keep) if ok]
            _check_classes(params, [labels[k] for k in kept], found, rejects, keep, labels)
        # Conflicts are judged on duplicate groups (one lesion, two labels); a patient's benign
        # and malignant lesions are no conflict, they only have to stay in one split.
        split_groups, rows = _split([items[k] for k in kept], [groups[k] for k in kept], params)
        group_sheet = _group_sheet(items, groups, keep)  # from scratch, before it is cleared
        _move_into_place(out, rows, [items[k] for k in kept])
        shutil.rmtree(scratch, ignore_errors=True)  # what is left there was dropped
        write_text(out / "manifest.csv", csv_text(MANIFEST_COLUMNS, rows))
        sheet = _contact_sheet(rows, out, params.classes)

    summary = _summary(params, found, items, rejects, groups, conflicts, rows, pairs)
    summary["excluded"] = _excluded_summary(excluded, unmatched)
    summary["grouping"] = _grouping_summary([items[k] for k in kept], split_groups)
    write_json(paths.DATA_REPORTS / "summary.json", summary)
    rejected = _reject_rows(rejects + excluded, found)
    write_text(paths.DATA_REPORTS / "rejects.csv", csv_text(("source", "reason"), rejected))
    write_text(paths.DATA_REPORTS / "label_conflicts.csv", _conflict_csv(conflicts, items))
    write_text(
        paths.DATA_REPORTS / "duplicates.csv",
        csv_text(PAIR_COLUMNS, _pair_rows(pairs, items, groups)),
    )
    write_bytes(paths.DATA_REPORTS / "duplicate_groups.png", images.png_bytes(group_sheet))
    write_bytes(paths.DATA_REPORTS / "contact_sheet.png", images.png_bytes(sheet))
    shutil.rmtree(paths.DATA_FAILURES, ignore_errors=True)  # an old failure is no longer the state
    _report(summary, found, rows)
    return summary


def _split(
    kept: list[Item], groups: list[str], params: Params
) -> tuple[list[str], list[dict[str, Any]]]:
    """(split groups, manifest rows) of the kept images: duplicate groups merged with patient
    groups, then assigned to train / val / test stratified by class, whole groups at a time."""
    p = params.prepare
    split_groups = splits.merge_groups(groups, [item.ids for item in kept])
    split_of = splits.assign_splits(
        [item.record.label for item in kept],
        split_groups,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
        seed=params.seed,
    )
    return split_groups, _manifest_rows(kept, split_groups, split_of)


def _move_into_place(out: Path, rows: list[dict[str, Any]], kept: list[Item]) -> None:
    """Each kept image's fitted PNG from the scratch folder to its manifest path under `out`."""
    for row, item in zip(rows, kept, strict=True):
        (out / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        item.fitted.rename(out / row["path"])


def main(argv: Sequence[str] | None = None) -> int:
    """The `prepare` stage's command line (dvc.yaml); a user error is one line and exit code 2."""
    return stage_main(__doc__, run, argv)


T = TypeVar("T")
R = TypeVar("R")


def parallel(func: Callable[[T], R], things: Sequence[T]) -> list[R]:
    """`[func(t) for t in things]` on a few threads, results in input order."""
    if WORKERS < 2 or len(things) < 8:
        return [func(t) for t in things]
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(func, things))


def inspect_file(
    record: layouts.Record, fitted: Path, p: PrepareParams, salt: str
) -> Item | images.RejectedImage:
    """Validate one file and write its prepared PNG to `fitted`; the rejection if it is unusable.
    A DICOM file (by content) is cut to its ultrasound region and brings its patient and study."""
    ids: list[tuple[str, str | None]] = list(record.ids)
    try:
        data = images.read_file(record.path)
        if dicom.is_dicom(data):
            scan = dicom.decode(
                data,
                max_pixels=p.max_pixels,
                frames=p.dicom_frames,
                crop=p.dicom_region_crop,
            )
            decoded = scan.decoded
            ids += [("patient", scan.identity.patient), ("study", scan.identity.study)]
        else:
            decoded = images.decode(data, max_pixels=p.max_pixels)
    except images.RejectedImage as rejected:
        return rejected
    pseudonyms = tuple(sorted({splits.pseudonym(_kind(c), v, salt) for c, v in ids if v}))
    images.save_png(images.fit(decoded.image, p.image_size, p.keep_aspect), fitted)
    area, note = _mask_area(record, decoded.width, decoded.height, p.max_pixels)
    return Item(
        record,
        fitted,
        duplicates.sha256(data),
        duplicates.phash(decoded.image),
        matching.keypoints(decoded.image),
        decoded.width,
        decoded.height,
        decoded.mode,
        pseudonyms,
        area,
        note,
    )


def inspect_all(
    records: Sequence[layouts.Record], scratch: Path, p: PrepareParams, salt: str
) -> tuple[list[Item], list[tuple[str, str]]]:
    """`inspect_file` on every record, on threads, prepared PNGs numbered under `scratch`: the
    valid items in record order and (source, reason) for each rejected file. Development data and
    external sites go through this one inspection."""
    jobs = [(r, scratch / f"{n:06d}.png") for n, r in enumerate(records)]
    checked = parallel(lambda job: inspect_file(*job, p, salt), jobs)
    items = [c for c in checked if isinstance(c, Item)]
    rejects = [
        (r.source, str(c))
        for r, c in zip(records, checked, strict=True)
        if isinstance(c, images.RejectedImage)
    ]
    return items, rejects


def _mask_area(
    record: layouts.Record, width: int, height: int, max_pixels: int
) -> tuple[float | None, str | None]:
    """(lesion area as a fraction of the image, None) from the union of the image's masks, for
    the lesion-size subgroups of the model card. BUSI draws one mask per lesion, so an image with
    two lesions has two masks and its lesion burden is their union (overlaps counted once).

    The area is None when no mask marks anything (BUSI's normal images have all-black masks) and
    when it cannot be measured, with the reason as the second value: an unreadable mask, or one
    whose size differs from its image's (a DICOM cut to its ultrasound region, a mask drawn on
    another copy): how it would line up is unknown, so no area is guessed.
    """
    if not record.masks:
        return None, None
    union = np.zeros((height, width), dtype=bool)
    for source, path in zip(record.masks, record.mask_paths(), strict=True):
        try:
            mask = images.decode(
                images.read_file(path), max_pixels=max_pixels, min_side=1, grey_ok=True
            )
        except images.RejectedImage as rejected:
            return None, f"unreadable_mask: {source}: {rejected}"
        if (mask.width, mask.height) != (width, height):
            return None, (
                f"mask_size_mismatch: {source} is {mask.width}x{mask.height}, "
                f"its image {width}x{height}"
            )
        union |= np.asarray(mask.image.convert("L")) >= MASK_LEVEL
    area = float(union.mean())
    return (area if area > 0 else None), None


def _kind(column: str) -> str:
    """`patient` or `study` for an id column (a CSV's `patient_id` and a DICOM PatientID are one
    id space: the same patient in both is one group)."""
    return "study" if "study" in column.lower() else "patient"


def _curated(params: Params) -> tuple[layouts.Found, list[tuple[str, str]], list[curation.Rule]]:
    """The records left after the exclusion list, the excluded (source, reason) pairs, and the
    rules that matched no file (worth a warning: a typo excludes nothing)."""
    found = layouts.discover(params.data.raw_dir, params.classes, params.data.group_column)
    rules = curation.read_rules(params.data.exclude)
    kept, excluded, used = [], [], set()
    for record in found.records:
        rule = curation.reason_for(record.source, rules)
        if rule is None:
            kept.append(record)
        else:
            excluded.append((record.source, f"excluded: {rule.reason}"))
            used.add(rule.line)
    unmatched = [r for r in rules if r.line not in used]
    return dataclasses.replace(found, records=tuple(kept)), excluded, unmatched


def _excluded_summary(excluded: list[tuple[str, str]], unmatched: list[curation.Rule]) -> dict:
    reasons = Counter(reason.split(": ", 1)[1] for _, reason in excluded)
    return {
        "total": len(excluded),
        "by_reason": dict(sorted(reasons.items())),
        "rules_matching_nothing": len(unmatched),
    }


def _grouping_summary(items: list[Item], split_groups: list[str]) -> dict:
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


def find_duplicates(items: list[Item], p: PrepareParams) -> tuple[list[duplicates.Pair], list[str]]:
    """Every duplicate pair among the valid items, and the duplicate group of each item."""
    pairs = duplicates.find_pairs(
        [i.sha256 for i in items],
        [i.phash for i in items],
        [i.keys for i in items],
        phash_threshold=p.phash_threshold,
        min_inliers=p.keypoint_inliers,
        min_correlation=p.keypoint_correlation,
        per_image=p.keypoint_candidates,
    )
    return pairs, duplicates.group([i.sha256 for i in items], [(q.a, q.b) for q in pairs])


@contextmanager
def _failure_report(rejects: list[tuple[str, str]], found: layouts.Found) -> Iterator[None]:
    """On a user error, write every rejected and skipped file with its reason where DVC does not
    delete it, and name that file in the error: one example in one line is not enough to fix a
    data set, and `dvc repro` has already removed the previous reports."""
    try:
        yield
    except UserError as error:
        path = paths.DATA_FAILURES / "rejects.csv"
        write_text(path, csv_text(("source", "reason"), _reject_rows(rejects, found)))
        raise UserError(f"{error} (every rejected file and its reason: {path})") from None


def _check_rejects(found: int, rejects: list[tuple[str, str]], p: PrepareParams) -> None:
    if not found or len(rejects) / found <= p.max_reject_fraction:
        return
    kinds = Counter(reason.split(":", 1)[0] for _, reason in rejects).most_common()
    source, reason = rejects[0]
    raise UserError(
        f"prepare.max_reject_fraction: {len(rejects)} of {found} image files were rejected "
        f"({len(rejects) / found:.0%}, limit {p.max_reject_fraction:.0%}): "
        f"{', '.join(f'{k} {n}' for k, n in kinds)}; e.g. {source}: {reason}. "
        "Fix or remove those files, or raise prepare.max_reject_fraction"
    )


def _check_classes(
    params: Params,
    kept_labels: list[str],
    found: layouts.Found,
    rejects: list[tuple[str, str]],
    keep: list[bool],
    labels: list[str],
) -> None:
    counts = Counter(kept_labels)
    for label in params.classes:
        if counts[label]:
            continue
        n_found = sum(r.label == label for r in found.records)
        rejected = {s for s, _ in rejects}
        n_rejected = sum(r.label == label and r.source in rejected for r in found.records)
        n_dropped = sum(not ok and lab == label for ok, lab in zip(keep, labels, strict=True))
        raise UserError(
            f"classes: no usable image of class {label!r} in {params.data.raw_dir} "
            f"({n_found} found, {n_rejected} rejected, {n_dropped} dropped as label conflicts); "
            f"add images of that class or remove it from `classes` in params.yaml"
        )


def _manifest_rows(items: list[Item], groups: list[str], split_of: list[str]) -> list[dict]:
    """Manifest rows in item order (class order, then source); output names are unique."""
    rows, taken = [], set()
    for item, group, split in zip(items, groups, split_of, strict=True):
        r = item.record
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(r.source).stem).strip("-.") or "image"
        name, n = f"{stem}-{item.sha256[:8]}", 1
        while (r.label, name) in taken:  # same bytes and same stem in two folders of one class
            n += 1
            name = f"{stem}-{item.sha256[:8]}-{n}"
        taken.add((r.label, name))
        rows.append(
            {
                "path": f"images/{r.label}/{name}.png",
                "label": r.label,
                "split": split,
                "group": group,
                "sha256": item.sha256,
                "phash": f"{item.phash:016x}",
                "source": r.source,
                "masks": ";".join(r.masks),
                "mask_area": "" if item.mask_area is None else f"{item.mask_area:.6f}",
                "width": item.width,
                "height": item.height,
            }
        )
    return rows


def _contact_sheet(rows: list[dict], out: Path, classes: tuple[str, ...]) -> Image.Image:
    """One row per class and split, `SHEET_IMAGES` images spread evenly over the manifest order."""
    sheet_rows = []
    for label in classes:
        for split in splits.SPLITS:
            paths = [r["path"] for r in rows if r["label"] == label and r["split"] == split]
            picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, SHEET_IMAGES).round()})
            chosen = [Image.open(out / paths[i]) for i in picks] if paths else []
            sheet_rows.append((f"{label} / {split}\n{len(paths)} images", chosen))
    return images.contact_sheet(sheet_rows)


def _group_sheet(items: list[Item], groups: list[str], keep: list[bool]) -> Image.Image:
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


def _pair_rows(pairs: list[duplicates.Pair], items: list[Item], groups: list[str]) -> list[dict]:
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


def _summary(
    params: Params,
    found: layouts.Found,
    items: list[Item],
    rejects: list[tuple[str, str]],
    groups: list[str],
    conflicts: list[duplicates.Conflict],
    rows: list[dict],
    pairs: list[duplicates.Pair],
) -> dict[str, Any]:
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


def _reject_rows(rejects: list[tuple[str, str]], found: layouts.Found) -> list[dict]:
    return [{"source": s, "reason": r} for s, r in sorted(rejects + list(found.skipped))]


def _conflict_csv(conflicts: list[duplicates.Conflict], items: list[Item]) -> str:
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


def _report(summary: dict[str, Any], found: layouts.Found, rows: list[dict]) -> None:
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


if __name__ == "__main__":
    raise SystemExit(main())
