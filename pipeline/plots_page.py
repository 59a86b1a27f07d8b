"""`make plots-page`: write .dvc/plots.html, the page `dvc plots show` fills, with vega inside it.

DVC's own page loads vega, vega-lite and vega-embed from a CDN: offline, or behind a hospital's
firewall, every vega chart of `dvc plots show` is blank. This page carries the three libraries
itself, from their npm packages (package.json and package-lock.json pin them; `npm ci` puts them
in node_modules/), each preceded by its licence and the licences of the packages it is built
from. The page has no `{scripts}` placeholder, so DVC adds no CDN tag. It is committed: a fresh
clone draws its plots offline before anything is installed. Its head (title, style) and body are
edited in the page itself; this module only replaces the libraries between them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import exit_code
from pipeline.errors import UserError
from pipeline.files import write_text

PAGE = Path(".dvc/plots.html")
NODE_MODULES = Path("node_modules")
# (package, its browser bundle, the packages it expects on the page instead of bundling them)
LIBRARIES = (
    ("vega", "build/vega.min.js", ()),
    ("vega-lite", "build/vega-lite.min.js", ("vega",)),
    ("vega-embed", "build/vega-embed.min.js", ("vega", "vega-lite")),
)
LICENCE_FILE = re.compile(r"^(licen[cs]e|copying)([-.][\w.-]+)?$", re.IGNORECASE)
# The vega-* packages built into vega.min.js ship no licence file; they come from the Vega
# repository, whose BSD-3-Clause text (same holder) is vega-lite's LICENSE.
PROJECT_LICENCE = ("vega", "vega-lite")
# The page's own head (title, style) and body are written in the page itself, their one home;
# `make plots-page` replaces what lies between the head and `</head>` with the libraries.
HEAD_END = "</head>"


def package_dir(name: str, parent: Path | None = None) -> Path:
    """Where node resolves `name` from `parent`'s package: its own node_modules, then the top."""
    for base in ([parent / "node_modules"] if parent else []) + [NODE_MODULES]:
        if (base / name / "package.json").is_file():
            return base / name
    raise UserError(f"{NODE_MODULES / name}: not installed; run `npm ci` (make plots-page does)")


def licence_text(folder: Path) -> str:
    """The package's licence file, or its declared licence and author when it ships none."""
    for path in sorted(folder.iterdir()):
        if LICENCE_FILE.match(path.name):
            return path.read_text(encoding="utf-8").strip()
    meta = json.loads((folder / "package.json").read_text())
    declared = meta.get("license", "no licence declared")
    prefix, source = PROJECT_LICENCE
    if meta["name"].startswith(prefix) and declared == "BSD-3-Clause" and meta["name"] != source:
        project = licence_text(package_dir(source))
        return f"{declared} (package.json; no licence file; the Vega project's text):\n{project}"
    author = meta.get("author")
    author = author.get("name") if isinstance(author, dict) else author
    return f"{declared} (package.json; no licence file), {author}"


def built_from(name: str, externals: Sequence[str]) -> list[Path]:
    """The package and every package it depends on, but `externals`: what its bundle may carry."""
    seen: dict[str, Path] = {}
    todo: list[tuple[str, Path | None]] = [(name, None)]
    while todo:
        current, parent = todo.pop()
        if current in seen or current in externals:
            continue
        folder = package_dir(current, parent)
        seen[current] = folder
        dependencies = json.loads((folder / "package.json").read_text()).get("dependencies", {})
        todo += [(dependency, folder) for dependency in sorted(dependencies)]
    return [seen[n] for n in sorted(seen, key=lambda n: (n != name, n))]


def script(name: str, bundle: str, externals: Sequence[str]) -> str:
    """One library as an inline script, after a comment with the licences it is built under."""
    notices = []
    for folder in built_from(name, externals):
        meta = json.loads((folder / "package.json").read_text())
        notices.append(f"{meta['name']}@{meta['version']}:\n{licence_text(folder)}")
    code = (package_dir(name) / bundle).read_text(encoding="utf-8")
    if "</script" in code.lower():
        raise UserError(f"{name}: {bundle} holds '</script' and cannot be inlined in the page")
    comment = "\n\n".join(notices).replace("*/", "* /")  # a licence must not end the comment
    header = f"/*! {name}, inlined by pipeline/plots_page.py. Licences:\n\n{comment}\n*/"
    return f"<script>\n{header}\n{code}\n</script>\n"


def page(template: Path = PAGE) -> str:
    """`template` (the committed page) with the three libraries inline, in place of those it
    carries: its head up to the first script or `</head>`, the libraries, `</head>` onwards."""
    scripts = "".join(script(*library) for library in LIBRARIES)
    if not template.is_file():
        raise UserError(f"{template}: not found; restore it with `git checkout -- {template}`")
    text = template.read_text(encoding="utf-8")
    if HEAD_END not in text or "{plot_divs}" not in text:
        raise UserError(f"{template}: no {HEAD_END} or no {{plot_divs}}; not a DVC plots page")
    end = text.rindex(HEAD_END)  # the last: vega-embed's bundle spells one in a string
    start = text.find("<script>", 0, end)
    return text[: end if start < 0 else start] + scripts + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page (atomically); a missing node_modules is one line and exit code 2."""
    out = Path(argv[0]) if argv else PAGE
    return exit_code(lambda: _write(out))


def _write(out: Path) -> str:
    """The page written to `out`, as the line `main` prints."""
    write_text(out, page())
    return f"plots page: {out} ({out.stat().st_size // 1024} KiB, vega inline)"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
