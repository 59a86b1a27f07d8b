"""Find the images, their labels and their masks in whatever a user put in `data.raw_dir`.

Three layouts are understood, and nothing is guessed beyond them:

- the BUSI download as-is: `Dataset_BUSI_with_GT/<class>/<class> (n).png` next to
  `<class> (n)_mask.png`, `_mask_1.png`, `_mask_2.png` (`raw_dir` may point at the download's
  folder or at any folder that holds it as its only sub-folder);
- any folder of class sub-folders (the same thing without masks);
- a CSV file with `path,label` columns (paths relative to the CSV; an optional `masks` column
  lists mask paths joined by `;`), or with `sop_instance_uid,label` columns for the DICOM files
  anywhere under the CSV's folder (a PACS export names its files by no rule a user controls).

Images may be DICOM files (any name: exports often have no suffix); `prepare` reads them. A CSV
may carry a patient or study id column (`patient_id`, `study_id`, or `data.group_column`): its
ids come back raw in `Record.ids` for `prepare` to hash and must never be written as they are.

Masks never become records: each image keeps its mask paths as metadata. Everything left out for
a reason a user should see (a mask without its image, a folder that is not a class, an image file
outside any class folder) comes back in `Found.skipped` with that reason, never silently.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline import dicom
from pipeline.errors import UserError

# `benign (1)_mask`, `benign (1)_mask_1`: the stem of the image is what comes before `_mask`.
MASK_STEM = re.compile(r"^(?P<image>.+?)_mask(?:_\d+)?$", re.IGNORECASE)
IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".webp",
    ".dcm",
    ".dicom",
}
GROUP_COLUMNS = ("patient_id", "study_id")  # recognised id columns, when data.group_column is null
# Files that operating systems and archivers leave behind; never data, never worth a report line.
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "__macosx"}
OUTSIDE = "outside"  # a listed path that leaves the CSV's folder
NOT_A_FILE = "not_a_file: a named pipe, socket or device, not a regular file (not read)"
MAX_WRAPPER_DEPTH = 3  # how many single-folder levels (download/archive wrappers) to look through


@dataclass(frozen=True)
class Record:
    """One candidate image: where to read it, how to name it in reports, its label and masks."""

    source: str  # posix path relative to the raw input (the folder, or the CSV's folder)
    path: Path  # where the file is (it may be missing or not an image: validation decides)
    label: str
    masks: tuple[str, ...] = ()  # mask sources, same convention as `source`
    ids: tuple[tuple[str, str], ...] = ()  # (column, raw patient/study id): never written as is

    def mask_paths(self) -> tuple[Path, ...]:
        """Where the mask files are: `path` is always `<raw input> / source`, and masks are named
        relative to the same raw input, so they sit under the ancestor `source` starts from."""
        base = self.path.parents[len(Path(self.source).parts) - 1]
        return tuple(base / mask for mask in self.masks)


@dataclass(frozen=True)
class Found:
    """What `discover` found: candidate images, and things left out with a reason."""

    kind: str  # "folders" or "csv"
    records: tuple[Record, ...]  # sorted by (class order, source)
    skipped: tuple[tuple[str, str], ...]  # (source, reason), sorted; not images, never counted
    uses_masks: bool  # whether any mask was found; if so, an image without one is worth a report


def is_mask(path: str | Path) -> bool:
    """True for BUSI-style mask files: `<image stem>_mask`, `_mask_1`, `_mask_2`, ..."""
    return MASK_STEM.match(Path(path).stem) is not None


def discover(raw: str | Path, classes: tuple[str, ...], group_column: str | None = None) -> Found:
    """Find image records under `raw` (a folder or a CSV file) for the given class names.

    Raises UserError when `raw` does not exist, holds no class folder, or a CSV is malformed,
    lacks `group_column`, or names a label outside `classes`.
    """
    raw = Path(raw)
    if raw.is_file():
        if raw.suffix.lower() != ".csv":
            raise UserError(
                f"data.raw_dir: {raw} is a file but not a CSV; point it at a folder of class "
                "sub-folders or a CSV with path,label columns"
            )
        return _from_csv(raw, classes, group_column)
    if not raw.is_dir():
        raise UserError(
            f"data.raw_dir: folder not found: {raw}; put a BUSI download there or point "
            "data.raw_dir at a folder of class sub-folders or a CSV with path,label columns"
        )
    return _from_folders(raw, classes)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in SYSTEM_FILES


def _children(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _visible(p)), key=lambda p: p.name)


def _class_of(name: str, classes: tuple[str, ...]) -> str | None:
    """The params class a folder name stands for (case-insensitive: `Benign` is `benign`)."""
    matches = [c for c in classes if c.lower() == name.lower()]
    return matches[0] if matches else None


def _class_root(raw: Path, classes: tuple[str, ...]) -> Path:
    """The folder whose sub-folders are the classes: `raw` itself or a lone wrapper inside it."""
    folder = raw
    for _ in range(MAX_WRAPPER_DEPTH + 1):
        subfolders = [p for p in _children(folder) if p.is_dir()]
        if any(_class_of(p.name, classes) for p in subfolders):
            return folder
        if len(subfolders) != 1:
            break
        folder = subfolders[0]
    raise UserError(
        f"data.raw_dir: no class folder ({', '.join(classes)}) found in {raw}; expected "
        f"{raw}/<class>/<image> (a BUSI download, possibly inside one wrapper folder) or a CSV "
        "with path,label columns"
    )


def walk_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(every visible regular file below `folder`, (path, reason) for each link not followed
    and each thing that is not a regular file): prepare's policy, for any caller that walks."""
    problems: list[tuple[Path, str]] = []
    return _files_under(folder, folder, problems), problems


