"""Training throughput: the project's input pipeline vs the model's own rate vs a naive loader.

Prints, in one run and on one machine, images/s of
  1. the input pipeline alone (in-memory uint8 images -> augmented uint8 batches, no model), for
     each loader kind (threads, processes) with --workers workers (--feed-scaling: 1, 2, 4, ...),
  2. the model alone (`fit` on slices of one pre-built uint8 array, no work per batch: the rate
     the hardware allows, through the same Keras data path as 3), with the first epoch's time
     and its first step's (tracing, compilation and, on a GPU, autotuning),
  3. a full training epoch through the project's pipeline (pipeline.batches.TrainBatches, the
     --loader kind with --workers workers),
  4. a naive baseline that re-reads and decodes the PNG files every epoch, as
     `ImageDataGenerator.flow_from_directory` notebooks do, with the same model (--naive),
and the ratios that are the figures: pipeline feed / model rate (target >= 3x), project training /
model rate (target >= 0.95), project training / naive training. Every figure is also one
`RESULT key=value ...` line, which bench/gpu.sh collects.

    python bench/train_throughput.py                      # CPU: small, a few minutes
    KERAS_BACKEND=jax python bench/train_throughput.py --images 2048 --size 224 --batch 32 \
        --workers 12 --loader processes
    ... --dtype-policy mixed_bfloat16          # what train.mixed_precision sets
    ... --distribution data_parallel --batch 256   # every local GPU, global batch (JAX)
    ... --compile-cache .cache/jax             # JAX's persistent cache: run twice, cold then warm
    python bench/train_throughput.py --size 224 --images 1024 --workers 2 --archs   # feed only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipeline import distribution  # noqa: E402
from pipeline.backbones import build_classifier  # noqa: E402
from pipeline.batches import TrainBatches, light  # noqa: E402
from pipeline.compilation import CompileClock  # noqa: E402
from pipeline.config import Params, load_params  # noqa: E402
from pipeline.loader import KINDS  # noqa: E402
from pipeline.synthetic import generate  # noqa: E402

CLASSES = ("benign", "malignant", "normal")
# the project's own augmentation and training params; the command line changes a few
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


class Prebuilt(keras.utils.PyDataset):
    """Slices of one pre-built uint8 array: the model's own rate through the same Keras path."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self) -> int:
        return len(self.x) // self.batch  # whole batches: a short one would compile again

    def __getitem__(self, index: int):
        rows = slice(index * self.batch, (index + 1) * self.batch)
        return self.x[rows], self.y[rows]


