"""How often the promotion gate errs at the configured margin, at the demo and BUSI test sizes.

The gate (pipeline.statistics.non_inferiority) promotes a challenger when the one-sided 95% lower
bound of macro-F1(challenger) - macro-F1(champion) on the same test images is above -margin.
This simulates test splits of a given size (with a share of images in duplicate pairs) and two
models whose decisions agree on most images, and prints:

- false accept: promotions of a challenger truly worse by the margin (by design at most ~5%) and
  by twice the margin;
- false refuse: refusals of a challenger exactly as good as the champion, also when one side
  refuses 5% of the images as out of scope (the served answer; the refused images mixed between
  its right and wrong answers so that it stays exactly as good): a refusal counts as a miss for
  its true class and never as a class of its own, so the gate should accept it as often;
- the smallest margin at which an equally good challenger passes 80% of the time: the smallest
  difference the gate can resolve at that test size.

Run: .venv/bin/python bench/promotion_gate.py [--reps 300] [--discordance 0.15]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import metrics, statistics  # noqa: E402
from pipeline.config import load_params  # noqa: E402

CLASS_SHARE = (0.55, 0.27, 0.18)  # BUSI's benign / malignant / normal
CHAMPION_ACCURACY = 0.80
REFUSED = 3  # the decision code of an out-of-scope refusal (pipeline.served_metrics.decisions)


def simulated_split(n_images: int, pair_share: float, rng: np.random.Generator):
    """Labels and group ids: `pair_share` of the images in duplicate pairs (one label each)."""
    n_pairs = round(n_images * pair_share / 2)
    n_groups = n_images - n_pairs
    group_label = rng.choice(3, n_groups, p=CLASS_SHARE)
    size = np.r_[np.full(n_pairs, 2), np.ones(n_groups - n_pairs, int)]
    groups = np.repeat(np.arange(n_groups), size)
    return group_label[groups], groups, group_label


def decisions(group_label: np.ndarray, deficit: float, discordance: float, rng):
    """Champion and challenger decisions per group: the challenger differs on about
    `discordance` of the groups, losing `deficit` of accuracy on balance."""
    n = len(group_label)
    champion_right = rng.random(n) < CHAMPION_ACCURACY
    lose = (discordance + deficit) / 2 / CHAMPION_ACCURACY  # of the champion's right answers
    gain = max(discordance - deficit, 0) / 2 / (1 - CHAMPION_ACCURACY)  # of its wrong ones
    flip = np.where(champion_right, rng.random(n) < lose, rng.random(n) < gain)
    challenger_right = champion_right ^ flip
    wrong = (group_label + rng.integers(1, 3, n)) % 3
    return (
        np.where(champion_right, group_label, wrong),
        np.where(challenger_right, group_label, wrong),
    )


def refusing(
    decided: np.ndarray, labels: np.ndarray, share: float, rng, among_wrong: float = 1.0
) -> np.ndarray:
    """`decided` with `share` of the images refused (REFUSED): `among_wrong` of the refusals
    drawn among the wrong answers, the rest among the right ones."""
    out = decided.copy()
    n = round(share * len(decided))
    for pool, count in ((decided != labels, round(n * among_wrong)),
                        (decided == labels, n - round(n * among_wrong))):  # fmt: skip
        where = np.flatnonzero(pool)
        out[rng.choice(where, min(count, len(where)), replace=False)] = REFUSED
    return out


@functools.lru_cache
def equal_refusal_mix(share: float, seed: int = 0) -> float:
    """The share of refusals drawn among wrong answers (`refusing`) that leaves a model's true
    macro-F1 unchanged: a refusal is a miss for its true class, so refusing a right answer
    costs recall and refusing a wrong one gains another class's precision. With it, a model
    refusing `share` of the images is exactly as good as the same model answering all."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, 400_000, p=CLASS_SHARE)
    decided, _ = decisions(labels, 0.0, 0.0, rng)
    ones = np.ones((1, len(labels)))
    answered = metrics.weighted_macro_f1(ones, labels, decided)[0]
    low, high = 0.0, 1.0
    for _ in range(20):
        mid = (low + high) / 2
        refused = refusing(decided, labels, share, np.random.default_rng(seed), mid)
        better = metrics.weighted_macro_f1(ones, labels, refused)[0] > answered
        low, high = (low, mid) if better else (mid, high)
    return (low + high) / 2


