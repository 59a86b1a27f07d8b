"""One trainer per output, and none that outlives the process that started it (issue 30)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import processes
from pipeline.errors import UserError


def test_a_second_writer_of_the_same_outputs_is_refused_with_the_holders_pid(tmp_path):
    lock = tmp_path / "models" / ".densenet121.train-lock"
    refused = pytest.raises(UserError, match=rf"another process \(pid {os.getpid()}\) is writing")
    with processes.exclusive(lock, "models/densenet121"), refused, processes.exclusive(lock, "x"):
        pass
    with processes.exclusive(lock, "models/densenet121"):  # released with its holder
        pass


def test_a_process_whose_parent_is_killed_stops_itself(tmp_path):
    """`kill -9` of the parent (dvc) alone: the child notices within its poll and ends."""
    child = (
        "import time; from pipeline import processes; "
        "processes.stop_when_orphaned(interval=0.1); print('watching', flush=True); "
        "time.sleep(60)"
    )
    parent = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    orphan = int(launcher.stdout.readline())
    assert launcher.stdout.readline().strip() == "watching"  # the child's, through the pipe
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 20
    while _running(orphan):
        if time.monotonic() > deadline:
            os.kill(orphan, signal.SIGKILL)
            pytest.fail("the orphaned child kept running after its parent was killed")
        time.sleep(0.1)


def _running(pid: int) -> bool:
    """Whether `pid` still runs: an exited orphan may stay a zombie (state Z) until its new
    parent, often a container's init, waits for it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]