class NaiveFiles(keras.utils.PyDataset):
    """Reads, decodes, resizes and flips PNG files on every batch of every epoch."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int, batch: int) -> None:
        super().__init__()
        self.paths, self.labels, self.size, self.batch = paths, labels, size, batch
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.paths) // self.batch

    def __getitem__(self, index: int):
        rows = range(index * self.batch, min(len(self.paths), (index + 1) * self.batch))
        images = []
        for i in rows:
            image = cv2.cvtColor(cv2.imread(str(self.paths[i])), cv2.COLOR_BGR2RGB)
            image = cv2.resize(image, (self.size, self.size))
            images.append(image[:, ::-1] if self.rng.random() < 0.5 else image)
        return np.stack(images).astype("float32"), np.eye(3, dtype="float32")[self.labels[rows]]


def timed_fit(
    model: keras.Model, data: keras.utils.PyDataset, epochs: int
) -> tuple[float, float, float]:
    """(images/s over `epochs` timed epochs, seconds of the untimed first epoch before them, and
    of its first step: tracing, compilation and autotuning, as `train` logs `compile_seconds`)."""
    clock = CompileClock("bench")
    started = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    first = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return images_per_epoch(data) * epochs / (time.perf_counter() - started), first, clock.total


def images_per_epoch(data: keras.utils.PyDataset) -> int:
    """Images one epoch of `data` trains on."""
    if isinstance(data, Prebuilt | NaiveFiles):
        return len(data) * data.batch
    if isinstance(data, distribution.WholeShards):
        whole = len(data.labels) // data.batches.batch_size * data.batches.batch_size
        short = len(data.labels) - whole
        return whole + short - short % data.devices
    return len(data.labels)


def feed_rate(data: TrainBatches, epochs: int, workers: int) -> float:
    """images/s the way Keras asks for batches: `workers` threads over each epoch's indices
    (threads), or one thread in order while the worker processes run ahead (processes)."""
    threads = workers if data.kind == "threads" else 1
    with data, ThreadPoolExecutor(threads) as pool:
        data[0]  # noqa: B018 (workers started, as by training's first step)
        started = time.perf_counter()
        for _ in range(epochs):
            for _batch in pool.map(data.__getitem__, range(len(data))):
                pass
            data.on_epoch_end()
        return len(data.labels) * epochs / (time.perf_counter() - started)


def result(**figures: object) -> None:
    """One machine-readable line for bench/gpu.sh."""
    text = (f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print("RESULT " + " ".join(text), flush=True)


def arguments() -> argparse.Namespace:
    """The command line (module docstring for examples)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="global batch (all devices)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement")
    parser.add_argument("--workers", type=int, default=1, help="input-pipeline workers")
    parser.add_argument("--loader", choices=KINDS, default="threads", help="kind for training")
    parser.add_argument(
        "--feed-kinds", nargs="*", choices=KINDS, default=list(KINDS), help="kinds to scale"
    )
    parser.add_argument(
        "--cv2-threads",
        type=int,
        default=None,
        help="cv2.setNumThreads for the run (default: OpenCV's own pool, one thread per core)",
    )
    parser.add_argument(
        "--archs",
        nargs="*",
        default=["densenet121", "resnet50"],
        help="backbones to time (none: the input pipeline alone)",
    )
    parser.add_argument(
        "--dtype-policy",
        default="float32",
        choices=["float32", "mixed_bfloat16", "mixed_float16"],
        help="Keras' global dtype policy (train.mixed_precision in params)",
    )
    parser.add_argument("--distribution", choices=["data_parallel"], default=None)
    parser.add_argument("--compile-cache", default=None, help="JAX persistent cache folder")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive file loader")
    parser.add_argument("--distinct", type=int, default=256, help="images drawn, then repeated")
    parser.add_argument("--data-dir", default=None, help="keep (or reuse) the drawn images here")
    parser.add_argument(
        "--feed-scaling", action="store_true", help="the feed at 1, 2, 4, ... workers, not only N"
    )
    return parser.parse_args()


def setup(args: argparse.Namespace) -> None:
    """Seeds, OpenCV's threads, the dtype policy and JAX's compilation cache, before any model."""
    keras.utils.set_random_seed(0)
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    keras.config.set_dtype_policy(args.dtype_policy)
    if args.compile_cache:
        if keras.backend.backend() != "jax":
            raise SystemExit("--compile-cache: JAX's cache; set KERAS_BACKEND=jax")
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compile_cache)


