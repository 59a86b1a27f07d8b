"""A long stage's process and the one that started it: one writer per output, no orphans.

`kill -9` of `dvc repro` alone left the trainer running as an orphan, and the next `dvc repro`
started a second trainer on the same outputs. Two guards, each enough for half of it:
`stop_when_orphaned` ends a process whose parent died (DVC runs a stage's command as its direct
child when the command is one program: the shell execs it), and `exclusive` refuses a second
process on outputs another one holds (also when a shell between them kept the orphan's parent
alive), naming the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError

PARENT_POLL_SECONDS = 2.0


def stop_when_orphaned(interval: float = PARENT_POLL_SECONDS) -> None:
    """Watch the parent process from a daemon thread; when it is gone (this process was handed
    to init or a subreaper), say so on stderr and end this process with SIGTERM."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        print(
            f"{Path(sys.argv[0]).name}: the process that started this one ({parent}) is gone; "
            "stopping",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold `lock_path` (a file beside the outputs, not inside them: DVC deletes those) while
    writing `what`; a second process is refused at once with the holder's pid. The lock goes
    with the process, however it ends (kill -9 included)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise UserError(
                f"{what}: another process (pid {holder}) is writing it; wait for it to finish "
                f"or stop it (kill {holder}), then run again"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield
