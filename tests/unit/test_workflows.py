"""The GitHub workflows: schema-valid (the same check-jsonschema `make workflow-check` runs,
offline), and the staging load test is scheduled, gated, full-size and fails on overbooking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CHECK = [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]


def load(name: str) -> dict[Any, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def schema_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHECK, *map(str, paths)], capture_output=True, text=True, timeout=120, check=False)


def test_every_workflow_is_valid():
    result = schema_check(*sorted(WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_invalid_workflow_is_caught(tmp_path):
    broken = load("staging-load-test.yml")
    broken["jobs"]["load-test"]["runs-on"] = None
    broken["jobs"]["load-test"]["timeout-minutes"] = "forever"
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    assert schema_check(path).returncode != 0


@pytest.fixture(scope="module")
def staging() -> dict[Any, Any]:
    return load("staging-load-test.yml")


def test_staging_load_test_runs_daily_and_by_hand(staging):
    triggers = staging[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    (schedule,) = triggers["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()


def test_staging_load_test_is_enabled_by_a_variable_and_skipped_on_forks_or_without_secrets(staging):
    gate = staging["jobs"]["gate"]
    assert "vars.STAGING_LOAD_TEST_ENABLED == 'true'" in gate["if"]
    assert "!github.event.repository.fork" in gate["if"]
    checked = gate["steps"][0]["env"]
    for secret in ("LOAD_TEST_BASE_URL", "LOAD_TEST_SERVICE_KEY", "LOAD_TEST_RESTAURANT_ID", "LOAD_TEST_AWS_ROLE_ARN"):
        assert f"secrets.{secret}" in " ".join(checked.values()), secret
    job = staging["jobs"]["load-test"]
    assert job["needs"] == "gate" and job["if"] == "needs.gate.outputs.ready == 'true'"


def test_staging_load_test_is_full_size_with_oidc_and_keeps_its_report(staging):
    job = staging["jobs"]["load-test"]
    assert job["permissions"]["id-token"] == "write"
    assert staging["permissions"] == {"contents": "read"}
    steps = job["steps"]
    aws = next(s for s in steps if s.get("uses", "").startswith("aws-actions/configure-aws-credentials"))
    assert aws["with"]["role-to-assume"] == "${{ secrets.LOAD_TEST_AWS_ROLE_ARN }}"
    load_step = next(s for s in steps if s.get("id") == "load")
    assert "capctl load --allow-remote" in load_step["run"] and "--smoke" not in load_step["run"]
    assert any("overCapacitySlots" in s.get("run", "") and "sys.exit(1" in s["run"] for s in steps)
    assert any("capctl dashboard --out" in s.get("run", "") for s in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert "reports/load-tests/*.json" in upload["with"]["path"] and "*.html" in upload["with"]["path"]


def test_pull_requests_keep_the_reduced_load_smoke():
    ci = load("ci.yml")
    assert "pull_request" in ci[True]
    run = " ".join(s.get("run", "") for s in ci["jobs"]["test"]["steps"])
    assert "make test" in run  # make test runs tests/load (the Artillery smoke), not the full load
    assert "capctl load" not in run