def scale_feed(args, params: Params, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The input pipeline alone, per kind and worker count; each kind's rate at --workers."""
    augment = light(params.augment)
    counts = [args.workers]
    if args.feed_scaling:
        counts = sorted({min(2**k, args.workers) for k in range(args.workers.bit_length() + 1)})
    best = {}
    for kind in args.feed_kinds:
        for workers in counts:
            data = TrainBatches(images, labels, 3, args.batch, 0, augment, workers, kind)
            rate = feed_rate(data, max(2, args.epochs), workers)
            best[kind] = rate  # the last count is --workers
            print(f"input pipeline alone, {kind:9s} {workers:2d} workers: {rate:9.1f} images/s")
            result(step="feed", kind=kind, workers=workers, images_per_s=rate)
    return best


def bench_arch(
    args,
    params: Params,
    arch: str,
    images: np.ndarray,
    labels: np.ndarray,
    paths: list[Path],
    feed: float,
) -> None:
    """Model alone, project training and (unless --no-naive) the naive loader for `arch`."""
    n = len(labels)
    t = dataclasses.replace(params.train, batch_size=args.batch, distribution=args.distribution)
    built = build_classifier(arch, args.size, CLASSES)
    with distribution.data_parallel(built, t) as (model, devices):
        model.compile("adam", "categorical_crossentropy")
        prebuilt = Prebuilt(images, np.eye(3, dtype="float32")[labels], args.batch)
        model_only, first, compile_s = timed_fit(model, prebuilt, args.epochs)
        augment = light(params.augment)
        with TrainBatches(
            images, labels, 3, args.batch, 0, augment, args.workers, args.loader
        ) as b:
            ours, _, _ = timed_fit(
                model, b if devices == 1 else distribution.WholeShards(b, devices), args.epochs
            )
        naive = 0.0
        if not args.no_naive:
            naive, _, _ = timed_fit(
                model, NaiveFiles(paths, labels, args.size, args.batch), args.epochs
            )
    print(
        f"{arch:12s} model alone {model_only:8.1f} | project training {ours:8.1f} | "
        f"naive file loader {naive:8.1f} images/s | first epoch {first:6.1f} s "
        f"(first step: compile + autotune {compile_s:5.1f} s) | devices {devices} | {n} images"
    )
    print(
        f"{arch:12s} ratios: pipeline feed / model = {feed / model_only:6.2f}x (target >= 3)"
        f" | project / model = {ours / model_only:5.2f} (target >= 0.95)"
        + (f" | project / naive = {ours / naive:5.2f}x" if naive else "")
    )
    result(
        step="train",
        arch=arch,
        batch=args.batch,
        dtype=args.dtype_policy,
        devices=devices,
        loader=args.loader,
        workers=args.workers,
        model_alone=model_only,
        project=ours,
        naive=naive,
        first_epoch_s=first,
        compile_s=compile_s,
        feed=feed,
        feed_over_model=feed / model_only,
        project_over_model=ours / model_only,
    )


def synthetic_set(folder: Path, n_images: int, distinct: int, size: int) -> list[Path]:
    """`n_images` PNG paths of a synthetic set in `folder`: `distinct` drawn images (drawn once,
    kept when `folder` already holds them), repeated. Drawing is about 25-100 ms an image: the
    rates measured do not depend on how many images differ, and bench/gpu.sh's steps share one."""
    if not any(folder.rglob("*.png")):
        generate(folder, min(n_images, distinct), size, seed=0)
    paths = sorted(p for p in folder.rglob("*.png") if "_mask" not in p.name)
    return (paths * -(-n_images // len(paths)))[:n_images]


def main() -> int:
    """Measure training images per second of the input pipeline and the model, and print them."""
    args = arguments()
    setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_set(Path(args.data_dir or tmp), args.images, args.distinct, args.size)
        labels = np.array([CLASSES.index(p.parent.name) for p in paths])
        decoded = {p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in set(paths)}
        images = np.stack([decoded[p] for p in paths])
        print(
            f"backend={keras.backend.backend()} images={len(paths)} size={args.size} "
            f"batch={args.batch} workers={args.workers} loader={args.loader} "
            f"dtype={args.dtype_policy} distribution={args.distribution} cpus={os.cpu_count()} "
            f"cv2_threads={cv2.getNumThreads()} compile_cache={args.compile_cache}",
            flush=True,
        )
        params = load_params(PARAMS_FILE)
        best = scale_feed(args, params, images, labels)
        # the feed rate the training's kind reaches with --workers (the ratio's numerator)
        feed = best.get(args.loader) or max(best.values(), default=float("nan"))
        for arch in args.archs:
            bench_arch(args, params, arch, images, labels, paths, feed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
