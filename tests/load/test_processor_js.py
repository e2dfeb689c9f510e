"""The Artillery diners' unit tests (`load/processor.test.js`) under Node's own test runner: every hook
of `load/processor.js` called with fake contexts, events and responses, no API and no Artillery run.

Skipped only when `node` is not on PATH; `make setup` needs it for Artillery anyway.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path("load") / "processor.test.js"
# The tests in load/processor.test.js: all of them must run and pass.
MIN_PASSING = 51
SUMMARY = re.compile(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", re.MULTILINE)


def test_processor_js_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: install Node.js 20+ to run load/processor.test.js")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOAD_TEST_")}
    env["ARTILLERY_DISABLE_TELEMETRY"] = "true"
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(TESTS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    summary = {name: int(n) for name, n in SUMMARY.findall(result.stdout)}
    assert summary.keys() >= {"tests", "pass", "fail", "cancelled"}, output
    assert summary["fail"] == 0, output
    assert summary["cancelled"] == 0, output
    assert summary["pass"] >= MIN_PASSING, output
