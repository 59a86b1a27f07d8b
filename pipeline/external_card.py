"""External validation in words: the model card's section, `reports/external/external.md` and the
terminal line, from the external stage's summary (pipeline.external). Pure functions of it.

Written in TRIPOD+AI's terms: external validation is evaluation in data from another setting that
played no part in development (item 12: the data, their source and how they differ; item 23:
performance with intervals, calibration, and the case mix beside the development data's).
"""

from __future__ import annotations

from typing import Any

from pipeline.card_results import format_estimate
from pipeline.model_card import EXTERNAL_HEADING

NONE = (
    "- None. No external data set has been scored (`data.external` is empty): every figure on "
    "this card comes from the development data's own splits, which overstates performance at "
    "another site (published BUSI results fell 10-25 points on other sites' data)."
)
HOW = (
    "Each site was prepared like the development data (same validation and conversion) but never "
    "split, trained, tuned or fitted on; images that repeat a development image (exact, near, "
    "crop or shift, same patient) were left out with their group. Figures come from the served "
    "answers of the released model. 95% intervals count the site's groups (duplicates, "
    "patients) once: exact on the effective number of images for proportions, a cluster "
    "bootstrap for macro-F1 and the calibration line. A refusal counts as wrong for the class "
    "metrics and as not referred."
)


def section(summary: dict[str, Any], counts: dict[str, dict] | None = None) -> str:
    """The card's "External validation" section; `counts`: each site's ledger use, for the
    registry's copy (the committed one leaves them out: they grow with every run)."""
    out = [EXTERNAL_HEADING, ""]
    if not summary["sites"]:
        return "\n".join([*out, NONE]) + "\n"
    out += [HOW, ""]
    development, positive = summary.get("development") or {}, summary["positive_class"]
    for site in summary["sites"]:
        out += _site(site, development, positive, (counts or {}).get(site["name"]))
    return "\n".join(out).rstrip() + "\n"


def report(summary: dict[str, Any]) -> str:
    """`reports/external/external.md`: the model it scored, then the section."""
    model = summary["model"]
    head = [
        f"# External validation: {model['name']} ({model['arch']})",
        "",
        f"Rule served: {summary['rule']}. Model sha256 {summary['model_sha256'][:12]}.",
        "",
    ]
    body = section(summary).split("\n", 2)[2]  # without the card's heading
    return "\n".join(head) + "\n" + body


def splice(card: str, new_section: str) -> str:
    """`card` with its external validation section replaced by `new_section` (inserted before
    the ethics section, or appended, when the card has none)."""
    start = card.find(EXTERNAL_HEADING + "\n")
    if start < 0:
        anchor = card.find("\n## Ethical considerations")
        if anchor < 0:
            return card.rstrip() + "\n\n" + new_section
        return card[: anchor + 1] + new_section + "\n" + card[anchor + 1 :]
    end = card.find("\n## ", start + len(EXTERNAL_HEADING))
    rest = card[end + 1 :] if end >= 0 else ""
    return card[:start] + new_section + ("\n" + rest if rest else "")


def terminal_line(site: dict[str, Any], use: dict | None) -> str:
    """One line per site for the terminal, with the ledger's count when known."""
    c, f = site["counts"], site.get("figures") or {}
    metrics = f.get("class_metrics", {}).get("refusal_counted_wrong", {})
    calibration = f.get("calibration") or {}
    looks = f"; scored {use['looks']} times by {use['models']} models" if use else ""
    return (
        f"external: {site['name']}: {c['kept']} images scored, {c['found'] - c['kept']} left out "
        f"({site['left_out']['pairs']} copies of development images); macro-F1 "
        f"{format_estimate(metrics.get('macro_f1'))}, referral sensitivity "
        f"{format_estimate(f.get('referral', {}).get('sensitivity'))}, calibration slope "
        f"{format_estimate(calibration.get('slope'))}{looks}"
    )


