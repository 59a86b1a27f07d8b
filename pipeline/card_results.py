"""The model card's quantitative analyses: tables of the figures evaluate computed from the
served answers (headline and refusals by class, the referral flag's operating point,
calibration, out-of-distribution inputs, subgroups, the worst errors), and how an estimate is
written. Pure functions of evaluate's `<arch>/metrics.json` sections; pipeline.model_card puts
them in the card, pipeline.evaluate_report in comparison.md and test.md.
"""

from __future__ import annotations

from typing import Any

# The headline metrics of pipeline.metrics.HEADLINE, in order, as people read them. Kept here
# (not imported) so the select stage's card depends on no numeric code.
LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "macro_precision": "Macro precision",
    "macro_recall": "Macro recall",
    "weighted_f1": "Weighted F1",
    "roc_auc_macro": "ROC-AUC (one-vs-rest, macro)",
    "malignant_sensitivity": "Malignant recall of the class answer",
    "malignant_specificity": "Malignant specificity of the class answer",
    "brier": "Brier score (lower is better)",
    "ece": "Expected calibration error (lower is better)",
}


def headline_table(val: dict, test: dict) -> list[str]:
    """Coverage, refusals per class and the class metrics on validation and test; per class on
    test."""
    out = [
        f"Images (groups): validation {val.get('n', '?')} ({val.get('groups', '?')}), test "
        f"{test.get('n', '?')} ({test.get('groups', '?')}). Point estimates with 95% intervals: "
        "exact on the effective number of images for proportions (accuracy, sensitivity, "
        "specificity, shares), a cluster bootstrap for the rest. Class metrics score the served "
        "class answer over every image, a refusal counted wrong; ROC-AUC, Brier and ECE the "
        "served probabilities of the answered images.",
        "",
        "| metric | validation | test |",
        "|---|---|---|",
        *refusal_rows({"validation": val, "test": test}, ["validation", "test"]),
    ]
    answered = [format_estimate((r.get("answered") or {}).get("macro_f1")) for r in (val, test)]
    for key in LABELS:
        if key in val or key in test:
            out.append(
                f"| {LABELS[key]} | {format_estimate(val.get(key))} | "
                f"{format_estimate(test.get(key))} |"
            )
    out.append(f"| Macro F1, answered images only | {answered[0]} | {answered[1]} |")
    per_class = test.get("per_class") or {}
    ranked = (test.get("answered") or {}).get("per_class") or {}
    if per_class:
        cols = ("precision", "recall", "f1", "specificity", "support", "refused")
        out += ["", f"Per class (test, {test.get('n', '?')} images; ROC-AUC on the answered):", ""]
        head = [*cols, "roc_auc"]
        out += ["| class | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for cls, row in per_class.items():
            cells = [fmt(row.get(c)) for c in cols] + [fmt(ranked.get(cls, {}).get("roc_auc"))]
            out.append(f"| {cls} | " + " | ".join(cells) + " |")
    return out


def refusal_rows(reports: dict[str, dict], columns: list[str]) -> list[str]:
    """Table rows: coverage and refused n/N per true class of each report (the refusal, stated
    once), one column per name in `columns`."""
    first = reports[columns[0]].get("refused_by_class") or {}
    rows = ["| Coverage: answered images | "
            + " | ".join(share(reports[c].get("coverage")) for c in columns) + " |"]  # fmt: skip
    for name in first:
        cells = [share((reports[c].get("refused_by_class") or {}).get(name)) for c in columns]
        rows.append(f"| Refused as out of scope, true {name} | " + " | ".join(cells) + " |")
    return rows


def share(found: dict | None) -> str:
    """`n/N = value [low, high]` of a proportion (pipeline.served_metrics.proportion)."""
    if not found or found.get("value") is None:
        return "n/a"
    return f"{found['n']}/{found['of']} = {format_estimate(found)}"


OPERATING_ROWS = (
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV (this sample)"),
    ("npv", "NPV (this sample)"),
    ("ppv_at_prevalence", "PPV at the assumed prevalence"),
    ("npv_at_prevalence", "NPV at the assumed prevalence"),
    ("auc", "AUC of p(malignant)"),
)


def operating_point(val: dict, test: dict) -> list[str]:
    """The referral flag's threshold, how it was chosen and what it guarantees, and its rates."""
    op_val, op_test = val.get("operating_point") or {}, test.get("operating_point") or {}
    if op_val.get("threshold") is None:
        return ["No operating point: the validation split had no malignant images."]
    choice = op_val.get("selection") or {}
    met = "met" if choice.get("guaranteed") else "NOT met (too few malignant validation images)"
    out = [
        "Two outputs: the class answer is the most probable class (the threshold never changes "
        "it); the referral flag (malignancy suspected) is raised when the class is malignant or "
        f"when p(malignant) >= {op_val['threshold']:.4f} (95% "
        "bootstrap interval of the threshold on validation: "
        f"[{fmt(op_val.get('threshold_ci_low'))}, {fmt(op_val.get('threshold_ci_high'))}]). "
        f"Rule: {op_val.get('rule', 'n/a')}. "
        f"Guarantee {met}: lower bound {fmt(choice.get('sensitivity_lower_bound'))} against "
        f"target {fmt(choice.get('target'))}, on {fmt(choice.get('effective_positives'))} "
        f"effective malignant validation images ({fmt(choice.get('positives'))} images, "
        f"{fmt(choice.get('refused_positives'))} refused and counted as missed). What it "
        f"guarantees: {choice.get('guarantee', 'n/a')}; it says nothing about other sites or "
        "scanners.",
        "",
        f"Prevalence assumed for PPV/NPV: {fmt(op_test.get('prevalence'))}.",
        "",
        "The rows below score the flag; a refused (out-of-scope) malignant image counts as not "
        "flagged.",
        "",
        "| referral flag | validation | test | test, lesions only (benign vs malignant) |",
        "|---|---|---|---|",
    ]
    lesions = test.get("lesions") or {}
    for key, label in OPERATING_ROWS:
        out.append(
            f"| {label} | {format_estimate(op_val.get(key))} | "
            f"{format_estimate(op_test.get(key))} | {format_estimate(lesions.get(key))} |"
        )
    out.append(
        f"| Images (groups) | {op_val.get('images', '?')} ({op_val.get('groups', '?')}) | "
        f"{op_test.get('images', '?')} ({op_test.get('groups', '?')}) | "
        f"{lesions.get('images', '?')} ({lesions.get('groups', '?')}) |"
    )
    return out


def calibration(val: dict, test: dict) -> list[str]:
    """The temperature decision and the reliability of the served p(malignant) per split."""
    cal = val.get("calibration") or {}
    if not cal:
        return ["No calibration results were recorded."]
    t = cal.get("temperature")
    served = "applied: part of the served decision rule" if cal.get("applied") else "not applied"
    out = [
        f"Temperature scaling {served} (T = {fmt(t)}; {cal.get('reason', 'no reason recorded')}).",
        "",
    ]
    if cal.get("bounds"):
        low, high = cal["bounds"]
        out += [
            f"The rule: T is fitted on validation within [{low:g}, {high:g}] "
            "(`evaluate.temperature_range`) and served only when it lowers group-cross-validated "
            f"validation NLL by at least {cal.get('min_improvement')} nats per image. A fit on "
            "the lower bound is never served: a validation set the model already separates "
            "(every true class on top) lowers NLL for every smaller T, so it cannot say how "
            "sharp the probabilities should be, and sharpening there makes the first error on "
            "new data a near-certain one.",
            "",
        ]
    for split, report in (("validation", val), ("test", test)):
        cal_split = report.get("calibration") or {}
        m = cal_split.get("malignant") or {}
        bins = [b for b in m.get("reliability") or [] if b.get("count")]
        out.append(
            f"- {split} ({cal_split.get('images', '?')} answered images, served p(malignant)): "
            f"slope {fmt(m.get('slope'))}, intercept "
            f"{fmt(m.get('intercept'))} (ideal 1 and 0); reliability bins (predicted -> observed, "
            "n): "
            + "; ".join(f"{b['predicted']:.2f} -> {b['observed']:.2f}, {b['count']}" for b in bins)
        )
    return out


def ood(val: dict, test: dict) -> list[str]:
    """The OOD check: its threshold, the in-distribution test images it refuses, and how well it
    separates test images from each synthetic OOD family (AUROC; 1 = always apart)."""
    found = test.get("ood") or {}
    if not found:
        return ["- No out-of-distribution check was evaluated for this model."]
    coverage = (test.get("coverage") or {}, val.get("coverage") or {})
    out = [
        f"- Score: {found['method']}. Threshold {found['threshold']:.4g}, chosen on validation so "
        f"that {found['accept']:.0%} of its images are accepted "
        f"(answered: {share(coverage[1])} of validation, {share(coverage[0])} of test; refused "
        "per class in the Quantitative analyses table).",
        f"- OOD AUROC, test images vs all families: {fmt(found.get('auroc_all'))}.",
        "",
        "| OOD family (synthetic, pipeline/ood_sets.py) | images | AUROC vs test | refused |",
        "|---|---|---|---|",
    ]
    for family, auroc in found["auroc"].items():
        refused = found["ood_refused"].get(family)
        out.append(f"| {family} | {found['ood_images'].get(family)} | {fmt(auroc)} | "
                   f"{fmt(refused)} |")  # fmt: skip
    out += [
        "",
        "The families are synthetic stand-ins (textures, colour scenes and Doppler-like overlays, "
        "text and UI screenshots, CT-, radiograph- and MRI-like slices), not real images of those "
        "kinds; an ultrasound of another organ can still pass the check.",
    ]
    return out


def subgroups(test: dict) -> list[str]:
    """One table per subgroup analysis of test (small subgroups show n but no estimate)."""
    tables = test.get("subgroups") or {}
    if not tables:
        return ["No subgroup information in the manifest."]
    out = []
    for name, rows in tables.items():
        header = "| subgroup | images | groups | accuracy | sensitivity | specificity |"
        out += [f"{name}:", "", header, "|---|---|---|---|---|---|"]
        for r in rows:
            cells = [
                format_estimate(r.get(k)) if k in r else r.get("note", "n/a")
                for k in ("accuracy", "malignant_sensitivity", "malignant_specificity")
            ]
            out.append(
                f"| {r['subgroup']} | {r['images']} | {r['groups']} | " + " | ".join(cells) + " |"
            )
        out.append("")
    return out


def format_estimate(entry: Any) -> str:
    """`0.812 [0.741, 0.880]` from `{"value", "ci_low", "ci_high"}`; `n/a` when undefined."""
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is None or high is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]"


def fmt(value: Any) -> str:
    """A number for a table: integers as they are, floats to three places, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def failure_cases(test: dict) -> list[str]:
    """The worst errors of the served answers on test, one per group (pipeline.failures)."""
    cases = test.get("failure_cases")
    if cases is None:
        return ["No failure cases were recorded."]
    if not cases:
        return ["No errors on the test split: no failure case to show."]
    out = [
        "The worst error of each group (duplicate copies, a patient's images), worst first: a "
        "malignant image the referral flag missed (lowest p(malignant) first), then a scan "
        "refused as out of scope, then the most confident wrong class. Image: the first 12 hex "
        "digits of its sha256 (data/prepared/manifest.csv).",
        "",
        "| image | group images | true | answer | p(answer) | p(malignant) | refer | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        refer = "n/a" if c.get("refer") is None else ("yes" if c["refer"] else "no")
        out.append(
            f"| {c['image']} | {c['group_images']} | {c['true']} | {c['answer']} | "
            f"{fmt(c.get('p_answer'))} | {fmt(c.get('p_malignant'))} | {refer} | {c['kind']} |"
        )
    return out
