"""`make bench`: booking-path throughput on one hot slot, variants side by side in one run.

Every variant runs in the same harness (N client processes, each with its own connection, for a
fixed time) against the same PostgreSQL, one after another, so the figures compare as ratios
on this (shared, noisy) machine. Absolute numbers are for this run only; nothing asserts them.

    make bench                       # embedded PostgreSQL, 16 clients, 5 s per variant
    BENCH_CLIENTS=50 BENCH_SECONDS=10 make bench
    DATABASE_URL=postgresql://… make bench   # a real server (creates and drops a bench database)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from capacity.booking import BookingService, Caller
from capacity.db import Database
from capacity.models import BookingRequest
from capacity.settings import BookingSettings
from capctl.apigw import LambdaContext, rest_event
from capctl.database import embedded_server
from capctl.handlers import load_handler
from capctl.migrate import migrate
from capctl.seed import SeedFile, apply_seed

RESTAURANT = "b0000000-0000-4000-8000-000000000001"
DATE = "2031-03-14"
HOT_TIME = "19:00"
SEED = {
    "restaurants": [
        {
            "id": RESTAURANT,
            "name": "Bench Bistro",
            "timezone": "UTC",
            "maxPartySize": 12,
            # capacity far above what a run books: every variant measures accepted bookings
            "weekly": [{"weekdays": [1, 2, 3, 4, 5, 6, 7], "start": "17:00", "end": "22:00", "maxCovers": 10_000_000}],
        }
    ]
}

BARE_GUARDED = """
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


def server_url() -> tuple[str, Callable[[], None]]:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, lambda: None
    tmp = tempfile.mkdtemp(prefix="capacity-bench-")
    server = embedded_server(Path(tmp) / "pgdata", cleanup_mode="delete")
    return server.get_uri(), server.cleanup


def fresh_database(admin_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        migrate(conn)
        apply_seed(conn, SeedFile.model_validate(SEED))
    return url


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bookings, slot_usage, idempotency_keys, observability_events")


def measure(
    name: str, clients: int, seconds: float, make_worker: Callable[[int], Callable[[int], bool]]
) -> dict[str, Any]:
    """Run ``clients`` processes, each calling its worker(n) until time is up; count accepted bookings.

    Processes, not threads, for every variant: Lambda runs one invocation per process, and
    Powertools' resolver keeps the current event on the class, so handler instances sharing a
    process would read each other's requests. Workers are built after the fork (own connection).
    """
    ctx = multiprocessing.get_context("fork")
    tallies: multiprocessing.SimpleQueue[tuple[int, int]] = ctx.SimpleQueue()

    # every worker connects first; the clock starts when the last one is ready
    ready = ctx.Barrier(clients + 1)
    start = ctx.Barrier(clients + 1)
    stop_box = ctx.Value("d", 0.0)

    def timed_loop(i: int) -> None:
        worker = make_worker(i)
        ready.wait()
        start.wait()
        n = accepted = failed = 0
        stop_at = stop_box.value
        while time.perf_counter() < stop_at:
            n += 1
            try:
                if worker(n):
                    accepted += 1
            except Exception:
                failed += 1
        tallies.put((accepted, failed))

    processes = [ctx.Process(target=timed_loop, args=(i,)) for i in range(clients)]
    for p in processes:
        p.start()
    ready.wait()
    stop_box.value = time.perf_counter() + seconds  # perf_counter is system-wide (CLOCK_MONOTONIC)
    began = time.perf_counter()
    start.wait()
    results = [tallies.get() for _ in processes]
    elapsed = time.perf_counter() - began
    for p in processes:
        p.join()
    total = sum(accepted for accepted, _ in results)
    return {
        "variant": name,
        "bookings": total,
        "errors": sum(failed for _, failed in results),
        "seconds": round(elapsed, 2),
        "bookingsPerSecond": round(total / elapsed, 1),
    }


def bare_guarded(url: str) -> Callable[[int], Callable[[int], bool]]:
    def make(i: int) -> Callable[[int], bool]:
        conn = psycopg.connect(url, autocommit=True)

        def book(n: int) -> bool:
            cur = conn.execute(
                BARE_GUARDED, {"r": RESTAURANT, "d": DATE, "t": HOT_TIME, "cap": 10_000_000, "k": f"bare-{i}-{n}"}
            )
            return cur.rowcount == 1

        return book

    return make


def select_for_update(url: str) -> Callable[[int], Callable[[int], bool]]:
    def make(i: int) -> Callable[[int], bool]:
        conn = psycopg.connect(url)

        def book(n: int) -> bool:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO slot_usage VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING", (RESTAURANT, DATE, HOT_TIME)
                )
                row = conn.execute(
                    "SELECT booked_covers FROM slot_usage WHERE restaurant_id = %s AND slot_date = %s "
                    "AND slot_time = %s FOR UPDATE",
                    (RESTAURANT, DATE, HOT_TIME),
                ).fetchone()
                assert row is not None
                if row[0] + 1 > 10_000_000:
                    return False
                conn.execute(
                    "UPDATE slot_usage SET booked_covers = booked_covers + 1 WHERE restaurant_id = %s "
                    "AND slot_date = %s AND slot_time = %s",
                    (RESTAURANT, DATE, HOT_TIME),
                )
                conn.execute(
                    "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, source, "
                    "idempotency_key) VALUES (gen_random_uuid(), %s, %s, %s, 1, 'bench', %s)",
                    (RESTAURANT, DATE, HOT_TIME, f"sfu-{i}-{n}"),
                )
            return True

        return book

    return make


def request(n: int, i: int) -> BookingRequest:
    return BookingRequest.model_validate(
        {
            "restaurantId": RESTAURANT,
            "date": DATE,
            "time": HOT_TIME,
            "partySize": 1,
            "guest": {"name": "Bench Guest"},
            "source": "bench",
        }
    )


def service(url: str) -> Callable[[int], Callable[[int], bool]]:
    settings = BookingSettings.from_env({"DATABASE_URL": url})

    def make(i: int) -> Callable[[int], bool]:
        svc = BookingService(Database(settings), settings)
        body = request(0, i)

        def book(n: int) -> bool:
            return svc.book(body, Caller(tenant="bench", idempotency_key=f"svc-{i}-{n}")).status == 201

        return book

    return make


def handler(url: str) -> Callable[[int], Callable[[int], bool]]:
    os.environ.update(
        {
            "DATABASE_URL": url,
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "Bench",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    body = json.dumps(request(0, 0).model_dump(mode="json", by_alias=True))

    def make(i: int) -> Callable[[int], bool]:
        module = load_handler("create_booking", fresh=True, instance=f"bench{i}")
        context = LambdaContext(function_name="bench")

        def book(n: int) -> bool:
            event = rest_event(
                "POST",
                "/bookings",
                body=body,
                api_key="bench",
                api_key_id="bench",
                headers={"Content-Type": "application/json", "Idempotency-Key": f"h-{i}-{n}"},
            )
            return module.lambda_handler(event, context)["statusCode"] == 201

        return book

    return make


VARIANTS: list[tuple[str, Callable[[str], Callable[[int], Callable[[int], bool]]]]] = [
    ("bare-guarded-statement", bare_guarded),
    ("select-for-update", select_for_update),
    ("booking-service", service),
    ("lambda-handler", handler),
]


def main() -> int:
    clients = int(os.environ.get("BENCH_CLIENTS", "16"))
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    admin_url, stop = server_url()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the handler's EMF/log lines are not the bench's output
    try:
        url = fresh_database(admin_url)
        print(f"one hot slot, {clients} clients, {seconds:g} s per variant", flush=True)
        results = []
        for name, variant in VARIANTS:
            reset(url)
            with contextlib.redirect_stdout(devnull):  # the handler's EMF lines
                result = measure(name, clients, seconds, variant(url))
            print(
                f"  {name:<22} {result['bookingsPerSecond']:>9.1f} bookings/s  ({result['bookings']} in "
                f"{result['seconds']}s, {result['errors']} errors)",
                flush=True,
            )
            results.append(result)
        base = results[0]["bookingsPerSecond"] or 1.0
        for r in results:
            r["ratioToBare"] = round(r["bookingsPerSecond"] / base, 3)
        report = {
            "createdAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "clients": clients,
            "secondsPerVariant": seconds,
            "results": results,
        }
        out_dir = Path("reports/bench")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(
            "ratios to the bare guarded statement: " + ", ".join(f"{r['variant']} {r['ratioToBare']}" for r in results)
        )
        print(f"wrote {path}")
    finally:
        devnull.close()
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
