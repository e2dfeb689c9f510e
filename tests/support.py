"""Helpers for tests: the base seed, request bodies, API Gateway events, in-process invocation."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from capctl.apigw import LambdaContext, rest_event
from capctl.handlers import load_handler

ROOT = Path(__file__).resolve().parents[1]

# A restaurant every integration test can book: 17:00-22:00 daily, 20 covers, 15-minute slots.
# Its seed is the one `sam local invoke` users load (tests/fixtures/events-seed.json), whose
# dates are fixed around FIXTURE_DATE; the tests move them to FUTURE_DATE, a Friday two months
# ahead of today, so the suite never books a slot that has passed (past slots are refused).
RESTAURANT_ID = "11111111-2222-4333-8444-555555555555"
FIXTURE_DATE = dt.date(2030, 6, 14)  # the Friday the fixture files are written around
_FIXTURE_DAY = re.compile(r"2030-06-1[0-9]")


def _friday_from(day: dt.date) -> dt.date:
    return day + dt.timedelta(days=(4 - day.weekday()) % 7)


FUTURE = _friday_from(dt.date.today() + dt.timedelta(days=60))
FUTURE_DATE = FUTURE.isoformat()


def future_day(offset: int) -> str:
    """FUTURE_DATE + offset days, as YYYY-MM-DD."""
    return (FUTURE + dt.timedelta(days=offset)).isoformat()


PRIVATE_EVENT_DATE = future_day(1)  # an 18:00-20:00 override of 4 covers ("private event")
CLOSED_DATE = future_day(2)  # a whole-date override of 0 covers
UNLIMITED_DATE = future_day(3)  # a whole-date override with no limit


def relative_dates(text: str) -> str:
    """A fixture's text with its dates moved from around FIXTURE_DATE to around FUTURE_DATE."""
    return _FIXTURE_DAY.sub(lambda m: future_day((dt.date.fromisoformat(m.group()) - FIXTURE_DATE).days), text)


BASE_SEED: dict[str, Any] = json.loads(relative_dates((ROOT / "tests" / "fixtures" / "events-seed.json").read_text()))


def booking_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "restaurantId": RESTAURANT_ID,
        "date": FUTURE_DATE,
        "time": "19:00",
        "partySize": 2,
        "guest": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000"},
        "source": "web",
    }
    body.update(overrides)
    return body


def post_booking_event(body: Any, *, key: str | None = "key-1", api_key: str = "tenant-a", **kw: Any) -> dict[str, Any]:
    headers = [("Content-Type", "application/json"), ("x-api-key", api_key)]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    payload = body if isinstance(body, str) else json.dumps(body)
    return rest_event(
        "POST", "/bookings", headers=headers, body=payload, api_key=api_key, api_key_id=f"id-{api_key}", **kw
    )


def invoke(module: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """Invoke a handler as Lambda would; returns status, headers (last value wins), parsed body."""
    result = module.lambda_handler(event, LambdaContext(function_name="CreateBookingFunction"))
    headers: dict[str, str] = {}
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name] = values[-1]
    headers.update(result.get("headers") or {})
    body = json.loads(result["body"]) if result.get("body") else None
    return result["statusCode"], headers, body


def with_header(event: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    """Set a header in both of the event's header maps, as API Gateway would."""
    event["headers"] = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != name.lower()}
    event["multiValueHeaders"] = {
        k: v for k, v in (event.get("multiValueHeaders") or {}).items() if k.lower() != name.lower()
    }
    event["headers"][name] = value
    event["multiValueHeaders"][name] = [value]
    return event


# -- concurrent Lambda instances ---------------------------------------------------------------
# One process per instance, never threads: Powertools' resolver keeps the current event on the
# class (``BaseRouter.current_event``), so two resolvers in one process read each other's request.
# Lambda runs one invocation per process; so does `capctl serve`, and so do these tests.

_instance: Any = None


def _start_instance(function: str, ready: Any) -> None:
    global _instance  # noqa: PLW0603 (module state of this worker process = the instance's)
    _instance = load_handler(function)
    ready.wait()  # every instance is warm before the first request: real contention


def _instance_ready(_: int) -> bool:
    return _instance is not None


def _invoke_instance(event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    return invoke(_instance, event)


@contextmanager
def lambda_instances(count: int, function: str = "create_booking") -> Iterator[ProcessPoolExecutor]:
    """``count`` warm instances of a function, each in its own process, handling one request at a
    time with its own module state (connection, settings); they read the current environment."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(count, timeout=120)  # a stuck start fails the pool instead of hanging it
    with ProcessPoolExecutor(count, mp_context=ctx, initializer=_start_instance, initargs=(function, ready)) as pool:
        # The pool starts a process per pending task: give it ``count`` so every instance starts
        # (and passes the barrier) whatever the caller submits later.
        assert all(pool.map(_instance_ready, range(count)))
        yield pool


def invoke_concurrently(
    pool: ProcessPoolExecutor, events: list[dict[str, Any]]
) -> list[tuple[int, dict[str, str], Any]]:
    """Every event through the instances, as many at once as there are instances; results in order."""
    return list(pool.map(_invoke_instance, events, chunksize=1))


def assert_one_booking_for_one_key(results: list[tuple[int, dict[str, str], Any]], conn: Any) -> None:
    """30 concurrent requests with one key: one booking, one original answer, every other 201 its
    replay, any other answer the key's in-flight 409; one booking.success recorded."""
    created = [body for status, _, body in results if status == 201]
    others = [body for status, _, body in results if status != 201]
    assert all(body["code"] == "idempotency_in_progress" for body in others)
    assert created and all(body == created[0] for body in created)
    assert sum(1 for status, headers, _ in results if status == 201 and "Idempotent-Replayed" not in headers) == 1
    rows = conn.execute("SELECT id FROM bookings").fetchall()
    assert [str(r["id"]) for r in rows] == [created[0]["booking"]["id"]]
    events = conn.execute("SELECT event_type, count(*)::int AS n FROM observability_events GROUP BY 1").fetchall()
    assert {e["event_type"]: e["n"] for e in events} == {"booking.success": 1}


# The booking function's environment for a unit test: a database URL it never connects to (the
# test stubs the service), no X-Ray, the test namespace.
STUBBED_ENV = {
    "DATABASE_URL": "postgresql://unit@127.0.0.1:9/unit",
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_METRICS_NAMESPACE": "CapacityEngineTest",
    "ENVIRONMENT": "test",
}


@contextmanager
def stubbed_booking_function(instance: str, **env: str) -> Iterator[Any]:
    """create_booking cold-started with no database behind it, its settings read afresh."""
    import pytest

    from capacity import settings

    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**STUBBED_ENV, **env}.items():
            mp.setenv(name, value)
        settings.booking_settings.cache_clear()
        try:
            yield load_handler("create_booking", fresh=True, instance=instance)
        finally:
            settings.booking_settings.cache_clear()
