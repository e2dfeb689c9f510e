"""problem+json responses (RFC 9457), shared by the handler and the local API Gateway emulator."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools.event_handler import Response

from capacity.outcomes import PROBLEM_CONTENT_TYPE, ProblemCode, ProblemError


def problem_response(exc: ProblemError) -> Response[Any]:
    return Response(
        status_code=exc.status,
        content_type=PROBLEM_CONTENT_TYPE,
        body=json.dumps(exc.body()),
        headers=dict(exc.headers),
    )


def problem_result(exc: ProblemError) -> dict[str, Any]:
    """The same problem as an API Gateway proxy result, for answers given outside the resolver."""
    return {
        "statusCode": exc.status,
        "headers": {"Content-Type": PROBLEM_CONTENT_TYPE, **exc.headers},
        "body": json.dumps(exc.body()),
        "isBase64Encoded": False,
    }


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_problem(errors: Sequence[Any]) -> ProblemError:
    """Turn pydantic/Powertools validation errors into the contract's problem.

    A missing Idempotency-Key header is 400 ``idempotency_key_missing``; unparseable JSON (or no
    body at all) is 400 ``malformed_request``; anything else is 422
    ``validation_error`` listing every failing field. Input values are never echoed back.
    """
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "missing" and loc == ("header", "idempotency-key"):
            return ProblemError(
                ProblemCode.IDEMPOTENCY_KEY_MISSING, "Send an Idempotency-Key header (1-255 visible ASCII)."
            )
        if err.get("type") == "json_invalid" or (err.get("type") == "missing" and loc == ("body",)):
            return ProblemError(ProblemCode.MALFORMED_REQUEST, "The request body must be a JSON object.")
        if err.get("type") in ("model_attributes_type", "model_type") and loc == ("body",):
            return ProblemError(ProblemCode.MALFORMED_REQUEST, "The request body must be a JSON object.")
    fields = [{"field": _field_name(err.get("loc", ())), "message": _message(err)} for err in errors]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ProblemError(ProblemCode.VALIDATION_ERROR, detail, extra={"errors": fields})


def _message(err: Any) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    msg = str(err.get("msg", "invalid"))
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg
