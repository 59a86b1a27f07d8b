"""A command's own peak memory, measured inside it.

`os.wait4`'s `ru_maxrss` (and `resource.getrusage` in the child) is no measure of a subprocess: on
Linux `exec` folds the peak of the address space it replaces into the new program's, and that
space is the parent's (copied by `fork`, shared by `vfork`/`posix_spawn`). A scorer started by a
pytest-xdist worker that had grown to 4.9 GB reported 4.9 GB however little it used itself, and
a 1 GB Python parent makes `python -c pass` report ~1 GB. VmHWM in /proc/<pid>/status belongs to
the process's own address space, so the module runs under a few lines that write it on the way out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Run a module as `python -m` would, then write this process's VmHWM (in KiB) to a file, however
# the module ends (sys.exit and exceptions alike pass through the `finally`).
_MEASURED = """
import runpy, sys
report, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status, open(report, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
"""


def run_module(
    report: Path, module: str, *args: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], int]:
    """(the finished `python -m module args...`, its own peak resident memory in bytes)."""
    command = [sys.executable, "-c", _MEASURED, str(report), module, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    return done, int(report.read_text()) * 1024
