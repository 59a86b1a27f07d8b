"""The GitHub Actions workflows lint clean and keep the promotion rollout's safety rails."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_both_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "promote.yml"}


def test_workflows_validate_against_githubs_schema():
    tool = Path(sys.executable).parent / "check-jsonschema"
    if not tool.is_file():
        pytest.skip("check-jsonschema not installed: run `make install` (dev extra)")
    command = [str(tool), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_nothing_when_it_is_installed():
    tool = shutil.which("actionlint")
    if tool is None:
        pytest.skip("actionlint not on PATH (ci.yml runs the upstream binary in its lint job)")
    result = subprocess.run([tool, *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promotion_logs_in_with_oidc_deploys_at_zero_traffic_and_can_roll_back():
    text = (ROOT / ".github" / "workflows" / "promote.yml").read_text()
    flow = yaml.safe_load(text)
    assert flow["permissions"]["id-token"] == "write"
    assert "azure/login@" in text and "client-secret" not in text
    steps = [s.get("name", "") for s in flow["jobs"]["deploy"]["steps"]]
    assert steps.index("Deploy the new colour at 0% traffic") < steps.index(
        "Smoke-test the new colour directly"
    )
    assert "--all-traffic" not in text  # a new colour starts with no traffic
    assert any("Roll back" in s for s in steps)
    assert "make rollback" in text
    assert "dvc pull" in text and "make promote" in text