def true_difference(deficit: float, discordance: float, seed: int) -> float:
    """Macro-F1 difference of the two decision processes on a very large sample: the truth."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, 400_000, p=CLASS_SHARE)
    champion, challenger = decisions(labels, deficit, discordance, rng)
    ones = np.ones((1, len(labels)))
    return float(
        metrics.weighted_macro_f1(ones, labels, challenger)[0]
        - metrics.weighted_macro_f1(ones, labels, champion)[0]
    )


def gate_runs(
    n_images, deficit, args, margin, rng, refused: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, np.ndarray]:
    """(share accepted, lower bounds) over `args.reps` simulated promotions; `refused`: the
    share of images the (challenger, champion) refuse, mixed so that refusing leaves each as
    good as it was (`equal_refusal_mix`)."""
    accepted, lower = 0, []
    mix = [equal_refusal_mix(share) if share else 1.0 for share in refused]
    for _ in range(args.reps):
        y, groups, group_label = simulated_split(n_images, args.pairs, rng)
        champion, challenger = decisions(group_label, deficit, args.discordance, rng)
        challenger = refusing(challenger[groups], y, refused[0], rng, mix[0])
        champion = refusing(champion[groups], y, refused[1], rng, mix[1])
        record = statistics.non_inferiority(
            y, challenger, champion, groups, margin=margin, metric="macro_f1",
            n_bootstrap=args.bootstrap, seed=int(rng.integers(2**31)),
        )  # fmt: skip
        accepted += record.accepted
        lower.append(record.lower_bound if record.lower_bound is not None else -1.0)
    return accepted / args.reps, np.array(lower)


def deficit_for(target: float, discordance: float) -> float:
    """The accuracy deficit whose true macro-F1 difference is `target` (bisection)."""
    low, high = 0.0, min(discordance, 0.5)
    for _ in range(25):
        mid = (low + high) / 2
        low, high = (mid, high) if true_difference(mid, discordance, 0) > target else (low, mid)
    return (low + high) / 2


def main() -> None:
    """Simulate promotions per case and print how often each gate promotes a worse or better
    model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300, help="simulated promotions per case")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples per gate")
    parser.add_argument("--pairs", type=float, default=0.3, help="share of test images in pairs")
    parser.add_argument("--discordance", type=float, default=0.15, help="share of groups the "
                        "models decide differently (equally good models)")  # fmt: skip
    parser.add_argument("--sizes", type=int, nargs="+", default=[63, 117])
    args = parser.parse_args()
    margin = load_params(Path(__file__).resolve().parents[1] / "params.yaml").promote.margin
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    print(f"gate: accept iff the one-sided 95% lower bound of the macro-F1 difference > -{margin}")
    print(f"{args.reps} promotions per case, {args.pairs:.0%} of test images in duplicate pairs, "
          f"models disagree on {args.discordance:.0%} of groups\n")  # fmt: skip
    cases = {"equal": 0.0, "-margin": deficit_for(-margin, args.discordance)}
    cases["-2 margin"] = deficit_for(-2 * margin, args.discordance)
    print("| test images | false refuse (equal) | ... challenger refuses 5% | ... champion "
          "refuses 5% | false accept (-margin) | false accept (-2 margin) | smallest margin an "
          "equal challenger passes 80% |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        accept_equal, lower = gate_runs(n, cases["equal"], args, margin, rng)
        ours, _ = gate_runs(n, cases["equal"], args, margin, rng, (0.05, 0.0))
        theirs, _ = gate_runs(n, cases["equal"], args, margin, rng, (0.0, 0.05))
        accept_one, _ = gate_runs(n, cases["-margin"], args, margin, rng)
        accept_two, _ = gate_runs(n, cases["-2 margin"], args, margin, rng)
        resolvable = float(np.quantile(-lower, 0.8))
        print(f"| {n} | {1 - accept_equal:.1%} | {1 - ours:.1%} | {1 - theirs:.1%} | "
              f"{accept_one:.1%} | {accept_two:.1%} | {resolvable:.3f} |")  # fmt: skip
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
