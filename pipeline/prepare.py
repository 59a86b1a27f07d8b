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

import dataclasses
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import curation, duplicates, images, layouts, paths, splits
from pipeline import prepare_report as report
from pipeline.cli import stage_main
from pipeline.config import Params, PrepareParams
from pipeline.errors import UserError
from pipeline.files import (
    remove_stale_staging,
    staged_dir,
    write_bytes,
    write_json,
    write_text,
)
from pipeline.inspection import Item, find_duplicates, inspect_all

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
        group_sheet = report.group_sheet(items, groups, keep)  # from scratch, before it is cleared
        _move_into_place(out, rows, [items[k] for k in kept])
        shutil.rmtree(scratch, ignore_errors=True)  # what is left there was dropped
        write_text(out / "manifest.csv", report.csv_text(MANIFEST_COLUMNS, rows))
        sheet = report.contact_sheet(rows, out, params.classes)

    summary = report.data_summary(params, found, items, rejects, groups, conflicts, rows, pairs)
    summary["excluded"] = report.excluded_summary(excluded, unmatched)
    summary["grouping"] = report.grouping_summary([items[k] for k in kept], split_groups)
    write_json(paths.DATA_REPORTS / "summary.json", summary)
    rejected = report.reject_rows(rejects + excluded, found)
    write_text(paths.DATA_REPORTS / "rejects.csv", report.csv_text(("source", "reason"), rejected))
    write_text(paths.DATA_REPORTS / "label_conflicts.csv", report.conflict_csv(conflicts, items))
    write_text(
        paths.DATA_REPORTS / "duplicates.csv",
        report.csv_text(report.PAIR_COLUMNS, report.pair_rows(pairs, items, groups)),
    )
    write_bytes(paths.DATA_REPORTS / "duplicate_groups.png", images.png_bytes(group_sheet))
    write_bytes(paths.DATA_REPORTS / "contact_sheet.png", images.png_bytes(sheet))
    shutil.rmtree(paths.DATA_FAILURES, ignore_errors=True)  # an old failure is no longer the state
    report.print_summary(summary, found, rows)
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


@contextmanager
def _failure_report(rejects: list[tuple[str, str]], found: layouts.Found) -> Iterator[None]:
    """On a user error, write every rejected and skipped file with its reason where DVC does not
    delete it, and name that file in the error: one example in one line is not enough to fix a
    data set, and `dvc repro` has already removed the previous reports."""
    try:
        yield
    except UserError as error:
        path = paths.DATA_FAILURES / "rejects.csv"
        write_text(path, report.csv_text(("source", "reason"), report.reject_rows(rejects, found)))
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


if __name__ == "__main__":
    raise SystemExit(main())
