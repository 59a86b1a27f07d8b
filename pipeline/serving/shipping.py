"""What ships with a model: this sub-package and the base modules it imports, found by reading it.

Why derived and not listed: hand-kept lists of files (one for the pyfunc, one for Azure) missed
modules imported inside functions. Here every `pipeline.*` import anywhere in
`pipeline/serving/` (top level or inside a function) is followed, transitively; the result is the
package to copy, so a new import ships itself, and a test holds the base to what it should be.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # pipeline/
SERVING_DIR = Path(__file__).resolve().parent  # pipeline/serving/
PACKAGE = PACKAGE_ROOT.name


def base_modules() -> list[str]:
    """Modules outside pipeline/serving/ that serving imports, transitively (e.g. `images`)."""
    todo = sorted(SERVING_DIR.rglob("*.py"))
    seen: set[Path] = set()
    base: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _pipeline_imports(path):
            target = _module_file(module)
            if target is None:
                continue
            if SERVING_DIR not in target.parents:
                base.add(str(target.relative_to(PACKAGE_ROOT).with_suffix("")).replace("/", "."))
            todo.append(target)
    return sorted(base)


def stage_package(into: Path) -> Path:
    """Copy `pipeline/__init__.py`, the base modules and `pipeline/serving/` (with its static
    files) to `into/pipeline/`; return that folder, ready to put on a PYTHONPATH."""
    target = Path(into) / PACKAGE
    shutil.copytree(
        SERVING_DIR, target / "serving", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    shutil.copyfile(PACKAGE_ROOT / "__init__.py", target / "__init__.py")
    for module in base_modules():
        relative = Path(*module.split(".")).with_suffix(".py")
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / relative, target / relative)
    return target


def _pipeline_imports(path: Path) -> set[str]:
    """Dotted `pipeline.*` names a file imports (`from pipeline import x` gives `pipeline.x`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == PACKAGE
        ):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
    return names


def _module_file(module: str) -> Path | None:
    """The file of a dotted `pipeline.*` module, or None for a name that is not a module."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    candidate = PACKAGE_ROOT.joinpath(*parts)
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    return None
