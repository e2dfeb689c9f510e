"""docs/openapi.json is generated from the handler's own models; ``--check`` fails on drift."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

from capctl.handlers import load_handler


def generate() -> str:
    module = load_handler("create_booking")
    document = module.openapi_json(
        title="Capacity engine API",
        version="1.0.0",
        summary="Restaurant bookings that never overbook",
        description="POST /bookings checks capacity and writes the booking atomically and idempotently. "
        "Errors are RFC 9457 problem details with a machine-readable `code`.",
        security_schemes={"apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header)},
        security=[{"apiKey": []}],
    )
    return json.dumps(_problems_only(json.loads(document)), indent=2, sort_keys=True) + "\n"


_POWERTOOLS_422 = "#/components/schemas/HTTPValidationError"


def _problems_only(document: dict[str, Any]) -> dict[str, Any]:
    """Powertools adds a 422 with its own error schema to every operation. This API answers every
    validation error as problem+json (the handler's RequestValidationError handler), and routes
    that declare their 422 replace it; where one is left (a path parameter that cannot fail
    validation), no such response exists, so it goes, and its schema with it."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        response = operation["responses"].get("422", {})
        if response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref") == _POWERTOOLS_422:
            del operation["responses"]["422"]
    if _POWERTOOLS_422 not in json.dumps(document["paths"]):
        document["components"]["schemas"].pop("HTTPValidationError", None)
    return document


def write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generate())


def check(path: Path) -> int:
    current = path.read_text() if path.exists() else ""
    if current != generate():
        print(f"{path} is out of date: run `capctl openapi`", file=sys.stderr)
        return 1
    print(f"{path} matches the code")
    return 0
