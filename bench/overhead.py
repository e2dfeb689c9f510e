"""Latency overhead per booking, one client, no contention: the client's CPU time and round trips
of the bare statement, the booking service and the handler. What the service adds over the bare
statement is idempotency, rules and events; what the handler adds over the service is validation,
problem+json, Powertools and the EMF line."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from bench import harness
from bench.booking import HANDLER_ENV
from bench.harness import API_KEY, BIG, DATE, HOT_TIME, TENANT

BARE = """
WITH usage AS (
    INSERT INTO slot_usage AS u (restaurant_id, slot_date, slot_time, booked_covers)
    VALUES (%(r)s, %(d)s, %(t)s, 1)
    ON CONFLICT (restaurant_id, slot_date, slot_time) DO UPDATE SET booked_covers = u.booked_covers + 1
     WHERE u.booked_covers + 1 <= %(cap)s
    RETURNING booked_covers
)
INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, source, idempotency_key)
SELECT gen_random_uuid(), %(r)s, %(d)s, %(t)s, 1, 'bench', %(k)s FROM usage
"""


class _Counting(psycopg.Cursor[Any]):
    statements = 0

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _Counting.statements += 1
        return super().execute(query, params, **kwargs)


def _measure(book: Callable[[int], bool], count: int) -> dict[str, Any]:
    for n in range(10):  # warm: connection open, statements prepared
        assert book(-1 - n)
    _Counting.statements = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for n in range(count):
        assert book(n)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "cpu_us": round(cpu / count * 1e6, 1),
        "wall_us": round(wall / count * 1e6, 1),
        "round_trips": round(_Counting.statements / count, 2),
    }


def benchmark(admin_url: str, count: int) -> dict[str, Any]:
    url = harness.create_database(admin_url, harness.seed(1))
    rid = harness.restaurant_id(0)
    run = uuid.uuid4().hex[:6]
    try:
        with psycopg.connect(url, autocommit=True, cursor_factory=_Counting) as conn:
            bare = _measure(
                lambda n: (
                    conn.execute(
                        BARE, {"r": rid, "d": DATE, "t": HOT_TIME, "cap": BIG, "k": f"bare-{run}-{n}"}
                    ).rowcount
                    == 1
                ),
                count,
            )

        from capacity.booking import BookingService, Caller
        from capacity.db import Database
        from capacity.models import BookingRequest
        from capacity.settings import BookingSettings

        settings = BookingSettings.from_env({"DATABASE_URL": url})
        service = BookingService(Database(settings), settings)
        service.db.connection().cursor_factory = _Counting
        body = {
            "restaurantId": rid,
            "date": DATE,
            "time": HOT_TIME,
            "partySize": 1,
            "guest": {"name": "Bench Guest"},
            "source": "bench",
        }

        def book_service(n: int) -> bool:
            request = BookingRequest.model_validate(body)  # as the handler would, once per request
            return service.book(request, Caller(tenant=TENANT, idempotency_key=f"s-{run}-{n}")).status == 201

        engine = _measure(book_service, count)
        service.db.close()

        from capctl.apigw import LambdaContext, rest_event
        from capctl.handlers import load_handler

        os.environ.update({**HANDLER_ENV, "DATABASE_URL": url})
        module = load_handler("create_booking", fresh=True, instance="overhead")
        module.service.db.connection().cursor_factory = _Counting
        context = LambdaContext(function_name="bench")
        payload = json.dumps(body)

        def book_handler(n: int) -> bool:
            event = rest_event(
                "POST",
                "/bookings",
                body=payload,
                api_key=API_KEY,
                api_key_id=TENANT,
                headers={"Content-Type": "application/json", "Idempotency-Key": f"h-{run}-{n}"},
            )
            return bool(module.lambda_handler(event, context)["statusCode"] == 201)

        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            handler = _measure(book_handler, count)
        module.service.db.close()
    finally:
        harness.drop_database(admin_url, url)

    def beyond(row: dict[str, Any]) -> dict[str, Any]:
        return {
            **row,
            "cpu_us_beyond_bare": round(row["cpu_us"] - bare["cpu_us"], 1),
            "round_trips_beyond_bare": round(row["round_trips"] - bare["round_trips"], 2),
        }

    return {"bookings": count, "raw_sql": bare, "engine": beyond(engine), "handler": beyond(handler)}