def path_problem(listed: str, root: Path) -> str | None:
    """Why a path listed in a CSV must not be read, or None: it leaves `root` (the CSV's folder)
    by `..`, by being absolute or through a link. The same reason whether a file is there or not,
    so a refusal never tells what exists outside."""
    relative = os.path.normpath(listed.replace("\\", "/"))
    inside = not os.path.isabs(relative) and relative.split(os.sep)[0] != ".."
    if not inside or not (root / relative).resolve().is_relative_to(root.resolve()):
        return f"{OUTSIDE}: the path leaves the CSV's folder (by .., as absolute or through a link)"
    return None


def _files_under(folder: Path, root: Path, problems: list[tuple[Path, str]]) -> list[Path]:
    """All visible files below `folder`, in a stable order. A link is followed only when it
    resolves inside `root` and not to a folder that holds it (or one already being walked);
    every link not followed goes to `problems` with the reason, never silently."""
    return _walk(folder, root.resolve(), problems, frozenset({folder.resolve()}))


def _walk(
    folder: Path, root: Path, problems: list[tuple[Path, str]], walking: frozenset[Path]
) -> list[Path]:
    files: list[Path] = []
    for child in _children(folder):
        problem = _link_problem(child, root, walking) if child.is_symlink() else None
        if problem:
            problems.append((child, problem))
        elif child.is_dir():
            files.extend(_walk(child, root, problems, walking | {child.resolve()}))
        elif child.is_file():
            files.append(child)
        else:  # never opened: reading a named pipe would wait for a writer forever
            problems.append((child, NOT_A_FILE))
    return files


def _link_problem(link: Path, root: Path, walking: frozenset[Path]) -> str | None:
    """Why `link` must not be followed, or None. A link back up the tree (`normal/loop -> ..`)
    would import the whole tree again under another class."""
    shown = f"{link.name} -> {os.readlink(link)}"
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        return f"dangling_link: {shown} points to nothing"
    except (RuntimeError, OSError):
        return f"link_loop: {shown} refers to itself"
    if not target.is_relative_to(root):
        return f"link_outside: {shown} resolves outside data.raw_dir ({target})"
    if target.is_dir() and (link.parent.resolve().is_relative_to(target) or target in walking):
        return f"link_to_ancestor: {shown} would read a folder that holds it again"
    return None


def _from_folders(raw: Path, classes: tuple[str, ...]) -> Found:
    root = _class_root(raw, classes)
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    uses_masks = False
    problems: list[tuple[Path, str]] = []
    for child in _children(root):
        problem = _link_problem(child, raw.resolve(), frozenset()) if child.is_symlink() else None
        if problem:
            problems.append((child, problem))
            continue
        label = _class_of(child.name, classes) if child.is_dir() else None
        if label is None:
            skipped += _not_a_class_folder(child, raw, classes)
            continue
        found, masks_skipped, has_masks = _class_folder(child, label, raw, problems)
        records += found
        skipped += masks_skipped
        uses_masks |= has_masks
    skipped += [(_rel(link, raw), reason) for link, reason in problems]
    return Found("folders", _sorted(records, classes), tuple(sorted(skipped)), uses_masks)


