"""Duplicate detection: recall per edit, false pairs and seconds per 1,000 images, for prepare's
detector (hashes + keypoints) against the whole-image perceptual hash alone, on the same images.

Originals: the real BUSI sample (../shared/busi-sample, when present) and synthetic scans at
BUSI's size (pipeline/synthetic.py); each gets one copy under every edit in pipeline/copies.py.
Prints ratios, asserts nothing (the small version is tests/unit/test_duplicates.py).

Run: .venv/bin/python bench/duplicates.py [--synthetic 500] [--size 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import copies, duplicates, matching, synthetic

BUSI_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "busi-sample"
SETTINGS = {"phash_threshold": 6, "min_inliers": 25, "min_correlation": 0.8, "per_image": 5}


def busi_originals() -> list[Image.Image]:
    """The BUSI sample's scans (masks left out), when the sample folder is there."""
    files = sorted(p for p in BUSI_SAMPLE.glob("*/*.png") if "_mask" not in p.name)
    return [Image.open(p).convert("RGB") for p in files]


def synthetic_originals(n: int, size: int) -> list[Image.Image]:
    """`n` synthetic scans of side `size`, classes in turn, from fixed seeds (reproducible)."""
    labels = synthetic.CLASSES
    return [
        Image.fromarray(
            synthetic.render_case(labels[i % 3], synthetic.case_rng(2026, labels[i % 3], i), size)[
                0
            ]
        )
        for i in range(n)
    ]


def run(name: str, originals: list[Image.Image]) -> None:
    """Print recall per edit, false merges and time: keypoints against the hash alone, on
    `originals`."""
    case = copies.make_case(originals, list(copies.EDITS), seed=0)
    n = len(case.images)
    start = time.perf_counter()
    shas = [duplicates.sha256(im.tobytes()) for im in case.images]  # pixels, not a PNG encoding
    hashes = [duplicates.phash(im) for im in case.images]
    hashed = time.perf_counter()
    old = duplicates.group(shas, duplicates.phash_pairs(np.array(hashes, np.uint64), 6))
    old_done = time.perf_counter()
    prints = [matching.keypoints(im) for im in case.images]
    described = time.perf_counter()
    pairs = duplicates.find_pairs(shas, hashes, prints, **SETTINGS)
    new = duplicates.group(shas, [(p.a, p.b) for p in pairs])
    done = time.perf_counter()
    per_1000 = 1000 / n
    old_s = (old_done - start) * per_1000
    new_s = (hashed - start + done - old_done) * per_1000
    print(f"\n{name}: {len(originals)} originals + {n - len(originals)} copies = {n} images")
    print(f"  seconds per 1,000 images: phash {old_s:.1f}, new {new_s:.1f} ({new_s / old_s:.1f}x)")
    print(
        f"    new = hashes + keypoints {(described - old_done) * per_1000:.1f} + pairs "
        f"{(done - described) * per_1000:.1f} (decoding the files is not counted)"
    )
    new_score, old_score = copies.score(case, new), copies.score(case, old)
    print(f"  {'edit':22s} {'phash':>6s} {'new':>6s}")
    for edit in copies.EDITS:
        print(f"  {edit:22s} {old_score.recall[edit]:6.2f} {new_score.recall[edit]:6.2f}")
    for label, s in (("phash", old_score), ("new", new_score)):
        rate = f"{s.false_pair_rate:.2%}"
        print(f"  false pairs {label}: {s.false_pairs} of {s.distinct_pairs} ({rate})")
    methods = {m: sum(p.method == m for p in pairs) for m in sorted({p.method for p in pairs})}
    print(f"  pairs by method: {methods}")


def main() -> None:
    """Run the benchmark on the synthetic scans, and on the BUSI sample when it is present."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=500, help="synthetic originals")
    parser.add_argument("--size", type=int, default=500, help="synthetic scan side in pixels")
    args = parser.parse_args()
    if BUSI_SAMPLE.is_dir():
        run("busi-sample (real)", busi_originals())
    run(f"synthetic {args.size} px", synthetic_originals(args.synthetic, args.size))


if __name__ == "__main__":
    main()
