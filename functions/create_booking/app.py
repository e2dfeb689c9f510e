"""POST /bookings, GET/DELETE /bookings/{id}, GET /restaurants/{id}/availability.

HTTP only: parse and validate (Powertools event_handler routing, pydantic models), call the booking service,
map its outcome to a response, metrics and a log line. The capacity logic lives in the layer.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse, OpenAPIResponseHeader
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, TypeAdapter, ValidationError

from capacity.booking import BookingResult, BookingService, Caller, RetryExhausted
from capacity.db import Database, error_fields
from capacity.figures import request_conflicted
from capacity.http import (
    media_type_refusal,
    problem_response,
    problem_result,
    validation_problem,
    with_instance,
)
from capacity.idempotency import KEY_PATTERN, tenant_of
from capacity.models import (
    Availability,
    BookingCreated,
    BookingEnvelope,
    BookingRequest,
    IsoDate,
    Problem,
)
from capacity.outcomes import LOAD_TEST_SOURCE, PROBLEM_CONTENT_TYPE, EventType, MetricName, ProblemCode, ProblemError
from capacity.settings import booking_settings

if TYPE_CHECKING:
    # Only the OpenAPI document evaluates the routes' parameter annotations (see ``openapi_json``).
    from aws_lambda_powertools.event_handler.openapi.params import Header, Query

# Validated at cold start: a bad setting stops the function here, with the variable's name.
settings = booking_settings()


# The characters a JSON text can start with (after whitespace), as json.loads reads them.
_JSON_STARTS = frozenset('{["-0123456789tfnNI')


def _log_message(message: Any) -> Any:
    """Powertools' formatter tries to parse every log message as JSON; for plain text that is a
    raised and caught JSONDecodeError per line. Text that cannot start a JSON value is given back
    as it is, which is what that failed parse gave back, and without the exception."""
    if isinstance(message, str) and message.lstrip(" \t\n\r")[:1] not in _JSON_STARTS:
        return message
    return json.loads(message)


logger = Logger(service=settings.service_name, json_deserializer=_log_message)
metrics = Metrics(namespace=settings.metrics_namespace, service=settings.service_name)
# No Powertools Tracer here: it imports the X-Ray SDK and botocore (~0.25 s of cold start on the
# booking path). Lambda's active tracing still records this function's segment.
service = BookingService(Database(settings), settings)

# No `enable_validation`: Powertools' OpenAPI request validation re-inspected every parameter's
# type at every request, about a quarter of the handler's own CPU (bench/handler-and-cold-start.md).
# The routes parse their own requests (`_parsed_by`) into the same pydantic errors it raised; the
# document is still generated from the routes' signatures (`openapi_json`).
app = APIGatewayRestResolver()

MAX_BODY_BYTES = 10_240  # far above any valid booking (notes <= 1,000 chars); the same limit as `capctl serve`

# Requests refused before a booking is attempted emit no metric; that is expected, not a warning.
warnings.filterwarnings("ignore", message="No application metrics to publish")

RUN_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"

_OUTCOME_METRIC = {
    EventType.SUCCESS: MetricName.BOOKING_SUCCESS,
    EventType.CAPACITY_EXCEEDED: MetricName.CAPACITY_EXCEEDED,
}


# -- request parsing ------------------------------------------------------------------------
# What Powertools' OpenAPI request validation did, step for step (its middleware,
# event_handler/middlewares/openapi_validation.py), for the few parameters these routes have:
# the same values, and the same pydantic errors in the same order, so `validation_problem`
# answers exactly as before (tests/unit/test_request_parsing.py holds the two side by side).

_KEY_HEADER: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=KEY_PATTERN.pattern)])
_RUN_ID_HEADER: TypeAdapter[str | None] = TypeAdapter(Annotated[str | None, Field(pattern=RUN_ID_PATTERN)])
_BOOKING_BODY: TypeAdapter[BookingRequest] = TypeAdapter(BookingRequest)
_DATE_QUERY: TypeAdapter[Any] = TypeAdapter(IsoDate)


def _parsed_by(parse: Callable[[], dict[str, Any]]) -> Callable[[Callable[..., Response[Any]]], Any]:
    """The route called with what ``parse`` reads from the request. The route keeps its own
    signature (``functools.wraps``): the OpenAPI document describes its parameters from it."""

    def decorate(route: Callable[..., Response[Any]]) -> Callable[..., Response[Any]]:
        @functools.wraps(route)
        def parsed(**path: Any) -> Response[Any]:
            return route(**path, **parse())

        return parsed

    return decorate


def _one(value: Any) -> Any:
    """A multi-value parameter as Powertools normalised it: a list of one is its value; a
    parameter really sent twice stays a list (a field error)."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _validated(adapter: TypeAdapter[Any], value: Any, loc: tuple[Any, ...], errors: list[Any]) -> Any:
    try:
        return adapter.validate_python(value, from_attributes=True)
    except ValidationError as exc:
        errors.extend({**err, "loc": loc + tuple(err["loc"])} for err in exc.errors())
        return None


