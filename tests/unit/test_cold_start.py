"""What a function's cold start builds: its module imported in a fresh interpreter, as Lambda's
init does, and what is in memory afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.coldstart import fresh_interpreter
from tests.problems import PROBLEM_MEMBERS

ROOT = Path(__file__).resolve().parents[2]


def cold_start(function: str, probe: str) -> Any:
    """``import app`` of the function in a fresh interpreter, then ``probe`` (an expression) as JSON."""
    code = f"import json, sys\nimport app\nprint(json.dumps({probe}))\n"
    return fresh_interpreter(ROOT / "layers" / "capacity", ROOT / "functions" / function, code)


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
    assert members["Problem"] == sorted(PROBLEM_MEMBERS)