def _rel(path: Path, raw: Path) -> str:
    return path.relative_to(raw).as_posix()


def _not_a_class_folder(child: Path, raw: Path, classes: tuple[str, ...]) -> list[tuple[str, str]]:
    """Why a folder or file beside the class folders is skipped: a folder of another name, or an
    image outside any class folder (other files are not mentioned)."""
    if child.is_dir():
        n = len(_files_under(child, raw, []))
        reason = (
            f"unknown_folder: {child.name!r} is not one of classes {list(classes)}; "
            f"its {n} files are ignored (add the class to params.yaml or move the folder)"
        )
        return [(_rel(child, raw) + "/", reason)]
    if child.suffix.lower() in IMAGE_SUFFIXES:
        return [(_rel(child, raw), "outside_class_folder: not inside a class folder")]
    return []


def _class_folder(
    folder: Path, label: str, raw: Path, problems: list[tuple[Path, str]]
) -> tuple[list[Record], list[tuple[str, str]], bool]:
    """(records, skipped, whether any mask was seen) of one class folder: every image under it,
    with the masks named after it (`x_mask.png`, `x_mask_1.png`) in the same folder attached."""
    images: dict[tuple[Path, str], list[Path]] = {}  # x.png beside x.jpg: both kept
    masks: list[tuple[Path, str, Path]] = []
    for path in _files_under(folder, raw, problems):
        match = MASK_STEM.match(path.stem)
        if match:
            masks.append((path.parent, match["image"], path))
        else:
            images.setdefault((path.parent, path.stem), []).append(path)
    skipped = []
    attached: dict[Path, list[str]] = {}
    for parent, image_stem, mask in masks:
        owners = images.get((parent, image_stem), [])
        if not owners:
            reason = f"mask_without_image: no image named {image_stem!r} next to it"
            skipped.append((_rel(mask, raw), reason))
        for image in owners:
            attached.setdefault(image, []).append(_rel(mask, raw))
    records = [
        Record(_rel(path, raw), path, label, tuple(sorted(attached.get(path, []))))
        for same_stem in images.values()
        for path in same_stem
    ]
    return records, skipped, bool(masks)


def _from_csv(path: Path, classes: tuple[str, ...], group_column: str | None = None) -> Found:
    rows, header = _read_csv(path)
    id_columns = _id_columns(path, header, group_column)
    if "path" not in header and "sop_instance_uid" in header and "label" in header:
        return _from_uid_csv(path, rows, classes, id_columns)
    if "path" not in header or "label" not in header:
        raise UserError(
            f"data.raw_dir: {path} needs columns path,label (or sop_instance_uid,label); "
            f"found {header}"
        )
    base = path.parent
    skipped: list[tuple[str, str]] = []
    images: dict[str, tuple[str, int]] = {}  # source -> (label, line)
    ids: dict[str, tuple[tuple[str, str], ...]] = {}
    extra_masks: dict[str, list[str]] = {}
    mask_rows: list[str] = []
    for line, row in enumerate(rows, start=2):
        source = _listed_path(path, line, row, skipped)
        if source is None:
            continue
        if is_mask(source):
            mask_rows.append(source)
            continue
        label = _label(path, line, row, classes)
        if source in images and images[source][0] != label:
            raise UserError(
                f"{path}: line {line}: {source} is listed again with another label "
                f"({images[source][0]} on line {images[source][1]}); keep one row per file"
            )
        images[source] = (label, line)
        ids[source] = tuple((c, row[c]) for c in id_columns if row.get(c))
        listed = [_normalise(m) for m in row.get("masks", "").split(";")]
        extra_masks.setdefault(source, []).extend(m for m in listed if m)
    by_stem = {(str(Path(s).parent), Path(s).stem): s for s in images}
    for mask in mask_rows:
        named = MASK_STEM.match(Path(mask).stem)
        assert named is not None  # mask_rows holds what is_mask accepted
        stem = named["image"]
        owner = by_stem.get((str(Path(mask).parent), stem))
        if owner is None:
            skipped.append((mask, f"mask_without_image: no image {stem!r} listed next to it"))
        else:
            extra_masks[owner].append(mask)
    records = [
        Record(source, base / source, label, tuple(sorted(set(extra_masks[source]))), ids[source])
        for source, (label, _) in images.items()
    ]
    uses_masks = bool(mask_rows) or any(r.masks for r in records)
    return Found("csv", _sorted(records, classes), tuple(sorted(skipped)), uses_masks)


