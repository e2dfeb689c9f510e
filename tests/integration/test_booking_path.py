"""The booking path end to end through the real handler, on a real PostgreSQL: the guarded
write under concurrency, idempotency, replays, retries, a killed connection, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import errors

from capacity import repository
from capctl.apigw import rest_event
from capctl.handlers import load_handler
from tests.booking_checks import assert_hot_slot_booked_exactly_full, event_types, hot_slot_events, slot_covers
from tests.support import (
    FUTURE_DATE,
    RESTAURANT_ID,
    assert_one_booking_for_one_key,
    booking_body,
    invoke,
    invoke_concurrently,
    lambda_instances,
    post_booking_event,
)


@pytest.fixture
def instances(booking_app: Any) -> Iterator[ProcessPoolExecutor]:
    """Eight independent Lambda execution environments of create_booking, one process each."""
    with lambda_instances(8) as pool:
        yield pool


class TestGuardedWrite:
    def test_200_concurrent_requests_on_a_20_cover_slot_book_exactly_20(self, instances, conn):
        assert_hot_slot_booked_exactly_full(invoke_concurrently(instances, hot_slot_events()), conn)

    def test_parties_that_do_not_fit_are_refused_even_when_covers_remain(self, booking_app, conn):
        assert invoke(booking_app, post_booking_event(booking_body(partySize=12), key="a"))[0] == 201
        status, _, body = invoke(booking_app, post_booking_event(booking_body(partySize=9), key="b"))
        assert status == 409 and body["code"] == "capacity_exceeded"
        assert body["requested"] == 9 and body["remainingCovers"] == 8
        assert len(body["alternatives"]) == 5
        assert body["alternatives"][0] == {"date": FUTURE_DATE, "time": "18:45", "remainingCovers": 20}
        assert invoke(booking_app, post_booking_event(booking_body(partySize=8), key="c"))[0] == 201
        assert slot_covers(conn) == 20

    def test_a_lost_race_records_overbook_prevented(self, booking_app, conn, seeded_db, monkeypatch):
        original = repository.load_booking_context

        def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
            context = original(*args, **kwargs)
            with psycopg.connect(seeded_db, autocommit=True) as rival:  # books the slot full meanwhile
                rival.execute(
                    "INSERT INTO slot_usage VALUES (%s, %s, '19:00', 20) ON CONFLICT (restaurant_id, slot_date, "
                    "slot_time) DO UPDATE SET booked_covers = 20",
                    (RESTAURANT_ID, FUTURE_DATE),
                )
            return context

        monkeypatch.setattr(repository, "load_booking_context", read_then_lose_the_race)
        status, _, body = invoke(booking_app, post_booking_event(booking_body()))
        assert status == 409 and body["code"] == "capacity_exceeded"
        assert event_types(conn) == {"booking.capacity_exceeded": 1, "booking.overbook_prevented": 1}
        assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 0

    def test_a_lowered_override_takes_effect_at_once(self, booking_app, conn, seed):
        assert invoke(booking_app, post_booking_event(booking_body(partySize=4), key="a"))[0] == 201
        from tests.support import BASE_SEED

        lowered = json.loads(json.dumps(BASE_SEED))
        lowered["restaurants"][0]["overrides"].append({"date": FUTURE_DATE, "maxCovers": 5, "reason": "kitchen"})
        seed(lowered)
        status, _, body = invoke(booking_app, post_booking_event(booking_body(partySize=2), key="b"))
        assert status == 409 and body["remainingCovers"] == 1


class TestIdempotency:
    def test_30_concurrent_requests_with_one_key_make_one_booking(self, instances, conn):
        events = [post_booking_event(booking_body(), key="same-key") for _ in range(30)]
        assert_one_booking_for_one_key(invoke_concurrently(instances, events), conn)
        assert slot_covers(conn) == 2

    def test_replay_returns_the_stored_status_and_body(self, booking_app, conn):
        first = invoke(booking_app, post_booking_event(booking_body(), key="k"))
        invoke(
            booking_app,
            rest_event(
                "DELETE", f"/bookings/{first[2]['booking']['id']}", api_key="tenant-a", api_key_id="id-tenant-a"
            ),
        )
        again = invoke(booking_app, post_booking_event(booking_body(), key="k"))
        assert again[0] == 201 and again[2] == first[2]  # unchanged, though the booking is cancelled since
        assert again[1]["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first[1]
        assert again[1]["Location"] == first[1]["Location"]
        assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 1

    def test_a_refusal_is_replayed_too(self, booking_app, conn):
        invoke(booking_app, post_booking_event(booking_body(partySize=12), key="fill-1"))
        invoke(booking_app, post_booking_event(booking_body(partySize=8), key="fill-2"))
        refused = invoke(booking_app, post_booking_event(booking_body(partySize=1), key="late"))
        invoke(
            booking_app,
            rest_event("DELETE", f"/bookings/{_first_booking_id(conn)}", api_key="tenant-a", api_key_id="id-tenant-a"),
        )
        again = invoke(booking_app, post_booking_event(booking_body(partySize=1), key="late"))
        assert refused[0] == again[0] == 409 and refused[2] == again[2]
        assert again[1]["Content-Type"] == "application/problem+json"
        assert event_types(conn)["booking.capacity_exceeded"] == 1

    def test_same_key_with_another_body_is_422_and_stores_nothing(self, booking_app, conn):
        invoke(booking_app, post_booking_event(booking_body(partySize=2), key="k"))
        status, _, body = invoke(booking_app, post_booking_event(booking_body(partySize=3), key="k"))
        assert status == 422 and body["code"] == "idempotency_key_reused"
        assert slot_covers(conn) == 2 and event_types(conn) == {"booking.success": 1}

    def test_keys_are_scoped_to_the_api_key(self, booking_app, conn):
        a = invoke(booking_app, post_booking_event(booking_body(), key="shared", api_key="tenant-a"))
        b = invoke(booking_app, post_booking_event(booking_body(), key="shared", api_key="tenant-b"))
        assert a[0] == b[0] == 201 and a[2]["booking"]["id"] != b[2]["booking"]["id"]
        assert slot_covers(conn) == 4


def _first_booking_id(conn: Any) -> str:
    return str(conn.execute("SELECT id FROM bookings ORDER BY created_at LIMIT 1").fetchone()["id"])


class TestRetries:
    @pytest.fixture
    def fast_app(self, seeded_db, handler_env):
        handler_env(seeded_db, BOOKING_BACKOFF_BASE_MS="1", BOOKING_BACKOFF_CAP_MS="2")
        from capacity import settings

        settings.booking_settings.cache_clear()
        module = load_handler("create_booking", fresh=True)
        yield module
        module.service.db.close()
        settings.booking_settings.cache_clear()

    def fail_first(self, monkeypatch, n: int, exc: type[Exception]) -> list[int]:
        original = repository.book
        calls = [0]

        def flaky(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] <= n:
                raise exc()
            return original(*args, **kwargs)

        monkeypatch.setattr(repository, "book", flaky)
        return calls

    def test_transient_failures_are_retried_and_each_recorded_as_a_conflict(self, fast_app, conn, monkeypatch):
        calls = self.fail_first(monkeypatch, 2, errors.SerializationFailure)
        status, _, _body = invoke(fast_app, post_booking_event(booking_body()))
        assert status == 201 and calls[0] == 3
        assert event_types(conn) == {"booking.conflict": 2, "booking.success": 1}
        success = conn.execute(
            "SELECT metadata FROM observability_events WHERE event_type = 'booking.success'"
        ).fetchone()["metadata"]
        assert success["attempts"] == 3 and success["source"] == "web" and success["time"] == "19:00"
        assert slot_covers(conn) == 2

    def test_retry_exhaustion_is_503_stores_nothing_and_is_recorded(self, fast_app, conn, monkeypatch, capsys):
        self.fail_first(monkeypatch, 99, errors.DeadlockDetected)
        status, headers, body = invoke(fast_app, post_booking_event(booking_body(), key="k"))
        assert status == 503 and body["code"] == "retry_exhausted" and headers["Retry-After"] == "1"
        # four attempts failed; the first three were retried, the last was not
        assert event_types(conn) == {"booking.conflict": 3, "booking.retry_exhausted": 1}
        assert conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()["n"] == 0
        emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        assert emf[-1]["BookingRetryExhausted"] == [1.0] and emf[-1]["BookingConflicts"] == [3.0]
        # a 5xx stored nothing under the key, so the caller's retry succeeds
        monkeypatch.undo()
        assert invoke(fast_app, post_booking_event(booking_body(), key="k"))[0] == 201

    def test_a_killed_connection_is_retried_without_loss_or_duplicate(self, fast_app, conn, monkeypatch):
        original = repository.book
        killed = []

        def kill_then_book(connection: Any, *args: Any, **kwargs: Any) -> Any:
            if not killed:
                killed.append(connection.info.backend_pid)
                conn.execute("SELECT pg_terminate_backend(%s)", (killed[0],))
            return original(connection, *args, **kwargs)

        monkeypatch.setattr(repository, "book", kill_then_book)
        status, _, body = invoke(fast_app, post_booking_event(booking_body()))
        assert status == 201 and killed
        assert fast_app.service.db.connection().info.backend_pid != killed[0]
        assert event_types(conn) == {"booking.conflict": 1, "booking.success": 1}
        assert [str(r["id"]) for r in conn.execute("SELECT id FROM bookings")] == [body["booking"]["id"]]

    def test_a_reply_lost_after_commit_is_replayed_not_booked_twice(self, fast_app, conn, monkeypatch):
        original = repository.book
        lost = []

        def commit_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if not lost:
                lost.append(result)
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return result

        monkeypatch.setattr(repository, "book", commit_then_lose_the_reply)
        status, _, body = invoke(fast_app, post_booking_event(booking_body()))
        assert status == 201 and body == lost[0]
        assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 1
        assert event_types(conn)["booking.success"] == 1

    def test_an_unreachable_database_is_a_quick_503(self, handler_env):
        handler_env("postgresql://postgres@127.0.0.1:9/postgres", DB_CONNECT_TIMEOUT_SECONDS="1")
        from capacity import settings

        settings.booking_settings.cache_clear()
        module = load_handler("create_booking", fresh=True, instance="nodb")
        status, headers, body = invoke(module, post_booking_event(booking_body()))
        assert status == 503 and body["code"] == "service_unavailable" and headers["Retry-After"] == "1"
        status, _, body = invoke(
            module, rest_event("GET", f"/restaurants/{RESTAURANT_ID}/availability", query={"date": FUTURE_DATE})
        )
        assert status == 503 and body["code"] == "service_unavailable"
        settings.booking_settings.cache_clear()


class TestPreparedStatements:
    """Behind RDS Proxy a server-side prepared statement pins the connection to its backend;
    DB_PREPARE_THRESHOLD=off keeps the booking path from preparing any."""

    def prepared_after_bookings(self, seeded_db: str, handler_env: Any, **env: str) -> int:
        handler_env(seeded_db, **env)
        from capacity import settings

        settings.booking_settings.cache_clear()
        module = load_handler("create_booking", fresh=True, instance="prepare")
        try:
            for n in range(8):
                assert invoke(module, post_booking_event(booking_body(partySize=1), key=f"p-{n}"))[0] == 201
            conn = module.service.db.connection()
            return int(conn.execute("SELECT count(*) AS n FROM pg_prepared_statements").fetchone()["n"])
        finally:
            module.service.db.close()
            settings.booking_settings.cache_clear()

    def test_by_default_repeated_statements_are_prepared(self, seeded_db, handler_env):
        assert self.prepared_after_bookings(seeded_db, handler_env) > 0

    def test_off_prepares_nothing(self, seeded_db, handler_env):
        assert self.prepared_after_bookings(seeded_db, handler_env, DB_PREPARE_THRESHOLD="off") == 0
