"""Faults through real HTTP, with real clients' retries, checked against the database by the load
test's own checker (capctl.history): PostgreSQL killed hard mid-load and restarted, a handler
instance killed mid-request, a statement timeout on a locked slot, a response lost to a client
timeout. The crash test runs its own embedded PostgreSQL: the session's shared server is never
killed."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from capctl import faults
from capctl import history as hist
from capctl.database import embedded_server
from capctl.history import Outcome
from capctl.migrate import migrate
from capctl.seed import SeedFile, apply_seed
from capctl.serve import LocalApi
from tests.e2e.serving import OPENER
from tests.support import BASE_SEED, FUTURE_DATE, booking_body

pytestmark = pytest.mark.e2e

EVENING = [f"{h}:{m:02d}" for h in range(17, 22) for m in (0, 15, 30, 45)]  # 20 slots of 20 covers
RETRYABLE = {502, 503, 504}


# --------------------------------------------------------------------------- a real client


class Client:
    """Sends requests as the load test's diners do: on a timeout, a connection error, 502/503/504
    or 409 idempotency_in_progress, waits (Retry-After, capped) and resends the same request with
    the same key, a bounded number of times. Records every attempt as the history does."""

    def __init__(self, base_url: str, run_id: str, timeout_s: float = 10.0, attempts: int = 15) -> None:
        self.base_url = base_url
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.history: list[Outcome] = []
        self.answers: list[tuple[int, dict[str, str], Any]] = []  # every answer, retried or final
        self.lock = threading.Lock()

    def _once(self, method: str, path: str, body: Any, key: str | None) -> tuple[int | None, dict[str, str], Any]:
        headers = {"Content-Type": "application/json", "X-Run-Id": self.run_id}
        if key:
            headers["Idempotency-Key"] = key
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with OPENER.open(request, timeout=self.timeout_s) as response:
                status, reply_headers, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, reply_headers, raw = exc.code, dict(exc.headers), exc.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            return None, {}, None
        return status, reply_headers, json.loads(raw) if raw else None

    def send(self, op: str, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int | None, Any]:
        status: int | None = None
        reply: Any = None
        for attempt in range(1, self.attempts + 1):
            status, headers, reply = self._once(method, path, body, key)
            booking_id = (reply or {}).get("booking", {}).get("id") if isinstance(reply, dict) else None
            if op == hist.CANCEL:
                booking_id = path.rsplit("/", 1)[1]
            with self.lock:
                self.history.append(
                    Outcome(
                        t=int(time.time() * 1000),
                        op=op,
                        status=status,
                        key=key,
                        booking_id=booking_id,
                        replayed=headers.get("Idempotent-Replayed") == "true",
                        attempt=attempt,
                        code=reply.get("code") if isinstance(reply, dict) else None,
                        error=None if status is not None else "timeout",
                    )
                )
                if status is not None:
                    self.answers.append((status, headers, reply))
            in_flight = status == 409 and isinstance(reply, dict) and reply.get("code") == "idempotency_in_progress"
            if status is not None and status not in RETRYABLE and not in_flight:
                return status, reply
            wait = float(headers.get("Retry-After", "0.2")) if status is not None else 0.2
            time.sleep(min(wait, 2.0))
        return status, reply

    def book(self, key: str, time_: str) -> tuple[int | None, Any]:
        body = booking_body(time=time_, partySize=1, source="load-test")
        return self.send(hist.BOOK, "POST", "/bookings", body, key)

    def cancel(self, booking_id: str) -> tuple[int | None, Any]:
        return self.send(hist.CANCEL, "DELETE", f"/bookings/{booking_id}")


def stored(url: str, run_id: str) -> list[hist.StoredBooking]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return hist.stored_bookings(conn, run_id)


def ledger_mismatches(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(
            """SELECT u.slot_time, u.booked_covers AS ledger,
                      coalesce((SELECT sum(b.party_size) FROM bookings b WHERE b.restaurant_id = u.restaurant_id
                                  AND b.booking_date = u.slot_date AND b.booking_time = u.slot_time
                                  AND b.status = 'confirmed'), 0)::int AS confirmed
                 FROM slot_usage u"""
        ).fetchall()
    return [dict(r) for r in rows if r["ledger"] != r["confirmed"]]


# --------------------------------------------------------------------------- its own PostgreSQL


@pytest.fixture(scope="module")
def crash_db() -> Iterator[str]:
    """A migrated, seeded embedded PostgreSQL of this module alone (it gets killed)."""
    home = Path(tempfile.mkdtemp(prefix="capacity-faults-pg-"))
    server = embedded_server(home / "pgdata", cleanup_mode=None)
    url: str = server.get_uri()
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        migrate(conn)
        apply_seed(conn, SeedFile.model_validate(BASE_SEED))
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def test_postgres_killed_hard_mid_load_is_503_then_recovers_and_loses_nothing(
    crash_db: str, api_on: Callable[..., LocalApi]
) -> None:
    api = api_on(crash_db, instances=2)
    run_id = f"lt-crash-{uuid.uuid4().hex[:8]}"
    client = Client(api.base_url, run_id)
    pg = faults.Postgres.of(crash_db)
    stop = threading.Event()
    crashed = threading.Event()
    after_restart: list[int] = []

    def diner(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 40:
            status, reply = client.book(f"{run_id}-{n}-{i}", EVENING[(n * 7 + i) % len(EVENING)])
            if status == 201 and i % 3 == 0:
                client.cancel(reply["booking"]["id"])  # some diners cancel what they booked
            if status == 201 and crashed.is_set():
                after_restart.append(1)
            i += 1

    with ThreadPoolExecutor(max_workers=4) as pool:
        diners = [pool.submit(diner, n) for n in range(4)]
        deadline = time.monotonic() + 60  # bounds, not expectations
        while sum(1 for o in client.history if o.status == 201) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        pg.crash(down_s=2.0)
        crashed.set()
        deadline = time.monotonic() + 60  # bounds, not expectations
        while len(after_restart) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for d in diners:
            d.result(timeout=120)

    # During the outage the API answered 503 service_unavailable with Retry-After, never a 500.
    unavailable = [(h, r) for s, h, r in client.answers if s == 503]
    assert unavailable, "no 503 during the outage"
    assert all(r["code"] in ("service_unavailable", "retry_exhausted") and "Retry-After" in h for h, r in unavailable)
    assert not [s for s, _, _ in client.answers if s >= 500 and s not in RETRYABLE]
    # The service recovered without a restart: the same server answers 201s after the crash.
    assert api.process is not None and api.process.poll() is None
    assert len(after_restart) >= 4
    # Nothing acknowledged was lost, no key has two bookings, the ledger equals its recount.
    verdict = hist.check_history(
        client.history, stored(crash_db, run_id), ledger_mismatches=ledger_mismatches(crash_db)
    )
    assert verdict.acknowledged_lost == 0
    assert verdict.cancellations_lost == 0
    assert verdict.passed, [c for c in verdict.checks if not c["passed"]]
    assert any(o.op == hist.CANCEL and o.status == 200 for o in client.history)


def test_postgres_stalled_answers_late_but_right(crash_db: str, api_on: Callable[..., LocalApi]) -> None:
    api = api_on(crash_db, instances=2)
    run_id = f"lt-stall-{uuid.uuid4().hex[:8]}"
    client = Client(api.base_url, run_id)
    pg = faults.Postgres.of(crash_db)

    stall = threading.Thread(target=pg.stall, args=(1.5,))
    stall.start()
    time.sleep(0.2)
    with ThreadPoolExecutor(max_workers=3) as pool:
        replies = list(pool.map(lambda n: client.book(f"{run_id}-{n}", EVENING[n]), range(3)))
    stall.join()

    assert [status for status, _ in replies] == [201, 201, 201]
    verdict = hist.check_history(client.history, stored(crash_db, run_id))
    assert verdict.passed and verdict.acknowledged_lost == 0


def test_a_handler_instance_killed_mid_request_is_answered_502_and_replaced(
    seeded_db: str, api_on: Callable[..., LocalApi]
) -> None:
    api = api_on(seeded_db, instances=1, env={"DB_LOCK_TIMEOUT_MS": "60000", "DB_STATEMENT_TIMEOUT_MS": "60000",
                                              "BOOKING_REQUEST_BUDGET_MS": "60000"})  # fmt: skip
    first = api.health()["instances"][0]
    lock = psycopg.connect(seeded_db)
    lock.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")  # the request waits inside the instance
    client = Client(api.base_url, "lt-kill", attempts=1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(client.book, "kill-1", "19:00")
        deadline = time.monotonic() + 20
        while not api.health()["instances"][0]["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = faults.kill_instance(api.base_url)
        status, reply = pending.result(timeout=30)
    lock.rollback()
    lock.close()

    assert killed == first["pid"]
    assert status == 502 and reply["code"] == "bad_gateway"
    deadline = time.monotonic() + 30
    while not api.health()["instances"] and time.monotonic() < deadline:
        time.sleep(0.05)
    replacement = api.health()["instances"][0]
    assert replacement["pid"] != first["pid"]
    # the killed request wrote nothing, so the same key books now
    status, reply = Client(api.base_url, "lt-kill").book("kill-1", "19:00")
    assert status == 201
    assert reply is not None


def test_a_statement_timeout_on_a_locked_slot_is_retried_then_503_and_nothing_half_written(
    seeded_db: str, conn: Any, api_on: Callable[..., LocalApi]
) -> None:
    api = api_on(seeded_db, instances=1, env={"DB_STATEMENT_TIMEOUT_MS": "300", "DB_LOCK_TIMEOUT_MS": "250",
                                              "BOOKING_MAX_ATTEMPTS": "3"})  # fmt: skip
    client = Client(api.base_url, "lt-locked", attempts=1)
    assert client.book("first", "19:00")[0] == 201
    holder = psycopg.connect(seeded_db)
    holder.execute(
        "SELECT * FROM slot_usage WHERE restaurant_id = %s AND slot_date = %s AND slot_time = '19:00' FOR UPDATE",
        (BASE_SEED["restaurants"][0]["id"], FUTURE_DATE),
    )
    try:
        status, reply = client.book("locked-1", "19:00")
    finally:
        holder.rollback()
        holder.close()

    assert status == 503
    assert reply["code"] == "retry_exhausted"
    assert client.answers[-1][1].get("Retry-After")
    # Nothing half-written: no booking, no stored answer under the key, the ledger unchanged.
    assert conn.execute("SELECT count(*) AS n FROM bookings WHERE idempotency_key = 'locked-1'").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM idempotency_keys WHERE key = 'locked-1'").fetchone()["n"] == 0
    assert (
        conn.execute(
            "SELECT booked_covers FROM slot_usage WHERE slot_date = %s AND slot_time = '19:00'", (FUTURE_DATE,)
        ).fetchone()["booked_covers"]
        == 1
    )
    events = {
        r["event_type"]: r["n"]
        for r in conn.execute(
            "SELECT event_type, count(*)::int AS n FROM observability_events WHERE metadata ->> 'runId' = 'lt-locked' "
            "GROUP BY 1"
        )
    }
    assert events.get("booking.retry_exhausted") == 1
    assert events.get("booking.conflict", 0) >= 2  # each retried timeout
    # the client's retry of the same key, once the lock is gone, books exactly once
    assert client.book("locked-1", "19:00")[0] == 201
    assert conn.execute("SELECT count(*) AS n FROM bookings WHERE idempotency_key = 'locked-1'").fetchone()["n"] == 1


def test_a_response_lost_to_a_client_timeout_and_retried_with_the_same_key_is_one_booking(
    seeded_db: str, conn: Any, api_on: Callable[..., LocalApi]
) -> None:
    api = api_on(seeded_db, instances=2, env={"DB_LOCK_TIMEOUT_MS": "60000", "DB_STATEMENT_TIMEOUT_MS": "60000",
                                              "BOOKING_REQUEST_BUDGET_MS": "60000"})  # fmt: skip
    lock = psycopg.connect(seeded_db)
    lock.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
    impatient = Client(api.base_url, "lt-lost", timeout_s=1.0, attempts=1)
    status, _ = impatient.book("lost-1", "19:00")  # the answer is lost: the request goes on
    assert status is None
    release = threading.Timer(0.5, lock.rollback)
    release.start()
    client = Client(api.base_url, "lt-lost")
    status, reply = client.book("lost-1", "19:00")
    release.join()
    lock.close()

    assert status == 201
    rows = conn.execute("SELECT id::text AS id FROM bookings WHERE idempotency_key = 'lost-1'").fetchall()
    assert [r["id"] for r in rows] == [reply["booking"]["id"]]
    # the retry was answered with the original booking (a replay, or the first answer if it won)
    verdict = hist.check_history(impatient.history + client.history, hist.stored_bookings(conn, "lt-lost"))
    assert verdict.passed, verdict.checks
