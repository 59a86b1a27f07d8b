"""Training batches as pure functions of (seed, epoch, index), and worker processes that make
them into shared-memory slots: the feed that scales with cores (`train.loader_kind: processes`).

Threads stop at about 5k images/s however many cores a GPU host has (measured on an H200 host:
the per-image Python between OpenCV calls holds the GIL and competes with the training's own
dispatch thread). Processes do not share a GIL. To keep them cheap nothing is pickled: the
images sit in one shared-memory block that every worker maps once, each batch is written into
one slot of a ring of shared-memory slots, and a task is one text line on a worker's stdin
(slot, epoch, batch index, rows) answered by one line on its stdout. Workers are plain
`python -m pipeline.loader_worker` processes that import NumPy and OpenCV only (multiprocessing's
spawn would re-import the training module, TensorFlow and MLflow included, in every worker); one
whose parent dies reads end-of-file and exits. This module imports no Keras for the same reason.

A batch depends on (seed, epoch, index) alone, so any number of workers, of either kind, in any
order, makes the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import weakref
from collections.abc import Sequence
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from pipeline.augmentation import augment_batch, speckle_field
from pipeline.config import AugmentParams
from pipeline.errors import UserError

KINDS = ("threads", "processes")


def epoch_plan(
    seed: int, epoch: int, n_images: int, shape: tuple[int, ...], augment: AugmentParams | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """This epoch's image order and speckle field (twice the image size), from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_images)
    field = None
    if augment is not None and augment.speckle:
        height, width, channels = shape
        field = speckle_field(rng, (2 * height, 2 * width, channels), augment.speckle)
    return order, field


def make_batch(
    images: np.ndarray,
    rows: np.ndarray,
    seed: int,
    epoch: int,
    index: int,
    augment: AugmentParams,
    field: np.ndarray | None,
    out: np.ndarray,
) -> np.ndarray:
    """Batch `index` of `epoch` (its `rows`) augmented into `out`: one random stream per
    (seed, epoch, batch), so the bytes never depend on who makes the batch or when."""
    rng = np.random.default_rng([seed, epoch, index])
    return augment_batch(images, rows, rng, augment, out, field)


def shared_memory_check(nbytes: int, folder: Path = Path("/dev/shm")) -> None:
    """UserError when `folder` (POSIX shared memory on Linux) has less than `nbytes` free: a
    container's default 64 MB would otherwise end in a bus error at the first write."""
    if not folder.is_dir():
        return
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise UserError(
            f"train.loader_kind: processes needs {nbytes / 2**20:.0f} MB of shared memory and "
            f"{folder} has {free / 2**20:.0f} MB free; use loader_kind: threads, or give the "
            "container more (docker run --shm-size=2g)"
        )


