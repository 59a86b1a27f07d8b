"""The feed's worker processes: the same batches as threads for any count, and nothing left
behind (no process, no shared-memory block) after a training that fails or is interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.batches import TrainBatches, light
from pipeline.errors import UserError
from pipeline.loader import ProcessFeed, shared_memory_check
from tests.factories import augment_params, project_params

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16
IMAGES = np.random.default_rng(0).integers(0, 256, (22, SIZE, SIZE, 3), dtype=np.uint8)
LABELS = np.arange(22) % 3


def batches(workers=1, kind="threads", seed=0):
    return TrainBatches(IMAGES, LABELS, 3, 4, seed, light(augment_params()), workers, kind)


def two_epochs(data, workers=1):
    """Every batch of two epochs, asked for by `workers` threads as Keras' loader does."""
    out = []
    with data, ThreadPoolExecutor(workers) as pool:
        for _ in range(2):
            out.append(np.concatenate([x for x, _ in pool.map(data.__getitem__, range(len(data)))]))
            data.on_epoch_end()
    return np.stack(out)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pids, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(map(gone, pids)):
        time.sleep(0.1)
    return [pid for pid in pids if not gone(pid)]


@pytest.fixture(scope="module")
def reference():
    return two_epochs(batches())


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_worker_processes_make_the_same_batches_as_one_thread(reference, workers):
    assert np.array_equal(two_epochs(batches(workers, "processes")), reference)


def test_loader_threads_and_a_second_run_make_the_same_batches(reference):
    assert np.array_equal(two_epochs(batches(2, "threads"), workers=2), reference)
    assert np.array_equal(two_epochs(batches()), reference)
    assert not np.array_equal(two_epochs(batches(seed=1)), reference)


def test_worker_processes_answer_requests_in_any_order(reference):
    with batches(2, "processes") as data:
        backwards = [data[i][0] for i in reversed(range(len(data)))]
        again = data[1][0]
    assert np.array_equal(np.concatenate(backwards[::-1]), reference[0])
    assert np.array_equal(again, backwards[-2])


def test_closing_ends_the_workers_and_unlinks_the_shared_memory():
    feed = ProcessFeed(IMAGES, 4, 0, light(augment_params()), workers=2)
    pids, names = feed.pids, feed.block_names
    assert feed.batch(0, 0, np.arange(4)).shape == (4, SIZE, SIZE, 3)
    feed.close()
    feed.close()  # twice is fine
    assert wait_gone(pids) == []
    assert not any(Path("/dev/shm", name).exists() for name in names)


def test_a_worker_ignores_ctrl_c_which_is_the_training_processs_to_handle():
    with ProcessFeed(IMAGES, 4, 0, light(augment_params()), workers=1) as feed:
        feed.batch(0, 1, np.arange(4))  # the worker is up
        os.kill(feed.pids[0], signal.SIGINT)
        time.sleep(0.5)
        assert not gone(feed.pids[0])
        assert feed.batch(0, 0, np.arange(4)).shape == (4, SIZE, SIZE, 3)


def test_a_dead_worker_is_an_error_not_a_hang():
    with ProcessFeed(IMAGES, 4, 0, light(augment_params()), workers=1) as feed:
        os.kill(feed.pids[0], signal.SIGKILL)
        with pytest.raises(RuntimeError, match="loader worker 0 exited"):
            feed.batch(0, 0, np.arange(4))


class Stop(keras.callbacks.Callback):
    """Ends the training at its second step, the way `make` ends it: an error or a Ctrl-C."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            if self.how == "error":
                raise ValueError("the training failed")
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("how", ["error", "ctrl-c"])
def test_a_failed_or_interrupted_training_leaves_no_worker_and_no_shared_memory(how):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(3, activation="softmax"))
    model.compile("sgd", "categorical_crossentropy", run_eagerly=True)
    data = batches(2, "processes")
    data[0]  # noqa: B018 (starts the workers)
    pids, names = data._feed.pids, data._feed.block_names

    def train():
        with data:
            model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[Stop(how)])

    try:
        with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else ValueError):
            train()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert wait_gone(pids) == []
    assert not any(Path("/dev/shm", name).exists() for name in names)


@pytest.mark.slow  # a subprocess
def test_workers_exit_when_the_training_process_is_killed(tmp_path):
    """SIGKILL runs no cleanup: the workers see end-of-file and exit, and multiprocessing's
    resource tracker unlinks the blocks the dead process owned."""
    script = (
        "import json, numpy as np, time\n"
        "from tests.factories import augment_params\n"
        "from pipeline.loader import ProcessFeed\n"
        "images = np.zeros((8, 16, 16, 3), np.uint8)\n"
        "feed = ProcessFeed(images, 4, 0, augment_params(), workers=2)\n"
        "feed.batch(0, 0, np.arange(4))\n"
        "print(json.dumps([feed.pids, feed.block_names]), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    pids, names = json.loads(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert wait_gone(pids, 30) == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path("/dev/shm", n).exists() for n in names):
        time.sleep(0.2)
    assert not any(Path("/dev/shm", name).exists() for name in names)


def test_too_little_shared_memory_is_a_clear_error_naming_the_parameter(tmp_path):
    with pytest.raises(UserError, match=r"train.loader_kind: processes needs .* MB of shared"):
        shared_memory_check(2**62, tmp_path)


def test_an_unknown_loader_kind_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"train.loader_kind: .*processes"):
        project_params({"train": {"loader_kind": "fork"}})
