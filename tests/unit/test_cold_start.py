"""What a function's cold start builds: its module imported in a fresh interpreter, as Lambda's
init does, and what is in memory afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cold_start(function: str, probe: str) -> Any:
    """``import app`` of the function in a fresh interpreter, then ``probe`` (an expression) as JSON."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "capacity"), str(ROOT / "functions" / function)]),
        "DATABASE_URL": "postgresql://unit@127.0.0.1:9/unit",  # never connected at import
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "CapacityEngineTest",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    env.pop("ALERT_TOPIC_ARN", None)
    code = f"import json, sys\nimport app\nprint(json.dumps({probe}))\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT / "functions" / function),
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_problem_models_are_built_for_the_document_not_at_cold_start():
    complete = cold_start(
        "create_booking",
        "{name: getattr(sys.modules['capacity.models'], name).__pydantic_complete__"
        " for name in ('Problem', 'FieldError', 'BookingRequest', 'BookingCreated', 'AlternativeSlot')}",
    )
    assert complete == {
        "Problem": False,
        "FieldError": False,
        "BookingRequest": True,
        "BookingCreated": True,
        "AlternativeSlot": True,
    }


def test_the_document_still_describes_a_problem():
    members = cold_start(
        "create_booking",
        "{k: sorted(v.get('properties', {})) for k, v in json.loads(app.openapi_json())"
        "['components']['schemas'].items() if k in ('Problem', 'FieldError')}",
    )
    assert members["FieldError"] == ["field", "message"]
    assert members["Problem"] == sorted(
        [
            "type",
            "title",
            "status",
            "detail",
            "instance",
            "code",
            "errors",
            "requested",
            "remainingCovers",
            "alternatives",
        ]
    )