def _missing(loc: tuple[Any, ...]) -> dict[str, Any]:
    return {"type": "missing", "loc": loc, "msg": "Field required", "input": None}


def _header(
    headers: Mapping[str, Any], name: str, adapter: TypeAdapter[Any], errors: list[Any], *, required: bool
) -> Any:
    value = _one(headers.get(name))
    if value is None:
        if required:
            errors.append(_missing(("header", name)))
        return None
    return _validated(adapter, value, ("header", name), errors)


def _headers(event: Mapping[str, Any]) -> dict[str, Any]:
    """The request's headers as Powertools validated them: the multi-value map when the event has
    one (API Gateway's always does), else the single-value one; names lower-cased."""
    given = event.get("multiValueHeaders") or event.get("headers") or {}
    return {name.lower(): value for name, value in given.items()}


def _booking_args() -> dict[str, Any]:
    event = app.current_event
    headers = _headers(event)
    errors: list[Any] = []
    key = _header(headers, "idempotency-key", _KEY_HEADER, errors, required=True)
    run_id = _header(headers, "x-run-id", _RUN_ID_HEADER, errors, required=False)
    try:
        body = event.json_body  # None when there is no body
    except json.JSONDecodeError as exc:  # alone: the header errors go unsaid, as before
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except (ValueError, RecursionError):  # an integer too long to read, nesting too deep, bad base64
        raise ProblemError(ProblemCode.MALFORMED_REQUEST, "The request body must be a JSON object.") from None
    if isinstance(body, list) and body:
        body = body[0]  # Powertools validated a JSON array's first item as the body
    booking = None
    if body is None:
        errors.append(_missing(("body",)))
    else:
        booking = _validated(_BOOKING_BODY, body, ("body",), errors)
    if errors:
        raise RequestValidationError(errors)
    return {"booking": booking, "idempotency_key": key, "run_id": run_id}


def _availability_args() -> dict[str, Any]:
    event = app.current_event
    # The multi-value map's list when there is one; else the single value, which is what
    # Powertools' split on commas and join again gave back.
    value = _one((event.get("multiValueQueryStringParameters") or {}).get("date"))
    if value is None:
        value = (event.get("queryStringParameters") or {}).get("date")
    errors: list[Any] = []
    date = None
    if value is None:
        errors.append(_missing(("query", "date")))
    else:
        date = _validated(_DATE_QUERY, value, ("query", "date"), errors)
    if errors:
        raise RequestValidationError(errors)
    return {"date": date}


def openapi_json(**document: Any) -> str:
    """The OpenAPI document of these routes, from their signatures and responses. The parameter
    markers their annotations name (Header, Query) are imported here: only the document evaluates
    those annotations, the function itself never does."""
    from aws_lambda_powertools.event_handler.openapi.params import Header, Query

    globals().update(Header=Header, Query=Query)
    return app.get_openapi_json_schema(**document)


