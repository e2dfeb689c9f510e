"""The booking function's log line: the correlation id is API Gateway's request id, and the
formatter's cheaper reading of a message gives what Powertools' own JSON parse gave.
No network, no database: the booking service is stubbed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from capacity.booking import BookingResult
from capacity.outcomes import EventType
from capctl.apigw import LambdaContext, rest_event
from tests.support import booking_body, stubbed_booking_function

CONTEXT = LambdaContext(function_name="CreateBookingFunction")


@pytest.fixture(scope="module")
def module() -> Iterator[Any]:
    with stubbed_booking_function("log", POWERTOOLS_LOG_LEVEL="INFO") as handler:
        yield handler


@pytest.fixture
def log_lines(module: Any) -> Iterator[None]:
    """The function's log lines go to a buffer ``_lines`` reads, for the test's length."""
    handler = module.logger.registered_handler
    before = handler.setStream(io.StringIO())
    yield
    handler.setStream(before)


def _lines(module: Any) -> list[dict[str, Any]]:
    stream = module.logger.registered_handler.stream
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_the_outcome_line_carries_the_request_id_as_correlation_id(module, monkeypatch, log_lines):
    monkeypatch.setattr(
        module.service,
        "book",
        lambda request, caller: BookingResult(status=201, body={"stub": True}, outcome=EventType.SUCCESS),
    )
    event = rest_event(
        "POST",
        "/bookings",
        headers=[("Content-Type", "application/json"), ("Idempotency-Key", "k-1")],
        body=json.dumps(booking_body()),
        api_key="tenant-a",
        api_key_id="id-a",
        request_id="req-log-1",
    )
    assert module.lambda_handler(event, CONTEXT)["statusCode"] == 201
    lines = [line for line in _lines(module) if line.get("message") == "booking outcome"]
    assert len(lines) == 1
    assert lines[0]["correlation_id"] == "req-log-1"
    assert (lines[0]["outcome"], lines[0]["status"]) == ("booking.success", 201)


MESSAGES = [
    "booking outcome",
    "unhandled error",
    "",
    "   ",
    "true story",
    "null and void",
    "-",
    "123",
    " 4.5e3",
    "true",
    "null",
    "NaN",
    "Infinity",
    '{"a": 1}',
    '\n["x", 2]',
    '"quoted"',
    "{not json",
    "Ünïcode",
]


def _formatted(logger: Logger, sink: io.StringIO, message: str) -> Any:
    sink.seek(0)
    sink.truncate()
    logger.info(message)
    return json.loads(sink.getvalue()).get("message")


def test_a_log_message_reads_as_powertools_own_json_parse_reads_it(module):
    sinks = io.StringIO(), io.StringIO()
    powertools = Logger(service="reference", logger_handler=logging.StreamHandler(sinks[0]))
    ours = Logger(service="ours", logger_handler=logging.StreamHandler(sinks[1]), json_deserializer=module._log_message)
    for message in MESSAGES:
        # repr: NaN parses to a float that equals nothing, itself included
        assert repr(_formatted(ours, sinks[1], message)) == repr(_formatted(powertools, sinks[0], message)), message
