"""`python -m pipeline.monitor`: has what the service sees drifted from what the model was made on?

Compares the last `monitor.window_days` of the prediction log (pipeline.serving.predlog) with the
reference the release carries (`reference.csv`: the validation images answered by the same
release, through the same code): the answered class mix (PSI), the distributions of p(positive),
the OOD score, the image size and the intensity statistics (two-sample Kolmogorov-Smirnov tests,
scipy, Bonferroni-corrected at `monitor.alpha`), and the share of answers refused as out of scope.
Writes `monitor.report_dir/report.md` with plots and `summary.json`; exits 1 when a check passes
its threshold (so a scheduled CI job alerts), 2 on a user error, 0 when all is quiet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from pipeline import plots
from pipeline.config import MonitorParams, load_params
from pipeline.errors import UserError
from pipeline.files import write_json, write_text
from pipeline.serving.predlog import REFERENCE_FILE, read_reference, read_rows
from pipeline.serving.release import find_release, read_release

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONTINUOUS = ("p_positive", "ood_score", "megapixels", "aspect", "mean", "std", "p50", "colour")
PSI_FLOOR = 1e-4  # share given to a category absent on one side, so PSI stays finite


def frame(rows: list[dict[str, Any]], positive: str) -> pd.DataFrame:
    """Log or reference rows -> one numeric table with the derived columns the checks compare."""
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    probabilities = table["probabilities"].map(json.loads)
    table["p_positive"] = probabilities.map(lambda p: float(p.get(positive, np.nan)))
    for name in ("ood_score", "width", "height", "mean", "std", "p50", "colour", "out_of_scope"):
        table[name] = pd.to_numeric(table[name], errors="coerce")
    table["megapixels"] = table["width"] * table["height"] / 1e6
    table["aspect"] = table["width"] / table["height"]
    return table


def psi(reference: pd.Series, window: pd.Series) -> float:
    """Population stability index of two categorical samples (0: same mix; > 0.25: shifted)."""
    categories = sorted(set(reference) | set(window))
    r = reference.value_counts(normalize=True).reindex(categories, fill_value=0).clip(PSI_FLOOR)
    w = window.value_counts(normalize=True).reindex(categories, fill_value=0).clip(PSI_FLOOR)
    return float(((w - r) * np.log(w / r)).sum())


def checks(reference: pd.DataFrame, window: pd.DataFrame, m: MonitorParams) -> list[dict]:
    """Every comparison with its statistic, threshold and verdict (`drift`)."""
    out = []
    mix = psi(reference["answer"], window["answer"])
    out.append({"check": "class mix (PSI)", "statistic": mix, "threshold": m.max_psi,
                "drift": mix > m.max_psi})  # fmt: skip
    rate = float(window["out_of_scope"].mean())
    out.append({"check": "out-of-scope rate", "statistic": rate, "threshold": m.max_ood_rate,
                "reference": float(reference["out_of_scope"].mean()),
                "drift": rate > m.max_ood_rate})  # fmt: skip
    present = [c for c in CONTINUOUS if reference[c].notna().any() and window[c].notna().any()]
    alpha = m.alpha / max(len(present), 1)  # Bonferroni: one alarm rate for all the tests
    for column in present:
        test = ks_2samp(reference[column].dropna(), window[column].dropna())
        out.append({"check": f"{column} (KS)", "statistic": float(test.statistic),
                    "p_value": float(test.pvalue), "threshold": alpha,
                    "drift": bool(test.pvalue < alpha)})  # fmt: skip
    return out


def run(params_path: Path, log_dir: Path | None, model: Path | None, now: dt.datetime) -> dict:
    """Compare the window with the reference; write the report; return the summary."""
    params = load_params(params_path)
    m = params.monitor
    log_dir = Path(log_dir or m.log_dir)
    release = find_release(Path(model or m.model))
    if not (release / REFERENCE_FILE).is_file():
        raise UserError(f"{release}: no {REFERENCE_FILE}; release a model with `dvc repro`")
    positive = params.positive_class
    reference = frame(read_reference(release / REFERENCE_FILE), positive)
    since = now - dt.timedelta(days=m.window_days)
    window = frame(read_rows(log_dir, since), positive)
    if len(window) < m.min_answers:
        raise UserError(
            f"{log_dir}: {len(window)} answers in the last {m.window_days} days; the monitor "
            f"needs monitor.min_answers ({m.min_answers}) to say anything"
        )
    found = checks(reference, window, m)
    summary = {
        "window": {"since": since.isoformat(), "until": now.isoformat(), "answers": len(window)},
        "reference": {"release": str(release), "images": len(reference)},
        "checks": found,
        "drift": any(c["drift"] for c in found),
    }
    report_dir = Path(m.report_dir)
    rule = read_release(release).rule
    marks = {"ood_score": rule.ood_threshold, "p_positive": rule.threshold}
    write_json(report_dir / "summary.json", summary)
    write_text(report_dir / "report.md", report(summary, reference, window, report_dir, marks))
    return summary


def report(
    summary: dict,
    reference: pd.DataFrame,
    window: pd.DataFrame,
    out: Path,
    marks: dict[str, float | None] | None = None,
) -> str:
    """Markdown: the verdict, a table of checks, and one histogram per compared distribution
    (`marks`: the decision rule's threshold on a column, drawn on its histogram)."""
    verdict = "**DRIFT**: see the flagged checks" if summary["drift"] else "no drift detected"
    w = summary["window"]
    lines = [
        "# Prediction monitor",
        "",
        f"{w['answers']} answers from {w['since']} to {w['until']} against "
        f"{summary['reference']['images']} reference images ({summary['reference']['release']}):"
        f" {verdict}.",
        "",
        "| check | statistic | p-value | threshold | drift |",
        "|---|---|---|---|---|",
    ]
    for c in summary["checks"]:
        p = f"{c['p_value']:.2g}" if "p_value" in c else ""
        flag = "**yes**" if c["drift"] else "no"
        lines.append(
            f"| {c['check']} | {c['statistic']:.4f} | {p} | {c['threshold']:.4g} | {flag} |"
        )
    lines += ["", "KS thresholds are `monitor.alpha` divided by the number of KS tests.", ""]
    for column in CONTINUOUS:
        if reference[column].notna().any() and window[column].notna().any():
            mark = (marks or {}).get(column)
            fig = _histogram(reference[column].dropna(), window[column].dropna(), column, mark)
            plots.save_png(fig, out / f"{column}.png")
            lines.append(f"![{column}]({column}.png)")
    return "\n".join(lines) + "\n"


def _histogram(
    reference: pd.Series, window: pd.Series, name: str, mark: float | None = None
) -> Figure:
    """Both distributions on the range where most of them lie (1st to 99th percentile, widened to
    show `mark`): one outlier would otherwise squash them into a single bin. Values beyond the
    range are counted in its end bins, and the axis says how many."""
    from matplotlib.figure import Figure  # not pyplot: no global figure registry to leak into

    both = np.r_[reference, window].astype(float)
    low, high = np.percentile(both, [1, 99])
    if mark is not None:
        low, high = min(low, mark), max(high, mark)
    if high <= low:
        low, high = low - 0.5, high + 0.5  # a constant column: one visible bin
    beyond = int(((both < low) | (both > high)).sum())
    edges = np.linspace(low, high, 21).tolist()
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    for values, label in ((reference, "reference (validation)"), (window, "served (window)")):
        ax.hist(np.clip(values, low, high), bins=edges, density=True, alpha=0.5, label=label)
    if mark is not None:
        ax.axvline(
            mark, color="black", linestyle="--", linewidth=1.2, label=f"rule threshold {mark:.4g}"
        )
    clipped = f" ({beyond} values beyond the range counted at its ends)" if beyond else ""
    ax.set_xlabel(name + clipped, fontsize=8 if beyond else None)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """`make monitor`: the drift report; exit code 1 when drift is found, so a scheduler can
    alert."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.monitor", description=__doc__.split("\n")[0]
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--log-dir", type=Path, default=None, help="default: monitor.log_dir")
    p.add_argument("--model", type=Path, default=None, help="release folder: monitor.model")
    args = p.parse_args(argv)
    try:
        summary = run(args.params, args.log_dir, args.model, dt.datetime.now(dt.UTC))
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flagged = [c["check"] for c in summary["checks"] if c["drift"]]
    print(f"monitor: {summary['window']['answers']} answers; "
          + (f"DRIFT in {', '.join(flagged)}" if flagged else "no drift"))  # fmt: skip
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
