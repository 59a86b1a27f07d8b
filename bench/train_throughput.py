"""Training throughput: the project's input pipeline vs the model's own rate vs a naive loader.

Prints, in one run and on one machine, images/s of
  1. the input pipeline alone (in-memory uint8 images -> augmented uint8 batches, no model), with
     1, 2, 4, ... threads up to --workers, to show how it scales,
  2. the model alone (`fit` on slices of one pre-built uint8 array, no work per batch: the rate
     the hardware allows, through the same Keras data path as 3),
  3. a full training epoch through the project's pipeline (pipeline.batches.TrainBatches),
  4. a naive baseline that re-reads and decodes the PNG files every epoch, as
     `ImageDataGenerator.flow_from_directory` notebooks do, with the same model,
and the ratios that are the figures: pipeline feed / model rate (target >= 3x), project training /
model rate (target >= 0.9), project training / naive training.

    python bench/train_throughput.py                      # CPU: small, a few minutes
    KERAS_BACKEND=jax python bench/train_throughput.py --images 2048 --size 224 --batch 32
    python bench/train_throughput.py --size 224 --images 1024 --workers 2 --archs   # feed only
    ... --cv2-threads 1     # OpenCV single-threaded inside each loader thread (many-core hosts)
"""

from __future__ import annotations

import argparse
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

from pipeline.backbones import build_classifier  # noqa: E402
from pipeline.batches import TrainBatches, light  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.synthetic import generate  # noqa: E402

CLASSES = ("benign", "malignant", "normal")


class Prebuilt(keras.utils.PyDataset):
    """Slices of one pre-built uint8 array: the model's own rate through the same Keras path."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self) -> int:
        return int(np.ceil(len(self.x) / self.batch))

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
        return int(np.ceil(len(self.paths) / self.batch))

    def __getitem__(self, index: int):
        rows = range(index * self.batch, min(len(self.paths), (index + 1) * self.batch))
        images = []
        for i in rows:
            image = cv2.cvtColor(cv2.imread(str(self.paths[i])), cv2.COLOR_BGR2RGB)
            image = cv2.resize(image, (self.size, self.size))
            images.append(image[:, ::-1] if self.rng.random() < 0.5 else image)
        return np.stack(images).astype("float32"), np.eye(3, dtype="float32")[self.labels[rows]]


def timed_fit(model: keras.Model, data: keras.utils.PyDataset, n_images: int, epochs: int) -> float:
    """images/s over `epochs` timed epochs, after one untimed epoch (tracing, compilation)."""
    model.fit(data, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0)
    return n_images * epochs / (time.perf_counter() - started)


def feed_rate(data: TrainBatches, n_images: int, epochs: int, workers: int) -> float:
    """images/s the way Keras asks for batches: `workers` threads over each epoch's indices."""
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(epochs):
            for _batch in pool.map(data.__getitem__, range(len(data))):
                pass
            data.on_epoch_end()
    return n_images * epochs / (time.perf_counter() - started)


def main() -> int:
    """Measure training images per second of the input pipeline and the model, and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement")
    parser.add_argument("--workers", type=int, default=1, help="input-pipeline threads")
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
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), args.images, args.size, seed=0)
        paths = sorted(p for p in Path(tmp).rglob("*.png") if "_mask" not in p.name)
        labels = np.array([CLASSES.index(p.parent.name) for p in paths])
        images = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
        n = len(paths)
        print(
            f"backend={keras.backend.backend()} images={n} size={args.size} batch={args.batch} "
            f"workers={args.workers} cpus={os.cpu_count()} cv2_threads={cv2.getNumThreads()}"
        )
        augment = light(load_params(Path(__file__).resolve().parents[1] / "params.yaml").augment)

        def project():
            return TrainBatches(images, labels, 3, args.batch, 0, augment, workers=args.workers)

        counts = sorted({min(2**k, args.workers) for k in range(args.workers.bit_length() + 1)})
        for workers in counts:
            feed = feed_rate(project(), n, max(2, args.epochs), workers)
            print(f"input pipeline alone, {workers:2d} threads: {feed:9.1f} images/s")
        # uint8, as the project's pipeline feeds it: the same bytes go to the device
        prebuilt = Prebuilt(images, np.eye(3, dtype="float32")[labels], args.batch)
        naive = NaiveFiles(paths, labels, args.size, args.batch)
        for arch in args.archs:
            model = build_classifier(arch, args.size, CLASSES)
            model.compile("adam", "categorical_crossentropy")
            model_only = timed_fit(model, prebuilt, n, args.epochs)
            ours = timed_fit(model, project(), n, args.epochs)
            baseline = timed_fit(model, naive, n, args.epochs)
            print(
                f"{arch:12s} model alone {model_only:8.1f} | project training {ours:8.1f} | "
                f"naive file loader {baseline:8.1f} images/s"
            )
            print(
                f"{arch:12s} ratios: pipeline feed / model = {feed / model_only:6.2f}x"
                " (target >= 3)"
                f" | project / model = {ours / model_only:5.2f} (target >= 0.9)"
                f" | project / naive = {ours / baseline:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