_RETRY_AFTER: OpenAPIResponseHeader = {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
_REPLAYED: OpenAPIResponseHeader = {
    "description": "`true` when this is the stored answer to an earlier request with the same Idempotency-Key",
    "schema": {"type": "string", "enum": ["true"]},
}


def _problem_content(
    description: str, *, retry_after: bool = False, replayable: bool = False, accept_post: bool = False
) -> OpenAPIResponse:
    response: OpenAPIResponse = {
        "description": description,
        "content": {"application/problem+json": {"model": Problem}},
    }
    headers = {"Retry-After": _RETRY_AFTER} if retry_after else {}
    if replayable:
        headers["Idempotent-Replayed"] = _REPLAYED
    if accept_post:
        headers["Accept-Post"] = {"description": "The media type a body must have", "schema": {"type": "string"}}
    if headers:
        response["headers"] = headers
    return response


# Answered by API Gateway itself (or `capctl serve`) before the function runs.
_GATEWAY_RESPONSES = {
    403: _problem_content("Missing or invalid API key (code forbidden)"),
    429: _problem_content("Throttled by the usage plan (code rate_limited)", retry_after=True),
}


@app.post(
    "/bookings",
    summary="Book a slot",
    responses={
        201: {
            "description": "Booked",
            "content": {"application/json": {"model": BookingCreated}},
            "headers": {
                "Location": {"description": "/bookings/{id}", "schema": {"type": "string"}},
                "Idempotent-Replayed": _REPLAYED,
                "Link": {
                    "description": (
                        'On a replay: `</bookings/{id}>; rel="current"`. A replay answers the stored 201 '
                        "unchanged, so its body says `confirmed` even if the booking was cancelled since: "
                        "GET the linked booking for its state now."
                    ),
                    "schema": {"type": "string"},
                },
            },
        },
        400: _problem_content("Missing Idempotency-Key or malformed JSON"),
        404: _problem_content("Unknown restaurant"),
        409: _problem_content(
            "Slot full or closed (replayable), or the same key still in flight (with Retry-After)",
            retry_after=True,
            replayable=True,
        ),
        413: _problem_content("Request body over 10,240 bytes"),
        415: _problem_content(
            "Body declared as another media type than application/json (with Accept-Post)", accept_post=True
        ),
        422: _problem_content("Invalid field, time off the slot grid, or key reused with another body"),
        503: _problem_content("Database unavailable or transient failures outlasted every retry", retry_after=True),
        **_GATEWAY_RESPONSES,
    },
)
@_parsed_by(_booking_args)
def create_booking(
    booking: BookingRequest,
    # Required; when absent the validation handler answers 400 idempotency_key_missing.
    idempotency_key: Annotated[
        str, Header(alias="Idempotency-Key", description="1-255 visible ASCII characters", pattern=KEY_PATTERN.pattern)
    ],
    run_id: Annotated[
        str | None,
        Header(alias="X-Run-Id", description="Groups synthetic traffic (load-test runs)", pattern=RUN_ID_PATTERN),
    ] = None,
) -> Response[Any]:
    # The key and the run id have passed their patterns (`_booking_args`); an empty key is 400.
    started = time.perf_counter()
    caller = Caller(
        tenant=_tenant(),
        idempotency_key=idempotency_key,
        run_id=run_id,
        request_id=_request_id(),
    )
    # Synthetic traffic gets its own environment dimension: a load test against staging shows on
    # its own dashboard lines and never moves the live alarms.
    metrics.add_dimension("environment", _environment(booking.source))
    metrics.add_metadata("restaurantId", str(booking.restaurant_id))
    try:
        result = service.book(booking, caller)
    except RetryExhausted as exc:
        metrics.add_metric(MetricName.BOOKING_REQUESTS, MetricUnit.Count, 1)
        metrics.add_metric(MetricName.RETRY_EXHAUSTED, MetricUnit.Count, 1)
        metrics.add_metric(MetricName.CONFLICTS, MetricUnit.Count, exc.attempts - 1)  # the last failure was not retried
        conflicted = request_conflicted(attempts=exc.attempts, lost_race=False, exhausted=True)
        metrics.add_metric(MetricName.CONFLICTED_REQUESTS, MetricUnit.Count, int(conflicted))
        raise
    except ProblemError as exc:
        if exc.code is ProblemCode.SERVICE_UNAVAILABLE:
            metrics.add_metric(MetricName.SERVICE_UNAVAILABLE, MetricUnit.Count, 1)
        raise
    _record(result, booking, (time.perf_counter() - started) * 1000)
    headers = dict(result.headers)
    if result.status < 400:
        body = json.dumps(result.body)
        return Response(status_code=result.status, content_type="application/json", body=body, headers=headers)
    # A refusal is the stored body (read back from jsonb, in its key order): the same members,
    # replayed unchanged, in the order every problem has.
    body = json.dumps(with_instance(result.body, None))
    return Response(status_code=result.status, content_type=PROBLEM_CONTENT_TYPE, body=body, headers=headers)


def _record(result: BookingResult, booking: BookingRequest, latency_ms: float) -> None:
    if result.replayed:
        metrics.add_metric(MetricName.IDEMPOTENT_REPLAYS, MetricUnit.Count, 1)
        return
    metrics.add_metric(MetricName.BOOKING_REQUESTS, MetricUnit.Count, 1)
    metrics.add_metric(MetricName.BOOKING_LATENCY, MetricUnit.Milliseconds, latency_ms)
    if result.outcome is not None:
        metrics.add_metric(_OUTCOME_METRIC[result.outcome], MetricUnit.Count, 1)
    if result.status == 409 and result.body.get("code") == ProblemCode.SLOT_CLOSED:
        metrics.add_metric(MetricName.SLOT_CLOSED, MetricUnit.Count, 1)
    # Zeros too: a rate needs its zeros to be real datapoints.
    conflicts = result.conflicts + int(result.overbook_prevented)
    metrics.add_metric(MetricName.CONFLICTS, MetricUnit.Count, conflicts)
    conflicted = request_conflicted(attempts=result.conflicts + 1, lost_race=result.overbook_prevented, exhausted=False)
    metrics.add_metric(MetricName.CONFLICTED_REQUESTS, MetricUnit.Count, int(conflicted))
    metrics.add_metric(MetricName.OVERBOOK_PREVENTED, MetricUnit.Count, int(result.overbook_prevented))
    if result.utilization is not None:
        metrics.add_metric(MetricName.SLOT_UTILIZATION, MetricUnit.Percent, result.utilization)
    logger.info(
        "booking outcome",
        extra={
            "outcome": result.outcome,
            "status": result.status,
            "restaurantId": str(booking.restaurant_id),
            "date": booking.date.isoformat(),
            "time": booking.time,
            "partySize": booking.party_size,
            "source": booking.source,
            "attempts": result.attempts,
            "latencyMs": round(latency_ms, 2),
        },
    )


@app.get(
    "/bookings/<id>",
    summary="Read a booking",
    responses={
        200: {"description": "The booking", "content": {"application/json": {"model": BookingEnvelope}}},
        404: _problem_content("No such booking for this API key"),
        503: _problem_content("Database unavailable", retry_after=True),
        **_GATEWAY_RESPONSES,
    },
)
def get_booking(id: str) -> Response[Any]:
    body = service.get(_booking_uuid(id), _tenant())
    return Response(status_code=200, content_type="application/json", body=json.dumps(body))


@app.delete(
    "/bookings/<id>",
    summary="Cancel a booking",
    responses={
        200: {
            "description": "Cancelled (again: the same answer)",
            "content": {"application/json": {"model": BookingEnvelope}},
        },
        404: _problem_content("No such booking for this API key"),
        503: _problem_content("Database unavailable", retry_after=True),
        **_GATEWAY_RESPONSES,
    },
)
def cancel_booking(id: str) -> Response[Any]:
    cancellation = service.cancel(_booking_uuid(id), _tenant())
    body = cancellation.body
    if cancellation.cancelled_now:  # a repeated DELETE answers the same and counts nothing again
        metrics.add_dimension("environment", _environment(body["booking"]["source"]))
        metrics.add_metric(MetricName.BOOKING_CANCELLED, MetricUnit.Count, 1)
    return Response(status_code=200, content_type="application/json", body=json.dumps(body))


@app.get(
    "/restaurants/<restaurantId>/availability",
    summary="Bookable slots of a date",
    responses={
        200: {
            "description": "Every bookable slot: open and not yet begun",
            "content": {"application/json": {"model": Availability}},
        },
        404: _problem_content("Unknown restaurant"),
        422: _problem_content("Invalid date"),
        503: _problem_content("Database unavailable", retry_after=True),
        **_GATEWAY_RESPONSES,
    },
)
@_parsed_by(_availability_args)
def availability(
    restaurantId: str,
    date: Annotated[IsoDate, Query(description="YYYY-MM-DD")],
) -> Response[Any]:
    try:
        rid = UUID(restaurantId)
    except ValueError:
        raise ProblemError(ProblemCode.RESTAURANT_NOT_FOUND, f"No restaurant {restaurantId}.") from None
    body = service.availability(rid, date)
    return Response(status_code=200, content_type="application/json", body=json.dumps(body))


def _environment(source: str) -> str:
    """The ``environment`` dimension: synthetic traffic on its own, apart from live alarms."""
    return f"{settings.environment}-load-test" if source == LOAD_TEST_SOURCE else settings.environment


def _request_context() -> dict[str, Any]:
    # Read from the raw event: Powertools' accessors raise KeyError on a hand-written event
    # (`sam local invoke -e`) that has no requestContext or requestId.
    context: dict[str, Any] = app.current_event.raw_event.get("requestContext") or {}
    return context


def _request_id() -> str | None:
    """API Gateway's request id: the problem's ``instance``, the same id as in the access log."""
    request_id = _request_context().get("requestId")
    return str(request_id) if request_id else None


def _tenant() -> str:
    return tenant_of(_request_context())


def _booking_uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ProblemError(ProblemCode.BOOKING_NOT_FOUND, f"No booking {value}.") from None


@app.exception_handler(ProblemError)
def _on_problem(exc: ProblemError) -> Response[Any]:
    return problem_response(exc, _request_id())


@app.exception_handler(RequestValidationError)
def _on_validation(exc: RequestValidationError) -> Response[Any]:
    return problem_response(validation_problem(exc.errors()), _request_id())


@app.exception_handler(UnicodeDecodeError)
def _on_undecodable_body(_: UnicodeDecodeError) -> Response[Any]:
    problem = ProblemError(ProblemCode.MALFORMED_REQUEST, "The request body is not UTF-8 JSON.")
    return problem_response(problem, _request_id())


@app.not_found
def _on_not_found(_: NotFoundError) -> Response[Any]:
    return problem_response(ProblemError(ProblemCode.NOT_FOUND, "No such resource."), _request_id())


@app.exception_handler(Exception)
def _on_error(exc: Exception) -> Response[Any]:
    # Type and SQLSTATE only: a database error's text can quote a row, guest data included.
    logger.error("unhandled error", extra=error_fields(exc))
    problem = ProblemError(ProblemCode.INTERNAL_ERROR, "An unexpected error occurred.")
    return problem_response(problem, _request_id())


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Powertools clears dimensions and metadata only when it flushes metrics: an invocation that
    # recorded none (a 404) would hand its environment and restaurantId to the next one.
    metrics.clear_metrics()
    request_id = (event.get("requestContext") or {}).get("requestId")
    # The correlation id is API Gateway's request id: what correlation_paths.API_GATEWAY_REST
    # names, read directly rather than through a JMESPath search per request.
    logger.set_correlation_id(request_id)
    # An oversized body is refused before anything parses it.
    if len((event.get("body") or "").encode()) > MAX_BODY_BYTES:
        too_large = ProblemError(ProblemCode.PAYLOAD_TOO_LARGE, f"The request body is over {MAX_BODY_BYTES} bytes.")
        return problem_result(too_large, request_id)
    if event.get("httpMethod") == "POST":
        refused = _accept_json_only(event)
        if refused is not None:
            return problem_result(refused, request_id)
    return app.resolve(event, context)


def _accept_json_only(event: dict[str, Any]) -> ProblemError | None:
    """415 unless the body is declared JSON (or not declared). Powertools itself would parse a
    form or multipart body into fields, and compares the media type case-sensitively."""
    return media_type_refusal(_headers(event))