def _site(site: dict[str, Any], development: dict, positive: str, use: dict | None) -> list[str]:
    c = site["counts"]
    how = ", ".join(f"{n} {k}" for k, n in site["left_out"]["by_how"].items()) or "none"
    out = [
        f"### Site `{site['name']}` (`{site['path']}`)",
        "",
        f"- Data: {c['found']} images found, {c['rejected']} rejected; "
        f"{c['left_out_duplicating_development']} left out as copies of development images "
        f"({how}), {c['left_out_with_their_group']} more with their group, "
        f"{c['left_out_label_conflict']} for label conflicts; {c['kept']} scored in "
        f"{c['kept_groups']} groups (pairs: `reports/external/sites/{site['name']}/left_out.csv`).",
    ]
    if use:
        out.append(f"- Looks: this site has been scored {use['looks']} times by {use['models']} "
                   f"models (ledger `{use['ledger']}`).")  # fmt: skip
    if "figures" not in site:
        return [*out, f"- {site.get('note', 'not scored')}.", ""]
    f = site["figures"]
    return [
        *out, *_refusals(f["refusals"]), "", *_differences(site["differences"]), "",
        *_calibration(f["calibration"], positive), "",
        *_case_mix(development, site["case_mix"]), "",
    ]  # fmt: skip


def _refusals(refusals: dict[str, Any]) -> list[str]:
    per_class = ", ".join(
        f"{c} {v['refused']}/{v['images']}" for c, v in refusals.items() if isinstance(v, dict)
    )
    total = refusals["refused"] + refusals["answered"]
    return [f"- Refused as out of scope: {refusals['refused']}/{total} ({per_class})."]


def _differences(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| figure (served answers) | this site | internal test | difference |",
        "|---|---|---|---|",
    ]
    for row in rows:
        diff = row["difference"]
        out.append(
            f"| {row['figure']} | {_estimate(row)} | {_plain(row['internal_test'])} | "
            f"{'n/a' if diff is None else f'{diff:+.3f}'} |"
        )
    return out


def _estimate(row: dict[str, Any]) -> str:
    entry = row.get("external_estimate")
    return format_estimate(entry) if entry else _plain(row["external"])


def _calibration(found: dict[str, Any], positive: str) -> list[str]:
    shares = (
        f"observed {positive} share {_plain(found['observed_share'])}, mean predicted "
        f"{_plain(found['expected_share'])} on {found['images']} answered images"
    )
    if "slope" not in found:
        return [f"- Calibration of p({positive}): {shares}; {found.get('note', 'not fitted')}."]
    return [
        f"- Calibration of p({positive}): calibration-in-the-large "
        f"{format_estimate(found['calibration_in_the_large'])} (0 is ideal; below 0 the model "
        f"overestimates p({positive}) here), slope {format_estimate(found['slope'])} (1 is ideal; "
        f"below 1 its predictions are too extreme here); {shares}."
    ]


def _case_mix(development: dict[str, Any], site: dict[str, Any]) -> list[str]:
    out = ["| case mix | development | this site |", "|---|---|---|"]
    out.append(f"| images | {development.get('images', 'n/a')} | {site['images']} |")
    for c, share in site["class_share"].items():
        dev = (development.get("class_share") or {}).get(c)
        out.append(f"| {c} share | {_plain(dev)} | {_plain(share)} |")
    for key, name in (
        ("width", "original width (px)"),
        ("height", "original height (px)"),
        ("intensity_mean", "mean grey level (prepared, 0-255)"),
        ("intensity_sd", "grey-level spread (prepared)"),
    ):
        out.append(f"| {name}, median [IQR] | {_iqr(development.get(key))} | {_iqr(site[key])} |")
    return out


def _iqr(q: dict | None) -> str:
    if not q or q.get("median") is None:
        return "n/a"
    return f"{q['median']:.1f} [{q['q1']:.1f}, {q['q3']:.1f}]"


def _plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
