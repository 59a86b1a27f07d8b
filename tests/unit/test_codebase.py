"""The package stays readable in an afternoon: every function of `pipeline/` fits on a screen,
and every module is short enough to read in one sitting.

50 lines, counted from the `def` line through the function's last line (docstring, comments and
blank lines included, decorators not), is what a laptop screen shows at a readable font size
beside a terminal. A function that needs more is doing more than one thing: a stage's `run`
should read as the two or three steps it takes (STYLE.md), a schedule as its numbered cases.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"
MAX_FUNCTION_LINES = 50
# A module over 450 lines holds more than one thing (issue 25 measured stage modules of 500-750
# lines against example-get-started's 33-101 and nanoGPT's largest, 336): split it along a seam
# into modules named for what they hold, as prepare / inspection / prepare_report are.
MAX_MODULE_LINES = 450


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function in `source` longer than `limit`
    lines, nested functions and methods included (each counted on its own as well)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append((name.rstrip("."), child.lineno, length))
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def test_every_package_function_fits_on_a_screen():
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} is {length} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length in long_functions(path.read_text())
    ]
    assert not too_long, (
        f"over {MAX_FUNCTION_LINES} lines (split each into functions that do one thing):\n"
        + "\n".join(too_long)
    )


def test_no_package_module_is_over_450_lines():
    lines = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    too_long = {path: n for path, n in lines.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"over {MAX_MODULE_LINES} lines (split each along a seam): {too_long}"
    assert len(lines) > 50  # the walk saw the package, serving/ included


def test_the_length_check_counts_from_def_to_last_line_and_sees_methods():
    body = "\n".join(f"    x{i} = {i}" for i in range(49))
    fits = f"def fits():\n{body}\n"  # 50 lines
    source = f"{fits}\n\nclass Stage:\n{textwrap.indent(fits, '    ')}    def over(self):\n"
    source += textwrap.indent(f"{body}\n    return x0\n", "    ")
    assert long_functions(source) == [("Stage.over", 104, 51)]  # Stage.fits: 50, allowed


def package_map() -> str:
    """The map in pipeline/__init__.py's docstring, from its first heading to its end."""
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    return doc[doc.index("Stages (dvc.yaml)") :]


def test_the_package_map_names_every_module_and_the_development_guide_shows_the_same_map():
    named = {line.split()[0] for line in package_map().splitlines() if line.startswith("    ")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {"serving/"}
    assert modules <= named, f"not in pipeline/__init__.py's map: {sorted(modules - named)}"
    guide = (PACKAGE.parent / "docs" / "development.md").read_text()
    assert package_map() in guide, "docs/development.md's map differs from pipeline/__init__.py's"
