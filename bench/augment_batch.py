"""The feed's CPU cost per image: per-image draws (`augment_image` in a loop, the previous feed)
vs one batch's vectorised draws (`augment_batch`, the feed now), and where the time goes.

Each round times both on the same images, interleaved, so a shared machine's load falls on both
alike; the figure is the median over rounds and the ratio. "python share" is the time outside
OpenCV's passes (draws, matrices, tables, slicing), which holds the GIL: it is what stops loader
threads from scaling and what worker processes sidestep.

    python bench/augment_batch.py                  # 224 px, batch 32, 20 rounds, 1 OpenCV thread
    python bench/augment_batch.py --size 128 --cv2-threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.augmentation import augment_batch, augment_image, speckle_field  # noqa: E402
from pipeline.batches import light  # noqa: E402
from pipeline.config import load_params  # noqa: E402


def per_image(images, rows, rng, p, out, field) -> None:
    """The previous feed: one `augment_image` per image, its draws one by one."""
    for slot, row in zip(out, rows, strict=False):
        augment_image(images[row], rng, p, out=slot, field=field)


def opencv_only(images, rows, p, out, field) -> None:
    """The OpenCV passes alone (fixed parameters): the floor either version pays."""
    height, width = images.shape[1:3]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), 3.0, 1.02)
    table = np.arange(256, dtype=np.uint8)
    window = field[:height, :width]
    for slot, row in zip(out, rows, strict=False):
        cv2.warpAffine(
            images[row],
            matrix,
            (width, height),
            dst=slot,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        cv2.mean(slot)
        cv2.LUT(slot, table, dst=slot)
        cv2.multiply(slot, window, dst=slot, dtype=cv2.CV_8U)


def main() -> int:
    """Print µs per image of both versions and of OpenCV alone, and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cv2-threads", type=int, default=1)
    args = parser.parse_args()
    cv2.setNumThreads(args.cv2_threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * args.batch, args.size, args.size, 3), dtype=np.uint8)
    p = light(load_params(Path(__file__).resolve().parents[1] / "params.yaml").augment)
    field = speckle_field(rng, (2 * args.size, 2 * args.size, 3), p.speckle)
    out = np.empty((args.batch, args.size, args.size, 3), np.uint8)
    times: dict[str, list[float]] = {"per-image": [], "vectorised": [], "opencv only": []}
    versions = {
        "per-image": lambda rows, r: per_image(
            images, rows, np.random.default_rng(r), p, out, field
        ),
        "vectorised": lambda rows, r: augment_batch(
            images, rows, np.random.default_rng(r), p, out, field
        ),
        "opencv only": lambda rows, r: opencv_only(images, rows, p, out, field),
    }
    for r in range(args.rounds):
        rows = rng.permutation(len(images))[: args.batch]
        for name, run in versions.items():
            started = time.perf_counter()
            run(rows, r)
            times[name].append((time.perf_counter() - started) / args.batch * 1e6)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.size} px, batch {args.batch}, {args.rounds} rounds, cv2 threads {args.cv2_threads}"
    )
    for name, us in median.items():
        python = us - median["opencv only"]
        print(
            f"{name:12s} {us:8.1f} us/image  ({1e6 / us:7.0f} images/s per core)"
            + (
                f"  python share {python:6.1f} us ({python / us:4.0%})"
                if name != "opencv only"
                else ""
            )
        )
    print(f"vectorised / per-image time: {median['vectorised'] / median['per-image']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
