"""Stage `external`: score each external site (`data.external`) through the released model.

Runs after select. Each site is prepared like development data (pipeline.external_sets: the same
validation and conversion, its duplicates and patients grouped) but never split or fitted on, and
every image that repeats a development image (exact, near, crop or shift, the same patient) is
left out with its group and listed. The rest is answered by `models/selected` loaded the way every
surface loads it (`load_classifier`), so the figures are those of the answers users get
(pipeline.external_report): class metrics, the referral flag's sensitivity, specificity, PPV and
NPV, calibration-in-the-large and slope, all with group-level intervals; refusals per class; the
case mix beside development's; and the differences from the internal test figures. Each site's
scoring is a look, recorded in the test ledger (pipeline.ledger) like a look at test.

Writes `reports/external/summary.json` and `external.md` (no look counts: they grow with every
run), the model card's "External validation" section (`model_card_section.md`, also spliced into
the registered version's card with the count), and per site under `reports/external/sites/<name>/`:
`left_out.csv` (the development pairs), `images.csv` (every valid image and its status),
`rejects.csv`, `predictions.csv` and `reliability.csv`.

Run: python -m pipeline.external [--params params.yaml]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import (
    external_card,
    external_report,
    external_sets,
    ledger,
    paths,
    registry,
    tracking,
)
from pipeline.cli import stage_main
from pipeline.config import Params
from pipeline.datasets import load_set, read_manifest
from pipeline.errors import UserError
from pipeline.files import staged_dir, write_json, write_text
from pipeline.prepare_report import csv_text
from pipeline.serving.classifier import Classifier, load_classifier

EXTERNAL_DIR = paths.EXTERNAL_REPORTS
SITES_DIR = EXTERNAL_DIR / "sites"
SUMMARY_FILE = EXTERNAL_DIR / "summary.json"
MARKDOWN_FILE = EXTERNAL_DIR / "external.md"
SECTION_FILE = EXTERNAL_DIR / "model_card_section.md"
BATCH = 64
SITES_README = (
    "Per external site (data.external): left_out.csv, images.csv, rejects.csv, "
    "predictions.csv, reliability.csv (pipeline/external.py).\n"
)


def run(params: Params) -> dict[str, Any]:
    """Prepare, screen and score every external site; write the reports (module doc)."""
    classifier = load_classifier(paths.SELECTED)
    release = classifier.release
    model_sha256 = ledger.file_sha256(str(release.model_path))
    # no version number: it changes with every registration, and this file is committed
    identity = {k: v for k, v in release.identity().items() if k != "version"}
    summary: dict[str, Any] = {
        "model": identity,
        "model_sha256": model_sha256,
        "rule": release.rule.describe(),
        "positive_class": release.rule.positive_class,  # the class `refer` is about
        "synthetic_development_data": release.synthetic,
        "sites": [],
    }
    counts: dict[str, dict] = {}
    if params.data.external:
        tracking.setup(params.mlflow.experiment)
        summary["development"], development, dev_rows = _development(params)
        internal = _internal_test(release.provenance.get("arch"))
        with staged_dir(SITES_DIR) as out:
            write_text(out / "README.md", SITES_README)
            for site in params.data.external:
                prepared = external_sets.prepare_site(site, params, development, dev_rows)
                found = _score(classifier, prepared, params, internal)
                counts[site.name] = _look(params, release, model_sha256, prepared, found)
                found["ledger"] = {k: counts[site.name][k] for k in ("ledger", "split_sha256")}
                _write_site(out / site.name, prepared, found, release.rule.positive_class)
                summary["sites"].append(found)
    else:
        with staged_dir(SITES_DIR) as out:
            write_text(out / "README.md", SITES_README + "\nNo site is configured.\n")
    write_json(SUMMARY_FILE, summary)
    write_text(MARKDOWN_FILE, external_card.report(summary))
    write_text(SECTION_FILE, external_card.section(summary))
    _update_registered_card(release.provenance, summary, counts)
    _print(summary, counts)
    return summary


def _development(params: Params) -> tuple[dict[str, Any], list, dict[str, dict]]:
    """(development case mix, development items to screen against, manifest row by source)."""
    manifest = read_manifest(paths.MANIFEST)
    rows = manifest.to_dict("records")
    with tempfile.TemporaryDirectory(prefix="development-") as tmp:
        items = external_sets.development_items(params, rows, Path(tmp))
    everything = load_set(paths.PREPARED, params.classes)
    sizes = list(zip(manifest["width"].astype(int), manifest["height"].astype(int), strict=True))
    mix = external_report.case_mix(everything.labels, params.classes, sizes, everything.images)
    return mix, items, {str(r["source"]): r for r in rows}


def _internal_test(arch: str | None) -> dict[str, Any]:
    """The released model's internal test report (evaluate's), for the differences."""
    path = paths.evaluate_dir(str(arch)) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; run evaluate and select first (dvc repro)")
    return json.loads(path.read_text()).get("test") or {}


def _score(
    classifier: Classifier, site: external_sets.Site, params: Params, internal: dict
) -> dict[str, Any]:
    """The site's answers and every figure of them."""
    site.answers = _answers(classifier, site.images)
    positive = classifier.release.rule.positive_class
    out = external_report.served(site.answers, params.classes, positive)
    e = params.evaluate
    found: dict[str, Any] = {"name": site.name, "path": site.source, "counts": site.counts}
    found["case_mix"] = external_report.case_mix(
        site.labels, params.classes, site.sizes, site.images
    )
    found["left_out"] = _left_out_summary(site)
    if not len(site.labels):
        return found | {"note": "no image left to score"}
    found["figures"] = external_report.site_figures(
        site.labels, out, site.groups, params.classes, positive=positive, n_bootstrap=e.bootstrap,
        seed=params.seed, prevalence=e.prevalence, n_bins=e.ece_bins,
    )  # fmt: skip
    found["differences"] = external_report.differences(found["figures"], internal, positive)
    return found


