"""The GitHub Actions workflows lint clean and keep the promotion rollout's safety rails."""

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


def test_actionlint_finds_nothing():
    tool = Path(sys.executable).parent / "actionlint"
    if not tool.is_file():
        pytest.skip("actionlint not installed: run `make install` (dev extra)")
    result = subprocess.run([str(tool), *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promotion_logs_in_with_oidc_deploys_at_zero_traffic_and_can_roll_back():
    text = (ROOT / ".github" / "workflows" / "promote.yml").read_text()
    flow = yaml.safe_load(text)
    # the OIDC token only for the jobs that log in to Azure, not for the whole workflow
    assert "id-token" not in flow["permissions"]
    for name, job in flow["jobs"].items():
        logs_in = any(s.get("uses", "").startswith("azure/login@") for s in job["steps"])
        assert (job.get("permissions", {}).get("id-token") == "write") == logs_in, name
    assert "azure/login@" in text
    assert "client-secret" not in text
    steps = [s.get("name", "") for s in flow["jobs"]["deploy"]["steps"]]
    assert steps.index("Deploy the new colour at 0% traffic") < steps.index(
        "Smoke-test the new colour directly"
    )
    assert "--all-traffic" not in text  # a new colour starts with no traffic
    assert any("Roll back" in s for s in steps)
    assert "make rollback" in text
    assert "dvc pull" in text
    assert "make promote" in text
