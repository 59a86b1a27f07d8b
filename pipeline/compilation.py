"""JAX's persistent compilation cache, on by default in the project's `.cache/jax` (git-ignored).

Compiling the training step is minutes on a GPU at batch 128 (XLA compiles, then autotunes its
convolutions) and about as long again for every phase and every rerun. With the cache a second
run, or a `dvc exp run` (its temporary copy resolves the project from DVC_ROOT), loads the
compiled programs instead. A folder set by the user (JAX_COMPILATION_CACHE_DIR, JAX's own
variable, read when JAX is imported) is kept. TensorFlow has no such cache: nothing is done there.
"""

from __future__ import annotations

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
