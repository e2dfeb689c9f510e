"""The booking function parses its own requests (no Powertools `enable_validation`, for its cost).
Held side by side with Powertools' own OpenAPI request validation on the very same route
signatures: every request below gets the same answer (status and problem body) and, when valid,
the same parsed values. No network, no database: the booking service is stubbed."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from capacity.booking import BookingResult
from capacity.http import problem_response, validation_problem
from capacity.outcomes import EventType
from capctl.apigw import LambdaContext, rest_event
from tests.support import FUTURE_DATE, RESTAURANT_ID, booking_body, stubbed_booking_function

CONTEXT = LambdaContext(function_name="CreateBookingFunction")
VALID = booking_body()


@pytest.fixture(scope="module")
def module() -> Iterator[Any]:
    with stubbed_booking_function("parsing") as handler:
        handler.openapi_json()  # brings the parameter markers the reference resolver evaluates
        yield handler


def reference(module: Any, route: Callable[..., Any], method: str, path: str) -> tuple[Any, dict[str, Any]]:
    """Powertools' validation on the route's own signature; the route itself never runs."""
    resolver = APIGatewayRestResolver(enable_validation=True)
    captured: dict[str, Any] = {}

    def capture(app: Any, next_middleware: Any) -> Response[Any]:
        captured.update(app.context["_route_args"])
        return Response(status_code=204)

    resolver.route(path, method, middlewares=[capture])(route.__wrapped__)
    resolver.exception_handler(RequestValidationError)(
        lambda exc: problem_response(validation_problem(exc.errors()), None)
    )
    return resolver, captured


def answer(result: dict[str, Any]) -> tuple[int, Any]:
    body = json.loads(result["body"]) if result.get("body") else None
    if isinstance(body, dict):
        body.pop("instance", None)  # the request id; the reference resolver has none
    return result["statusCode"], body


def post(body: Any, headers: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    payload = body if isinstance(body, str) or body is None else json.dumps(body)
    head = [("Content-Type", "application/json"), ("Idempotency-Key", "k-1")] if headers is None else headers
    return rest_event("POST", "/bookings", headers=head, body=payload, api_key="tenant-a", api_key_id="id-a")


def without(**drop: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    for name in drop:
        body.pop(name)
    return body


JSON = ("Content-Type", "application/json")
POSTS = {
    "valid": post(VALID),
    "valid with a run id": post(VALID, [JSON, ("Idempotency-Key", "k"), ("X-Run-Id", "run-1")]),
    "no key": post(VALID, [JSON]),
    "empty key": post(VALID, [JSON, ("Idempotency-Key", "")]),
    "key sent twice": post(VALID, [JSON, ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]),
    "key with a comma": post(VALID, [JSON, ("Idempotency-Key", "a,b")]),
    "key not visible ascii": post(VALID, [JSON, ("Idempotency-Key", "café")]),
    "key too long": post(VALID, [JSON, ("Idempotency-Key", "k" * 256)]),
    "bad run id": post(VALID, [JSON, ("Idempotency-Key", "k"), ("X-Run-Id", "no spaces")]),
    "run id twice": post(VALID, [JSON, ("Idempotency-Key", "k"), ("X-Run-Id", "a"), ("X-Run-Id", "b")]),
    "no body": post(None),
    "empty body": post(""),
    "invalid JSON": post("{not json"),
    "invalid JSON and no key": post("{", [JSON]),
    "null": post("null"),
    "a number": post("1"),
    "a string": post('"booking"'),
    "an empty array": post("[]"),
    "an array of a booking": post([VALID]),
    "an array of a number": post([1]),
    "NaN party": post(json.dumps({**VALID, "partySize": float("nan")})),  # json.dumps writes NaN
    "field errors and a bad run id": post(
        {**VALID, "partySize": 0, "time": "25:00"}, [JSON, ("Idempotency-Key", "k"), ("X-Run-Id", "?")]
    ),
    "field errors and no key": post({**VALID, "partySize": 0}, [JSON]),
    "party as a string": post({**VALID, "partySize": "2"}),
    "unknown field": post({**VALID, "table": 4}),
    "no guest": post(without(guest=True)),
    "guest not an object": post({**VALID, "guest": "Ada"}),
    "bad email": post({**VALID, "guest": {"name": "Ada", "email": "ada@"}}),
    "NUL in a name": post({**VALID, "guest": {"name": "A\x00da"}}),
    "not a calendar date": post({**VALID, "date": "2030-02-30"}),
    "a datetime": post({**VALID, "date": "2030-06-14T19:00:00"}),
    "not a uuid": post({**VALID, "restaurantId": "r-1"}),
    "lower-case header names": post(VALID, [("content-type", "application/json"), ("idempotency-key", "k")]),
}


@pytest.mark.parametrize("case", POSTS)
def test_a_booking_request_is_parsed_as_powertools_validated_it(module, monkeypatch, case):
    booked: list[tuple[Any, Any]] = []

    def book(request: Any, caller: Any) -> BookingResult:
        booked.append((request, caller))
        return BookingResult(status=201, body={"stub": True}, outcome=EventType.SUCCESS)

    monkeypatch.setattr(module.service, "book", book)
    resolver, expected = reference(module, module.create_booking, "POST", "/bookings")
    want = answer(resolver.resolve(copy.deepcopy(POSTS[case]), CONTEXT))
    got = answer(module.lambda_handler(copy.deepcopy(POSTS[case]), CONTEXT))
    if want[0] == 204:  # valid for Powertools: the same values reached the booking service
        assert got[0] == 201 and len(booked) == 1
        request, caller = booked[0]
        assert request == expected["booking"]
        assert caller.idempotency_key == expected["idempotency_key"] and caller.run_id == expected["run_id"]
    else:
        assert got == want and not booked


def availability(query: list[tuple[str, str]]) -> dict[str, Any]:
    return rest_event(
        "GET", f"/restaurants/{RESTAURANT_ID}/availability", query=query, api_key="tenant-a", api_key_id="id-a"
    )


QUERIES = {
    "a date": [("date", FUTURE_DATE)],
    "no date": [],
    "an empty date": [("date", "")],
    "two dates": [("date", FUTURE_DATE), ("date", FUTURE_DATE)],
    "not a calendar date": [("date", "2030-02-30")],
    "a datetime": [("date", "2030-06-14T19:00:00")],
    "another parameter": [("day", FUTURE_DATE)],
}


@pytest.mark.parametrize("case", QUERIES)
def test_an_availability_query_is_parsed_as_powertools_validated_it(module, monkeypatch, case):
    asked: list[Any] = []

    def day(restaurant_id: Any, date: Any) -> dict[str, Any]:
        asked.append(date)
        return {"stub": True}

    monkeypatch.setattr(module.service, "availability", day)
    route = module.availability
    resolver, expected = reference(module, route, "GET", "/restaurants/<restaurantId>/availability")
    want = answer(resolver.resolve(availability(QUERIES[case]), CONTEXT))
    got = answer(module.lambda_handler(availability(QUERIES[case]), CONTEXT))
    if want[0] == 204:
        assert got[0] == 200 and asked == [expected["date"]]
    else:
        assert got == want and not asked


def single_valued(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a client of another shape might send it: no multi-value maps at all."""
    return {**event, "multiValueHeaders": None, "multiValueQueryStringParameters": None}


