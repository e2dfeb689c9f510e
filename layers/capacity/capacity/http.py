"""The booking function's HTTP answers that are not bookings: problem+json responses (RFC 9457),
the 415 for a body declared as anything but JSON, and validation errors as the contract's problem.
(``capctl serve``'s own gateway answers build their bodies with ``outcomes.problem_body`` too.)"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aws_lambda_powertools.event_handler import Response

from capacity.outcomes import PROBLEM_CONTENT_TYPE, ProblemCode, ProblemError, problem_body


def problem_response(exc: ProblemError, instance: str | None = None) -> Response[Any]:
    return Response(
        status_code=exc.status,
        content_type=PROBLEM_CONTENT_TYPE,
        body=json.dumps(exc.body(instance)),
        headers=dict(exc.headers),
    )


def problem_result(exc: ProblemError, instance: str | None = None) -> dict[str, Any]:
    """The same problem as an API Gateway proxy result, for answers given outside the resolver."""
    return {
        "statusCode": exc.status,
        "headers": {"Content-Type": PROBLEM_CONTENT_TYPE, **exc.headers},
        "body": json.dumps(exc.body(instance)),
        "isBase64Encoded": False,
    }


_STANDARD_MEMBERS = ("type", "title", "status", "detail", "instance", "code")


def with_instance(body: dict[str, Any], instance: str | None) -> dict[str, Any]:
    """A problem body in the one member order that ``problem_body`` gives every code (a body read
    back from jsonb comes in jsonb's order), with ``instance`` set when one is given. The other
    members are kept as they are: a replay's body is the stored one."""
    if "code" not in body:
        return body
    instance = instance if instance is not None else body.get("instance")
    extras = {k: v for k, v in body.items() if k not in _STANDARD_MEMBERS}
    ordered = problem_body(ProblemCode(body["code"]), str(body.get("detail", "")), instance=instance, **extras)
    return {k: v if k == "instance" else body.get(k, v) for k, v in ordered.items()}


def media_type_refusal(headers: Mapping[str, Any]) -> ProblemError | None:
    """415 for a body declared as anything but JSON. Media types compare case-insensitively and
    may carry parameters (charset=utf-8); no Content-Type at all is read as JSON."""
    declared = declared_media_type(headers)
    if declared in (None, "", JSON_MEDIA_TYPE):
        return None
    return ProblemError(
        ProblemCode.UNSUPPORTED_MEDIA_TYPE,
        "The request body must be JSON: send Content-Type: application/json.",
        headers={"Accept-Post": JSON_MEDIA_TYPE},
    )


def declared_media_type(headers: Mapping[str, Any]) -> str | None:
    """The Content-Type's media type, lower-cased and without parameters; None when absent."""
    value = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if isinstance(value, list):  # a multiValueHeaders map: API Gateway keeps the last
        value = value[-1] if value else None
    if value is None:
        return None
    return str(value).split(";", 1)[0].strip().lower()


JSON_MEDIA_TYPE = "application/json"


# Header names as the caller spells them (Powertools reports them lower-cased).
_HEADER_NAMES = {"idempotency-key": "Idempotency-Key", "x-run-id": "X-Run-Id"}

_ONCE_MESSAGES = {
    "Idempotency-Key": "was sent more than once: exactly one key is required",
    "X-Run-Id": "was sent more than once: exactly one run id is allowed",
}

# What a value of each patterned field must look like, said so that a caller can fix it.
_PATTERN_MESSAGES = {
    "time": "must be a time as HH:MM, 00:00 to 23:59",
    "source": "must be 1-32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
    "guest.phone": "must be a phone number: 6-25 digits, spaces, brackets or dashes, optionally after a +",
    "Idempotency-Key": "must be 1-255 visible ASCII characters",
    "X-Run-Id": "must be 1-64 characters of A-Z a-z 0-9 . _ : -",
}


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "header" and len(parts) > 1:
        return _HEADER_NAMES.get(parts[1].lower(), parts[1])
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_problem(errors: Sequence[Any]) -> ProblemError:
    """Turn pydantic/Powertools validation errors into the contract's problem.

    A missing Idempotency-Key header is 400 ``idempotency_key_missing``; unparseable JSON (or no
    body at all) is 400 ``malformed_request``; anything else is 422
    ``validation_error`` listing every failing field, each with a sentence the caller can act on
    (never a pattern or a pydantic type name). Input values are never echoed back.
    """
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if loc == ("header", "idempotency-key") and (err.get("type") == "missing" or err.get("input") == ""):
            return ProblemError(
                ProblemCode.IDEMPOTENCY_KEY_MISSING, "Send an Idempotency-Key header (1-255 visible ASCII)."
            )
        if err.get("type") == "json_invalid" or (err.get("type") == "missing" and loc == ("body",)):
            return ProblemError(ProblemCode.MALFORMED_REQUEST, "The request body must be a JSON object.")
        if err.get("type") in ("model_attributes_type", "model_type", "dict_type") and loc == ("body",):
            return ProblemError(ProblemCode.MALFORMED_REQUEST, "The request body must be a JSON object.")
    fields = []
    for err in errors:
        field = _field_name(err.get("loc", ()))
        entry = {"field": field, "message": field_message(field, err)}
        if entry not in fields:
            fields.append(entry)
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ProblemError(ProblemCode.VALIDATION_ERROR, detail, extra={"errors": fields})


def field_message(field: str, err: Any) -> str:
    """One field error as a sentence that completes "<field> ...". Falls back to a plain "is not
    valid" rather than pydantic's wording, which names patterns and Python types."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    if field in _ONCE_MESSAGES and kind in ("string_type", "list_type"):
        # A header sent twice arrives as a list of values: the only way a header is not a string.
        return _ONCE_MESSAGES[field]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return _PATTERN_MESSAGES.get(field, "is not in the expected format")
    if kind == "string_type":
        return "must be a string"
    if kind in ("uuid_parsing", "uuid_type", "uuid_version"):
        return "must be a UUID"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    if kind.startswith(("date_", "datetime_")):
        return "must be a real calendar date as YYYY-MM-DD"
    if kind == "value_error":
        if field.endswith("email"):
            return "must be an email address"
        msg = str(err.get("msg", ""))
        if msg.startswith("Value error, "):
            return msg[len("Value error, ") :]
    return "is not valid"
