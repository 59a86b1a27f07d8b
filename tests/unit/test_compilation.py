"""JAX's persistent compilation cache is on by default in the project, and a user's folder wins."""

from pathlib import Path

import keras
import pytest

from pipeline import compilation


@pytest.fixture
def jax_config(monkeypatch):
    jax = pytest.importorskip("jax")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    yield jax.config
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_cache_goes_to_the_projects_dot_cache_on_jax(jax_config, tmp_path):
    assert compilation.enable_cache(tmp_path) == tmp_path / ".cache" / "jax"
    assert jax_config.jax_compilation_cache_dir == str(tmp_path / ".cache" / "jax")


def test_a_folder_the_user_set_is_kept(jax_config, tmp_path):
    jax_config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert compilation.enable_cache(tmp_path) == tmp_path / "mine"
    assert jax_config.jax_compilation_cache_dir == str(tmp_path / "mine")


def test_nothing_is_done_on_tensorflow(monkeypatch, tmp_path):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    assert compilation.enable_cache(tmp_path) is None
    assert not Path(tmp_path, ".cache").exists()