class ProcessFeed:
    """`workers` processes making augmented batches into a ring of shared-memory slots.

    `batch(epoch, index, rows, upcoming)` returns batch `index` (a copy: the slot is reused) and
    queues the `upcoming` ones while slots are free, so the workers run ahead of training. Any
    order of requests works (TensorFlow's tf.data asks for a few batches to learn their shapes,
    then starts again at 0). `close()` (or leaving a `with` block, or garbage collection, or the
    interpreter's exit) stops the workers and unlinks the shared memory.
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        seed: int,
        augment: AugmentParams,
        workers: int,
    ) -> None:
        self.batch_size, self.workers = batch_size, workers
        n_slots = 2 * workers + 1  # one being made and one waiting per worker, one being read
        slot_shape = (batch_size, *images.shape[1:])
        shared_memory_check(images.nbytes + n_slots * int(np.prod(slot_shape)))
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        self._res.blocks = [
            SharedMemory(create=True, size=max(1, images.nbytes)),
            SharedMemory(create=True, size=n_slots * int(np.prod(slot_shape))),
        ]
        shared = np.ndarray(images.shape, np.uint8, buffer=self._res.blocks[0].buf)
        shared[...] = images
        del shared  # a live view would stop the block from closing
        self._res.slots = np.ndarray((n_slots, *slot_shape), np.uint8, self._res.blocks[1].buf)
        spec = {
            "images": self._res.blocks[0].name,
            "shape": list(images.shape),
            "slots": self._res.blocks[1].name,
            "n_slots": n_slots,
            "batch_size": batch_size,
            "seed": seed,
            "augment": dataclasses.asdict(augment),
        }
        self._res.procs = [self._start(spec) for _ in range(workers)]
        self._free = list(range(n_slots))
        self._slot: dict[tuple[int, int], int] = {}  # queued or made, not yet returned
        self._made: set[tuple[int, int]] = set()
        self._busy = [0] * workers  # tasks each worker has not answered yet
        self._partial = [b""] * workers  # the start of an answer line not read in full yet

    @staticmethod
    def _start(spec: dict) -> subprocess.Popen:
        """One worker: `python -m pipeline.loader_worker SPEC`, talking through two pipes."""
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.loader_worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            # out of the terminal's process group: a Ctrl-C is the training process's to handle
            # (it closes the feed); a worker outlives nobody, it exits at its stdin's end
            start_new_session=True,
        )

    def batch(
        self,
        epoch: int,
        index: int,
        rows: np.ndarray,
        upcoming: Sequence[tuple[int, np.ndarray]] = (),
    ) -> np.ndarray:
        """Batch `index` of `epoch`, made from `rows`; `upcoming` (index, rows) pairs of the same
        epoch are queued behind it while slots are free."""
        key = (epoch, index)
        if key not in self._slot:
            while not self._free:
                self._evict(key)
            self._submit(key, rows)
        for later, later_rows in upcoming:
            if not self._free:
                break
            if (epoch, later) not in self._slot:
                self._submit((epoch, later), later_rows)
        while key not in self._made:
            self._wait()
        slot = self._slot.pop(key)
        self._made.discard(key)
        assert self._res.slots is not None, "the feed is closed"
        batch = self._res.slots[slot, : len(rows)].copy()
        self._free.append(slot)
        return batch

    def reset(self) -> None:
        """Forget every queued batch (a new epoch): wait until no worker writes a slot."""
        while len(self._made) < len(self._slot):
            self._wait()
        self._free.extend(self._slot.values())
        self._slot.clear()
        self._made.clear()

    def close(self) -> None:
        """Stop the workers and unlink the shared memory (idempotent)."""
        self._finalizer()

    def __enter__(self) -> ProcessFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (tests check they are gone after close)."""
        return [p.pid for p in self._res.procs]

    @property
    def block_names(self) -> list[str]:
        """The shared-memory blocks' names (under /dev/shm on Linux)."""
        return [b.name for b in self._res.blocks]

    def _submit(self, key: tuple[int, int], rows: np.ndarray) -> None:
        slot = self._free.pop()
        w = int(np.argmin(self._busy))
        line = f"{slot} {key[0]} {key[1]} {','.join(map(str, rows.tolist()))}\n".encode()
        proc = self._res.procs[w]
        assert proc.stdin is not None  # opened with PIPE
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"loader worker {w} exited with code {proc.wait()}") from None
        self._busy[w] += 1
        self._slot[key] = slot

    def _evict(self, keep: tuple[int, int]) -> None:
        """Free one slot for `keep`: drop a made batch nobody asked for yet (it is remade, the
        same, if asked for later), waiting for one when none is made."""
        made = [k for k in self._made if k != keep]
        if not made:
            self._wait()
            return
        self._made.discard(made[0])
        self._free.append(self._slot.pop(made[0]))

    def _wait(self) -> None:
        """Every answer the workers have sent, at least one (waiting for it): read here, in the
        caller's thread, with no reader thread to wake (a thread would contend for the GIL with
        the training's dispatch). RuntimeError when a worker failed or died."""
        procs = self._res.procs
        fds = {proc.stdout.fileno(): w for w, proc in enumerate(procs)}  # type: ignore[union-attr]
        answered = False
        while not answered:
            ready, _, _ = select.select(list(fds), [], [])
            for fd in ready:
                w = fds[fd]
                chunk = os.read(fd, 65536)
                if not chunk:  # the worker's end: it died
                    raise RuntimeError(f"loader worker {w} exited with code {procs[w].wait()}")
                *lines, self._partial[w] = (self._partial[w] + chunk).split(b"\n")
                for line in lines:
                    self._answer(w, line.decode())
                    answered = True

    def _answer(self, w: int, line: str) -> None:
        """Record worker `w`'s answer `slot epoch index status`."""
        _, epoch, index, status = line.split()
        if status != "ok":
            raise RuntimeError(f"loader worker {w} failed on batch {index} (traceback above)")
        self._busy[w] -= 1
        self._made.add((int(epoch), int(index)))


@dataclasses.dataclass
class _Resources:
    """What a ProcessFeed must give back, apart from the feed itself so that a finalizer can
    release it without keeping the feed alive."""

    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list)
    blocks: list[SharedMemory] = dataclasses.field(default_factory=list)
    slots: np.ndarray | None = None

    def release(self) -> None:
        for proc in self.procs:  # end-of-file on stdin: each worker exits after its batch
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.slots = None
        for block in self.blocks:
            block.close()
            with contextlib.suppress(FileNotFoundError):
                block.unlink()
        self.procs, self.blocks = [], []


def attach(name: str) -> SharedMemory:
    """Map the shared-memory block `name` made by another process, which owns and unlinks it.

    Before Python 3.13 attaching registers the block with this process's resource tracker, which
    unlinks it when this process exits, under its owner's feet: the registration is undone.
    """
    if sys.version_info >= (3, 13):
        return SharedMemory(name, track=False)  # type: ignore[call-arg]
    block = SharedMemory(name)
    resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
    return block
