"""Which interval for a proportion: coverage and width of the candidates, with duplicate pairs.

The reports state sensitivity, specificity, PPV, NPV and refused shares of small sets (17 and 31
malignant test images in the demo and in BUSI), often at or near 0 or 1, where BUSI's duplicates
make images come in pairs that are right or wrong together. This simulates exactly that: n
positives, a share of them in duplicate pairs (one outcome per pair), each group found with
probability `se`, and prints for each candidate how often its 95% interval holds `se` (coverage)
and its mean width:

- percentile: the percentile interval of a cluster bootstrap (whole pairs resampled), what the
  reports used before;
- wilson-eff / cp-eff: Wilson and exact Clopper-Pearson on the effective n = n^2 / sum(m^2)
  (pipeline.intervals.effective_size);
- cp-images: Clopper-Pearson on the image count, groups ignored.

pipeline.intervals uses the candidate that holds >= 95% everywhere (cp-eff).

Run: .venv/bin/python bench/proportion_intervals.py [--reps 4000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import intervals  # noqa: E402


def layout(n: int, pair_share: float) -> np.ndarray:
    """Group id per image: round(n * pair_share / 2) pairs, the rest alone."""
    pairs = round(n * pair_share / 2)
    sizes = np.r_[np.full(pairs, 2), np.ones(n - 2 * pairs, int)]
    return np.repeat(np.arange(len(sizes)), sizes)


def wilson(p: np.ndarray, n: float, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's score interval of proportions p on n (possibly effective) images."""
    z = stats.norm.ppf(1 - (1 - level) / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def candidates(
    found: np.ndarray, groups: np.ndarray, rng: np.random.Generator, boot: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each method's (low, high) per repetition; `found` (reps, n) hit per image."""
    n = found.shape[1]
    p = found.mean(1)
    n_eff = intervals.effective_size(np.ones(n, bool), groups)
    sizes = np.bincount(groups)
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    hits_per_group = found[:, first] * sizes  # a group's images share the outcome
    draw = rng.integers(0, len(sizes), size=(found.shape[0], boot, len(sizes)))
    resampled = np.take_along_axis(hits_per_group[:, None, :], draw, axis=2).sum(2) / np.take(
        sizes, draw
    ).sum(2)
    return {
        "percentile": tuple(np.percentile(resampled, [2.5, 97.5], axis=1)),
        "wilson-eff": wilson(p, n_eff),
        "cp-eff": intervals.clopper_pearson(p * n_eff, n_eff),
        "cp-images": intervals.clopper_pearson(p * n, n),
    }


def main() -> None:
    """Print coverage and width of each candidate at 17 and 31 positives."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4000)
    parser.add_argument("--boot", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.reps} repetitions each; coverage of the 95% interval (mean width)")
    print(f"{'positives':>9} {'se':>5} {'pairs':>5}  " + "  ".join(
        f"{m:>18}" for m in ("percentile", "wilson-eff", "cp-eff", "cp-images")))  # fmt: skip
    for n in (17, 31):
        for se in (0.90, 0.95):
            for share in (0.0, 0.4):
                groups = layout(n, share)
                found = (rng.random((args.reps, groups.max() + 1)) < se)[:, groups]
                cells = []
                for low, high in candidates(found, groups, rng, args.boot).values():
                    cover = np.mean((low <= se) & (se <= high))
                    cells.append(f"{cover:>9.3f} ({np.mean(high - low):.3f})")
                print(f"{n:>9} {se:>5.2f} {share:>5.0%}  " + "  ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