SINGLE_VALUED_POSTS = {
    "valid": post(VALID),
    "valid with a run id": post(VALID, [JSON, ("Idempotency-Key", "k"), ("X-Run-Id", "run-1")]),
    "no key": post(VALID, [JSON]),
    "empty key": post(VALID, [JSON, ("Idempotency-Key", "")]),
    "key with a comma": post(VALID, [JSON, ("Idempotency-Key", "a,b")]),
    "bad run id with a comma": post(VALID, [JSON, ("Idempotency-Key", "k"), ("X-Run-Id", "a,b c")]),
    "lower-case header names": post(VALID, [("content-type", "application/json"), ("idempotency-key", "k")]),
    "upper-case header names": post(VALID, [("CONTENT-TYPE", "application/json"), ("IDEMPOTENCY-KEY", "k")]),
}


@pytest.mark.parametrize("case", SINGLE_VALUED_POSTS)
def test_single_valued_headers_are_parsed_as_powertools_validated_them(module, monkeypatch, case):
    booked: list[tuple[Any, Any]] = []

    def book(request: Any, caller: Any) -> BookingResult:
        booked.append((request, caller))
        return BookingResult(status=201, body={"stub": True}, outcome=EventType.SUCCESS)

    monkeypatch.setattr(module.service, "book", book)
    event = single_valued(SINGLE_VALUED_POSTS[case])
    resolver, expected = reference(module, module.create_booking, "POST", "/bookings")
    want = answer(resolver.resolve(copy.deepcopy(event), CONTEXT))
    got = answer(module.lambda_handler(copy.deepcopy(event), CONTEXT))
    if want[0] == 204:
        assert got[0] == 201 and len(booked) == 1
        caller = booked[0][1]
        assert caller.idempotency_key == expected["idempotency_key"] and caller.run_id == expected["run_id"]
    else:
        assert got == want and not booked


SINGLE_VALUED_QUERIES = {
    "a date": [("date", FUTURE_DATE)],
    "a date and a comma": [("date", f"{FUTURE_DATE},{FUTURE_DATE}")],
    "an empty date": [("date", "")],
    "no date": [("day", FUTURE_DATE)],
}


@pytest.mark.parametrize("case", SINGLE_VALUED_QUERIES)
def test_a_single_valued_query_is_parsed_as_powertools_validated_it(module, monkeypatch, case):
    asked: list[Any] = []

    def day(restaurant_id: Any, date: Any) -> dict[str, Any]:
        asked.append(date)
        return {"stub": True}

    monkeypatch.setattr(module.service, "availability", day)
    event = single_valued(availability(SINGLE_VALUED_QUERIES[case]))
    resolver, expected = reference(module, module.availability, "GET", "/restaurants/<restaurantId>/availability")
    want = answer(resolver.resolve(copy.deepcopy(event), CONTEXT))
    got = answer(module.lambda_handler(copy.deepcopy(event), CONTEXT))
    if want[0] == 204:
        assert got[0] == 200 and asked == [expected["date"]]
    else:
        assert got == want and not asked
