"""The wiring DVC cannot see: stage deps cover every module a stage imports, params exist, the
README's commands are real Makefile targets, and pyproject's warning filters catch our own
deprecations."""

import ast
import re
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from tests.dvc_stages import resolved_stages

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = resolved_stages()


def pipeline_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """`pipeline.x` modules that `module` imports, transitively (as file paths)."""
    seen = seen if seen is not None else set()
    path = ROOT / (module.replace(".", "/") + ".py")
    if str(path) in seen:
        return seen
    seen.add(str(path))
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("pipeline")]
        for name in names:
            if (ROOT / (name.replace(".", "/") + ".py")).is_file():
                pipeline_imports(name, seen)
            elif "." in name and (ROOT / name.replace(".", "/") / "__init__.py").is_file():
                pipeline_imports(f"{name}.__init__", seen)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_pipeline_module_is_a_stage_dependency(stage):
    module = re.search(r"python -m (pipeline\.\w+)", STAGES[stage]["cmd"]).group(1)
    needed = {str(Path(p).relative_to(ROOT)) for p in pipeline_imports(module)}
    deps = STAGES[stage]["deps"]
    missing = {path for path in needed if not any(_covers(dep, path) for dep in deps)}
    assert missing == set(), f"add to {stage}.deps in dvc.yaml"


def test_there_is_one_training_stage_per_backbone_and_its_runs_carry_its_name():
    from pipeline.train import stage_name

    found = {
        arch.group(1): stage
        for stage, spec in STAGES.items()
        if (arch := re.search(r"pipeline\.train --arch (\w+)", spec["cmd"]))
    }
    assert found == {arch: stage_name(arch) for arch in PARAMS["train"]["backbones"]}


def _covers(dep: str, path: str) -> bool:
    """A dep names the file itself or a folder above it (DVC hashes a folder dep whole)."""
    return path == dep or path.startswith(dep.rstrip("/") + "/")


@pytest.mark.parametrize("stage", [s for s in STAGES if s.startswith("train@")])
def test_training_depends_on_no_serving_code(stage):
    """A fix to the upload decoder or the page must not retrain the networks."""
    module = re.search(r"python -m (pipeline\.\w+)", STAGES[stage]["cmd"]).group(1)
    imported = {str(Path(p).relative_to(ROOT)) for p in pipeline_imports(module)}
    serving = {p for p in imported | set(STAGES[stage]["deps"]) if p.startswith("pipeline/serving")}
    assert serving == set()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_param_exists_in_params_yaml(stage):
    for key in STAGES[stage].get("params", []):
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict), f"{stage}: params key {key}: {part} is not a section"
            assert part in node, f"{stage}: params key {key} missing"
            node = node[part]


def test_the_product_stages_are_all_there():
    training = {f"train@{arch}" for arch in PARAMS["train"]["backbones"]}
    assert {"prepare", "augment", *training, "evaluate", "select"} <= set(STAGES)


DOCS = sorted((ROOT / "docs").glob("*.md"))


def make_commands(text: str) -> set[str]:
    """`make <verb>` in a markdown text's code (fenced blocks and `inline` spans), not its prose."""
    code = re.findall(r"```.*?```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    return set(re.findall(r"\bmake ([a-z][\w-]*)", "\n".join(code)))


def test_every_make_command_in_the_readme_and_docs_is_a_makefile_target():
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    readme = make_commands((ROOT / "README.md").read_text())
    assert {"demo", "test"} <= readme
    used = readme.union(*(make_commands(page.read_text()) for page in DOCS))
    assert used - targets == set()


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_a_quickstart_linking_every_reference_page_and_section():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    for page in DOCS:
        assert f"](docs/{page.name}" in readme, f"README does not link docs/{page.name}"
        if page.name == "deploy.md":  # a walk-through of its own, not a moved section
            continue
        for heading in re.findall(r"^## (.+)$", page.read_text(), re.M):
            assert f"docs/{page.name}#{anchor(heading)}" in readme, heading


def test_phony_lists_exactly_the_verbs_make_help_prints():
    text = (ROOT / "Makefile").read_text()
    phony = " ".join(re.findall(r"^\.PHONY:((?:.*\\\n)*.*)$", text, re.M))
    verbs = set(re.findall(r"^([a-zA-Z][\w-]*):.*## ", text, re.M))
    assert set(phony.replace("\\\n", " ").split()) == verbs


def test_a_deprecation_in_our_package_fails_the_tests_and_a_librarys_own_does_not():
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "config.py", 1, module="pipeline.config")
    with pytest.raises(FutureWarning):
        warnings.warn_explicit("soon", FutureWarning, "cam.py", 1, module="pipeline.serving.cam")
    warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="keras.src.x")
    warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="pipelines_elsewhere")


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_help_lists_every_verb_once_by_group_with_real_values():
    shown = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "help", "PORT=8123"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    groups = ["start", "pipeline", "serve", "deploy", "develop"]
    headings = [line for line in shown.splitlines() if line and not line.startswith(" ")]
    assert headings[1:] == groups, shown
    listed = re.findall(r"^  ([a-z][\w-]*) ", shown, re.M)
    verbs = re.findall(r"^([a-zA-Z][\w-]*):.*## ", (ROOT / "Makefile").read_text(), re.M)
    assert sorted(listed) == sorted(verbs)
    assert "$(" not in shown
    assert "http://127.0.0.1:8123" in shown  # serve's port, as given
    promote = next(line for line in shown.splitlines() if line.startswith("  promote "))
    assert "@champion at @challenger" in promote


def echoed_recipe_lines() -> list[tuple[str, str, str]]:
    """(verb, help group, line) for every Makefile recipe line make prints before running it (no
    leading `@`); continuation lines belong to the line they continue."""
    echoed, target, group, continued = [], "", "", False
    for line in (ROOT / "Makefile").read_text().splitlines():
        rule = re.match(r"^([a-zA-Z][\w-]*):(?!=)[^#]*(?:## @(\w+))?", line)
        if rule:
            target, group, continued = rule.group(1), rule.group(2) or "", False
        elif line.startswith("\t") and target:
            if not continued and not line.lstrip("\t").startswith("@"):
                echoed.append((target, group, line.strip()))
            continued = line.endswith("\\")
        elif line and not line.startswith("#"):
            target = ""
    return echoed


def test_a_users_verb_echoes_no_plumbing():
    """A user's verb (start, pipeline, serve, deploy) prints what it does, not the shell line behind
    it; the output filter and the tracking store's environment are echoed by no verb at all."""
    echoed = echoed_recipe_lines()
    assert any(target == "lint" for target, _, _ in echoed)  # the parse sees echoed lines
    user = [e for e in echoed if e[1] in ("start", "pipeline", "serve", "deploy")]
    assert not user, user
    plumbing = [e for e in echoed if "$(QUIET_TF)" in e[2] or "$(TRACKING)" in e[2]]
    assert not plumbing, plumbing
