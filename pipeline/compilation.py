"""Compile time out of the way: JAX's persistent compilation cache, on by default in the
project's `.cache/jax` (git-ignored), and a clock for the first step, which compiles.

Compiling the training step is minutes on a GPU at batch 128 (XLA compiles, then autotunes its
convolutions) and about as long again for every phase and every rerun. With the cache a second
run, or a `dvc exp run` (its temporary copy resolves the project from DVC_ROOT), loads the
compiled programs instead. A folder set by the user (JAX_COMPILATION_CACHE_DIR, JAX's own
variable, read when JAX is imported) is kept. TensorFlow has no such cache: nothing is done there.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras

CACHE_DIR = Path(".cache/jax")


def enable_cache(root: Path) -> Path | None:
    """Turn JAX's persistent cache on in `root/.cache/jax` unless a folder is set already; the
    folder in use, or None when the backend is not JAX."""
    if keras.backend.backend() != "jax":
        return None
    import jax  # only on the JAX backend: it is not installed with every backend

    current = getattr(jax.config, "jax_compilation_cache_dir", None)
    if current:
        return Path(current)
    folder = root / CACHE_DIR
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder


class CompileClock(keras.callbacks.Callback):
    """Seconds from the start of each `fit` call (phase) to the end of its first step: tracing,
    compilation and, on a GPU, autotuning, which the first epoch's images/s would otherwise hide.
    Printed per phase; their sum is the run's `compile_seconds` metric. With JAX's persistent
    cache (pipeline.compilation) a second run with the same shapes loads instead of compiling.
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.phases: list[float] = []
        self.started: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Start this phase's clock."""
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Stop it at the first step's end (once per phase)."""
        if self.started is not None:
            self.phases.append(time.perf_counter() - self.started)
            self.started = None
            print(f"train {self.arch}: first step (compile) {self.phases[-1]:.1f} s")

    @property
    def total(self) -> float:
        """Seconds spent on first steps over every phase so far."""
        return float(sum(self.phases))
