"""One loader worker process: `python -m pipeline.loader_worker SPEC` (started by
pipeline.loader.ProcessFeed, never by hand).

SPEC is JSON: the shared-memory names of the images and of the batch slots, their shapes, the
seed and the augmentation. Each stdin line `slot epoch index row,row,...` is answered, once the
batch is in its slot, by `slot epoch index ok` on stdout (`error`, with the traceback on stderr,
when it failed). End-of-file on stdin (the feed closed it, or its process died) ends the worker.
Ctrl-C is the parent's to handle: the worker ignores SIGINT, and exits at the parent's EOF.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback

import cv2
import numpy as np

from pipeline.config import AugmentParams
from pipeline.loader import attach, epoch_plan, make_batch


def main(argv: list[str]) -> int:
    """Make batches into shared-memory slots until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # one OpenCV thread per worker: the processes are the parallelism (a pool of threads in each
    # of N workers would oversubscribe the cores); the bytes are the same either way
    cv2.setNumThreads(1)
    spec = json.loads(argv[0])
    blocks = attach(spec["images"]), attach(spec["slots"])
    shape = tuple(spec["shape"])
    images = np.ndarray(shape, np.uint8, buffer=blocks[0].buf)
    slots = np.ndarray((spec["n_slots"], spec["batch_size"], *shape[1:]), np.uint8, blocks[1].buf)
    augment = AugmentParams(**spec["augment"])
    seed, epoch, field = spec["seed"], None, None
    for line in sys.stdin:
        slot, batch_epoch, index, rows = line.split()
        if int(batch_epoch) != epoch:  # each worker draws the epoch's field itself, the same
            epoch = int(batch_epoch)
            field = epoch_plan(seed, epoch, len(images), shape[1:], augment)[1]
        status = "ok"
        try:
            picked = np.array(rows.split(","), dtype=np.int64)
            make_batch(images, picked, seed, epoch, int(index), augment, field, slots[int(slot)])
        except Exception:  # reported to the feed, which raises; the worker takes the next task
            traceback.print_exc()
            status = "error"
        print(slot, batch_epoch, index, status, flush=True)
    del images, slots  # views of the blocks: they must go before the blocks close
    for block in blocks:
        block.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
