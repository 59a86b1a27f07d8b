"""The installed versions a logged model asks for (its pip requirements), pinned exactly.

Given to MLflow explicitly because its inference of requirements loads the model again in a
subprocess, which costs about 30 s per logged model.
"""

from __future__ import annotations

from importlib import metadata

# The distribution that provides each Keras backend, in order of preference.
BACKEND_PACKAGES = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "jax": ("jax",),
    "torch": ("torch",),
}


def pins(names: list[str], backend: str | None = None) -> list[str]:
    """`name==version` for each installed name, plus the package of Keras' `backend`."""
    wanted = list(names)
    for candidate in BACKEND_PACKAGES.get(backend or "", ()):
        if _installed(candidate):
            wanted.append(candidate)
            break
    return [f"{name}=={metadata.version(name)}" for name in wanted]


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True
