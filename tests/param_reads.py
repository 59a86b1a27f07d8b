"""Which params.yaml keys a stage reads, found by reading its code: DVC re-runs a stage when a
declared parameter changes, so a key read but not declared leaves the stage "up to date" on a
change that alters its output, and a key declared but never read re-runs it for nothing.

From the stage module's `run(params, ...)`, every attribute chain on the params object is
followed, through local aliases (`e = params.evaluate`), through calls into the pipeline's own
functions (the argument is bound to the callee's parameter and its body is read in turn) and
through parameters annotated with a params class (`p: AugmentParams`). A params object handed to
anything else (a library, `dataclasses.asdict`) counts as reading all of it. One backbone's
schedule, `params.train.arch(name)`, is the key `train.backbones.<arch>`.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from functools import cache
from pathlib import Path

ARCH = "<arch>"  # stands for the backbone a stage is run for: train.backbones.<arch>


@dataclasses.dataclass(frozen=True)
class Function:
    module: str  # pipeline.x
    name: str


class ParamReads:
    """Reads the code under `root` (a folder holding the `pipeline` package)."""

    def __init__(self, root: Path, tree: dict, classes: dict[str, str]):
        self.root = root
        self.tree = tree  # params.yaml as loaded: which attribute names are keys
        self.classes = classes  # params class name -> its key (AugmentParams -> augment)
        self._memo: dict[tuple, frozenset[str]] = {}

    def stage(self, module: str) -> set[str]:
        """Keys read by `module.run(params, ...)`."""
        return set(self.reads(Function(module, "run"), (("params", ""),)))

    def reads(self, function: Function, bindings: tuple[tuple[str, str], ...]) -> frozenset[str]:
        key = (function, bindings)
        if key not in self._memo:
            self._memo[key] = frozenset()  # recursion guard
            node = self._definitions(function.module).get(function.name)
            found = self._body(function.module, node, dict(bindings)) if node else set()
            self._memo[key] = frozenset(found)
        return self._memo[key]

    # --- one function's body -------------------------------------------------------------------

    def _body(self, module: str, node: ast.FunctionDef, env: dict[str, str]) -> set[str]:
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            annotated = _annotation_name(arg.annotation)
            if arg.arg not in env and annotated in self.classes:
                env[arg.arg] = self.classes[annotated]
        aliases = self._aliases(node, env)
        parents = {
            child: parent for parent in ast.walk(node) for child in ast.iter_child_nodes(parent)
        }
        found: set[str] = set()
        for expr in ast.walk(node):
            path = self._resolve(expr, env)
            if path is None or self._in_longer_chain(expr, parents, env):
                continue  # not a params value, or part of a longer chain
            parent = parents.get(expr)
            if isinstance(parent, ast.Assign) and parent.value is expr and id(parent) in aliases:
                continue  # an alias: its uses are followed instead
            call = parents.get(parent) if isinstance(parent, ast.keyword) else parent
            callee = self._callee(module, call) if isinstance(call, ast.Call) else None
            if callee is not None and expr is not call.func:
                bound = _bind(self._definitions(callee.module).get(callee.name), call, expr)
                if bound is not None:
                    found |= self.reads(callee, ((bound, path),))
                    continue
            found.add(path)
        return found

    def _in_longer_chain(self, expr: ast.AST, parents: dict, env: dict[str, str]) -> bool:
        """`params.train` in `params.train.batch_size` or in `params.train.arch(name)`."""
        parent = parents.get(expr)
        if not (isinstance(parent, ast.Attribute) and parent.value is expr):
            return False
        call = parents.get(parent)
        method = isinstance(call, ast.Call) and call.func is parent
        return self._resolve(call if method else parent, env) is not None

    def _aliases(self, node: ast.FunctionDef, env: dict[str, str]) -> set[int]:
        """Add `name = <params chain>` assignments to env (until no new one); their ids."""
        seen: set[int] = set()
        changed = True
        while changed:
            changed = False
            for stmt in ast.walk(node):
                if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
                    continue
                target, path = stmt.targets[0], self._resolve(stmt.value, env)
                if isinstance(target, ast.Name) and path is not None and target.id not in env:
                    env[target.id] = path
                    seen.add(id(stmt))
                    changed = True
        return seen

    def _resolve(self, expr: ast.AST | None, env: dict[str, str]) -> str | None:
        """The key `expr` stands for ("" is the whole file), or None if it is no params value."""
        if isinstance(expr, ast.Name) and isinstance(expr.ctx, ast.Load):
            return env.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = self._resolve(expr.value, env)
            if base is not None and expr.attr in self._keys(base):
                return f"{base}.{expr.attr}" if base else expr.attr
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            base = self._resolve(expr.func.value, env)
            if base == "train" and expr.func.attr == "arch":
                return f"train.backbones.{ARCH}"
        return None

    def _keys(self, path: str) -> set[str]:
        node: object = self.tree
        for part in path.split(".") if path else []:
            backbones = self.tree["train"]["backbones"]
            node = next(iter(backbones.values())) if part == ARCH else node[part]  # type: ignore[index]
        return set(node) if isinstance(node, dict) else set()

    # --- modules -------------------------------------------------------------------------------

    @cache  # noqa: B019 - one reader per test session
    def _definitions(self, module: str) -> dict[str, ast.FunctionDef]:
        path = self.root / (module.replace(".", "/") + ".py")
        if not path.is_file():
            return {}
        tree = ast.parse(path.read_text())
        return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    @cache  # noqa: B019
    def _imports(self, module: str) -> dict[str, str]:
        """Local name -> `pipeline.x` module, or `pipeline.x:function` for imported functions."""
        tree = ast.parse((self.root / (module.replace(".", "/") + ".py")).read_text())
        names: dict[str, str] = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    is_module = (self.root / (sub.replace(".", "/") + ".py")).is_file()
                    names[alias.asname or alias.name] = (
                        sub if is_module else f"{node.module}:{alias.name}"
                    )
        return names

    def _callee(self, module: str, call: ast.Call) -> Function | None:
        func, imports = call.func, self._imports(module)
        if isinstance(func, ast.Name):
            if func.id in self._definitions(module):
                return Function(module, func.id)
            target = imports.get(func.id, "")
            if ":" in target:
                return Function(*target.split(":"))
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            target = imports.get(func.value.id, "")
            if target and ":" not in target:
                return Function(target, func.attr)
        return None


def _annotation_name(annotation: ast.AST | None) -> str | None:
    if isinstance(annotation, ast.Name):
        return annotation.id
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value.split("|")[0].strip()
    if isinstance(annotation, ast.BinOp):  # X | None
        return _annotation_name(annotation.left)
    return None


def _bind(callee: ast.FunctionDef | None, call: ast.Call, value: ast.AST) -> str | None:
    """The callee's parameter that `value` (an argument of `call`) is bound to."""
    if callee is None:
        return None
    positional = [a.arg for a in [*callee.args.posonlyargs, *callee.args.args]]
    for i, arg in enumerate(call.args):
        if arg is value and i < len(positional):
            return positional[i]
    for keyword in call.keywords:
        if keyword.value is value and keyword.arg is not None:
            return keyword.arg
    return None


def params_classes() -> dict[str, str]:
    """Each params dataclass's name -> its key (ArchParams -> train.<arch>)."""
    from pipeline import config

    out = {"Params": ""}
    for name, hint in typing.get_type_hints(config.Params).items():
        if dataclasses.is_dataclass(hint):
            out[hint.__name__] = name
    out["ArchParams"] = f"train.backbones.{ARCH}"
    return out


def covered(read: str, declared: list[str]) -> bool:
    """A read is covered by a declared key equal to it or above it (a whole section)."""
    return any(read == key or read.startswith(key + ".") for key in declared)


def used(key: str, reads: set[str]) -> bool:
    """A declared key is used when something at, above or below it is read."""
    return any(
        read == key or read.startswith(key + ".") or key.startswith(read + ".") for read in reads
    )
