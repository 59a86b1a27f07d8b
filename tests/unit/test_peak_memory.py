"""tests.peak_memory: a subprocess's peak is its own, whatever its parent holds."""

from __future__ import annotations

import numpy as np

from tests import peak_memory


def test_a_command_started_by_a_large_process_reports_its_own_peak(tmp_path):
    """A pytest-xdist worker at 4.9 GB made the batch scorer's wait4 ru_maxrss read 4.9 GB:
    here the parent holds 512 MB and a small command must still measure small."""
    held = np.ones(512 * 1024**2 // 8)  # touched, so resident in this process
    done, peak = peak_memory.run_module(tmp_path / "peak", "platform", timeout=60)
    assert done.returncode == 0, done.stderr
    assert held.sum() > 0
    assert 1024**2 < peak < 128 * 1024**2, f"{peak / 1024**2:.0f} MB"