def _answers(classifier: Classifier, images: np.ndarray) -> list[dict]:
    """The release's answers in batches of BATCH; the last batch is padded to BATCH (answers
    for the padding dropped), so the model is traced for one batch shape only (a second trace
    of DenseNet121 costs seconds on CPU)."""
    answers: list[dict] = []
    for start in range(0, len(images), BATCH):
        batch = list(images[start : start + BATCH])
        n = len(batch)
        batch += [batch[-1]] * (BATCH - n) if len(images) > BATCH else []
        answers += classifier.predict_many(batch)[:n]
    return answers


def _left_out_summary(site: external_sets.Site) -> dict[str, Any]:
    by_how: dict[str, int] = {}
    for row in site.leak_rows:
        by_how[row["how"]] = by_how.get(row["how"], 0) + 1
    return {"pairs": len(site.leak_rows), "by_how": dict(sorted(by_how.items()))}


def _look(
    params: Params, release: Any, model_sha256: str, site: external_sets.Site, found: dict
) -> dict[str, Any]:
    """Record this scoring of the site in the ledger; return the site's use so far."""
    split = ledger.split_fingerprint(row["sha256"] for row in site.rows if row["status"] == "kept")
    figures = found.get("figures") or {}
    flat = {
        "external_macro_f1": external_report.value_at(
            figures, ("class_metrics", "refusal_counted_wrong", "macro_f1")
        ),
        "external_referral_sensitivity": external_report.value_at(
            figures, ("referral", "sensitivity")
        ),
        "external_images": float(len(site.labels)),
    }
    identity = release.identity()
    ledger.record_look(
        params.mlflow.experiment,
        split_sha256=split,
        manifest_sha256=ledger.split_fingerprint(row["sha256"] for row in site.rows),
        model=f"{identity['name']}/{identity['version']}",
        model_sha256=model_sha256,
        purpose=f"external: {site.name}",
        metrics={k: v for k, v in flat.items() if v is not None and np.isfinite(v)},
    )
    return ledger.split_use(params.mlflow.experiment, split)


def _write_site(folder: Path, site: external_sets.Site, found: dict, positive: str) -> None:
    """The site's per-image files: what was left out and why, and what was answered (with the
    served probability of the `positive` class)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "left_out.csv", csv_text(external_sets.LEAK_COLUMNS, site.leak_rows))
    write_text(folder / "images.csv", csv_text(external_sets.ROW_COLUMNS, site.rows))
    rejects = [{"source": s, "reason": r} for s, r in sorted(site.rejects)]
    write_text(folder / "rejects.csv", csv_text(("source", "reason"), rejects))
    kept = [row for row in site.rows if row["status"] == "kept"]
    p_positive = f"p_{positive}"
    predictions = [
        {
            "source": row["source"],
            "label": row["label"],
            "group": row["group"],
            "class": a["class"],
            "refer": external_report._refer(a["decision"]),
            p_positive: round(a["probabilities"][positive], 6),
        }
        for row, a in zip(kept, site.answers, strict=True)
    ]
    columns = ("source", "label", "group", "class", "refer", p_positive)
    write_text(folder / "predictions.csv", csv_text(columns, predictions))
    bins = (found.get("figures") or {}).get("calibration", {}).get("reliability") or []
    write_text(folder / "reliability.csv", csv_text(bins[0].keys() if bins else ("count",), bins))


def _update_registered_card(provenance: dict, summary: dict, counts: dict[str, dict]) -> None:
    """Splice the section, with the look counts, into the registered version's card: the copy
    that travels with the model. Nothing to do for an unregistered release (an experiment)."""
    version = provenance.get("version")
    if version is None:
        return
    name = str(provenance["model_name"])
    card = registry.version_description(name, str(version))
    section = external_card.section(summary, counts)
    registry.describe_version(name, str(version), external_card.splice(card, section))


def _print(summary: dict[str, Any], counts: dict[str, dict]) -> None:
    if not summary["sites"]:
        print("external: no external sites (data.external is empty); nothing scored")
    for site in summary["sites"]:
        print(external_card.terminal_line(site, counts.get(site["name"])))
    print(f"external: reports in {EXTERNAL_DIR}/ (external.md, summary.json, sites/)")


def main(argv: list[str] | None = None) -> int:
    """The `external` stage's command line (dvc.yaml); a user error is one line and exit code 2."""
    return stage_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