def _listed_path(
    path: Path, line: int, row: dict[str, str], skipped: list[tuple[str, str]]
) -> str | None:
    """A CSV row's path, normalised; None (and a skipped row) when it leaves the CSV's folder."""
    source = _normalise(row["path"])
    if not source:
        raise UserError(f"{path}: line {line}: empty path")
    problem = path_problem(source, path.parent)
    if problem:
        skipped.append((source, problem))
        return None
    return source


def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The rows (keys lower-case, values stripped) and the header of a labels CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            raw_rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"data.raw_dir: cannot read CSV {path}: {exc}") from None
    if not raw_rows:
        raise UserError(f"data.raw_dir: {path} has no rows; expected a header path,label")
    rows = [
        {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        for row in raw_rows
    ]
    return rows, [h.strip().lower() for h in raw_rows[0] if h is not None]


def _id_columns(path: Path, header: list[str], group_column: str | None) -> tuple[str, ...]:
    """The patient/study id columns to group by: `data.group_column`, or the recognised ones."""
    if group_column is None:
        return tuple(c for c in GROUP_COLUMNS if c in header)
    if group_column.strip().lower() not in header:
        raise UserError(
            f"data.group_column: {path} has no column {group_column!r} (columns: {header}); "
            "name one of them or set data.group_column: null"
        )
    return (group_column.strip().lower(),)


def _label(path: Path, line: int, row: dict[str, str], classes: tuple[str, ...]) -> str:
    label = _class_of(row["label"], classes)
    if label is None:
        raise UserError(
            f"{path}: line {line}: label {row['label']!r} is not one of classes "
            f"{list(classes)}; fix the CSV or add the class to `classes` in params.yaml"
        )
    return label


def _from_uid_csv(
    path: Path, rows: list[dict[str, str]], classes: tuple[str, ...], id_columns: tuple[str, ...]
) -> Found:
    """Labels keyed by SOPInstanceUID for the DICOM files anywhere under the CSV's folder. No UID
    is written: a listed UID without a file is reported by its line number."""
    base = path.parent
    wanted: dict[str, tuple[str, int, tuple[tuple[str, str], ...]]] = {}
    for line, row in enumerate(rows, start=2):
        uid = row["sop_instance_uid"]
        if not uid:
            raise UserError(f"{path}: line {line}: empty sop_instance_uid")
        ids = tuple((c, row[c]) for c in id_columns if row.get(c))
        wanted[uid] = (_label(path, line, row, classes), line, ids)
    problems: list[tuple[Path, str]] = []
    records, skipped, found = [], [], set()
    for file in _files_under(base, base, problems):
        if file.resolve() == path.resolve():
            continue
        source = file.relative_to(base).as_posix()
        identity = dicom.read_identity(file)
        if identity is None or identity.instance not in wanted:
            what = "not a DICOM file" if identity is None else "its SOPInstanceUID is not listed"
            skipped.append((source, f"unlisted: {what} in {path.name}"))
            continue
        label, _, ids = wanted[identity.instance]
        found.add(identity.instance)
        records.append(Record(source, file, label, (), ids))
    for uid, (_, line, _) in wanted.items():
        if uid not in found:
            skipped.append((f"{path.name}:{line}", "missing: no DICOM file has this line's UID"))
    skipped += [(link.relative_to(base).as_posix(), reason) for link, reason in problems]
    return Found("csv", _sorted(records, classes), tuple(sorted(skipped)), False)


def _normalise(path: str) -> str:
    return Path(path.replace("\\", "/")).as_posix() if path else ""


def _sorted(records: list[Record], classes: tuple[str, ...]) -> tuple[Record, ...]:
    return tuple(sorted(records, key=lambda r: (classes.index(r.label), r.source)))
