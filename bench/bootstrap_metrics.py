"""Bootstrap confidence intervals: the weighted-matrix bootstrap vs scikit-learn in a loop.

Prints, in one run, the seconds `pipeline.metrics.classification_report` takes for all eleven
headline metrics with `--resamples` stratified resamples, the seconds a plain loop takes to
compute seven of them with scikit-learn on the same resamples (the way notebooks do it), the
ratio, and the two macro-F1 intervals side by side (they must agree: same resamples).

    python bench/bootstrap_metrics.py                  # 120 predictions, 500 resamples
    python bench/bootstrap_metrics.py --n 780 --resamples 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from pipeline import intervals, metrics  # noqa: E402

CLASSES = ("benign", "malignant", "normal")


def predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BUSI-like labels (56/27/17%) and softmax probabilities that favour the true class."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.56, 0.27, 0.17])
    y[:3] = [0, 1, 2]
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def sklearn_loop(y: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro-F1 of every resample, computing seven metrics per resample with scikit-learn."""
    macro_f1 = []
    for row in weights:
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        yy, pp = y[idx], proba[idx]
        pred = pp.argmax(1)
        skm.accuracy_score(yy, pred)
        skm.balanced_accuracy_score(yy, pred)
        macro_f1.append(skm.f1_score(yy, pred, average="macro", zero_division=0))
        skm.precision_score(yy, pred, average="macro", zero_division=0)
        skm.recall_score(yy, pred, average="macro", zero_division=0)
        skm.f1_score(yy, pred, average="weighted", zero_division=0)
        skm.roc_auc_score(yy, pp, multi_class="ovr", average="macro")
    return np.array(macro_f1)


def main() -> int:
    """Time the bootstrap intervals on a test split's worth of random predictions and print the
    figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120, help="predictions (a BUSI test split: ~120)")
    parser.add_argument("--resamples", type=int, default=500)
    args = parser.parse_args()
    y, proba = predictions(args.n, seed=0)

    started = time.perf_counter()
    report = metrics.classification_report(y, proba, CLASSES, n_bootstrap=args.resamples, seed=0)
    ours = time.perf_counter() - started

    weights = intervals.bootstrap_weights(y, args.resamples, seed=0)  # the same resamples
    started = time.perf_counter()
    loop_f1 = sklearn_loop(y, proba, weights)
    loop = time.perf_counter() - started

    low, high = intervals.percentile_interval(loop_f1)
    ci = report["macro_f1"]
    print(f"predictions={args.n} resamples={args.resamples}")
    print(f"project, 11 metrics:         {ours:8.3f} s")
    print(f"scikit-learn loop, 7 metrics: {loop:8.3f} s")
    print(f"ratio loop / project:        {loop / ours:8.1f}x")
    print(
        f"macro-F1 95% CI: project [{ci['ci_low']:.4f}, {ci['ci_high']:.4f}]"
        f" | scikit-learn [{low:.4f}, {high:.4f}]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
