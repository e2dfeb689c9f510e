"""The booking path through a transaction pooler (PgBouncer, standing in for RDS Proxy): the
guarded write under concurrency, idempotency with duplicates in flight, retries after a lost
server connection, and a proxy outage. Fewer server connections than instances, so the
instances' transactions really share connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psycopg
import pytest

from capacity import repository
from tests.booking_checks import assert_hot_slot_booked_exactly_full, event_types, hot_slot_events, slot_covers
from tests.integration.test_pinning import duplicate_while_in_flight
from tests.support import (
    assert_one_booking_for_one_key,
    booking_body,
    invoke,
    invoke_concurrently,
    lambda_instances,
    post_booking_event,
)

pytest_plugins = ("tests.pooler",)  # pooler, own_pooler, pooled_app, pooled_app_for

INSTANCES = 8


@pytest.fixture
def pooled_instances(pooled_app: Any, pooler: Any) -> Iterator[ProcessPoolExecutor]:
    """Eight create_booking instances (one process each), all through the pooler."""
    assert pooler.pool_size < INSTANCES
    with lambda_instances(INSTANCES) as pool:
        yield pool


class TestThroughThePooler:
    def test_200_concurrent_requests_on_a_20_cover_slot_book_exactly_20(self, pooled_instances, pooler, conn):
        assert_hot_slot_booked_exactly_full(invoke_concurrently(pooled_instances, hot_slot_events()), conn)
        # the pool multiplexed: never more server connections for this database than its size
        dbname = conn.info.dbname
        servers = [s for s in pooler.show("SERVERS") if s["database"] == dbname]
        assert 0 < len(servers) <= pooler.pool_size

    def test_30_concurrent_requests_with_one_key_make_one_booking(self, pooled_instances, conn):
        events = [post_booking_event(booking_body(), key="same-key") for _ in range(30)]
        assert_one_booking_for_one_key(invoke_concurrently(pooled_instances, events), conn)

    def test_a_duplicate_in_flight_waits_for_the_original_and_replays_it(self, pooled_app, pooler, seeded_db, conn):
        (status, headers, body), original = duplicate_while_in_flight(pooled_app, conn, pooler.url(seeded_db))
        assert status == 201 and headers["Idempotent-Replayed"] == "true" and body == original.body
        assert [str(r["id"]) for r in conn.execute("SELECT id FROM bookings")] == [original.body["booking"]["id"]]
        assert slot_covers(conn) == 2 and event_types(conn) == {"booking.success": 1}

    def test_replay_and_key_reuse(self, pooled_app, conn):
        first = invoke(pooled_app, post_booking_event(booking_body(), key="k"))
        again = invoke(pooled_app, post_booking_event(booking_body(), key="k"))
        assert first[0] == again[0] == 201 and again[2] == first[2]
        assert again[1]["Idempotent-Replayed"] == "true"
        reused = invoke(pooled_app, post_booking_event(booking_body(partySize=3), key="k"))
        assert reused[0] == 422 and reused[2]["code"] == "idempotency_key_reused"
        assert slot_covers(conn) == 2 and event_types(conn) == {"booking.success": 1}

    def test_nothing_is_prepared_on_the_servers_behind_the_pool(self, pooled_app, pooler, conn):
        for n in range(8):
            assert invoke(pooled_app, post_booking_event(booking_body(partySize=1), key=f"p-{n}"))[0] == 201
        # every server connection of the pool answers; none holds a prepared statement
        pooled = psycopg.connect(pooler.url(conn.info.dsn), autocommit=True)
        with pooled:
            for _ in range(pooler.pool_size):
                assert pooled.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert slot_covers(conn) == 8


class TestOutagesThroughThePooler:
    def test_a_server_connection_killed_mid_statement_is_retried_without_loss_or_duplicate(
        self, pooled_app, seeded_db, conn, monkeypatch
    ):
        original = repository.book
        killed: list[int] = []

        def kill_mid_statement() -> None:
            # the booking statement waits on the table lock below; its server connection dies there
            for _ in range(400):
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                ).fetchone()
                if row:
                    conn.execute("SELECT pg_terminate_backend(%s)", (row["pid"],))
                    killed.append(row["pid"])
                    return
                time.sleep(0.025)

        def book_into_a_dying_connection(connection: Any, *args: Any, **kwargs: Any) -> Any:
            if killed:
                return original(connection, *args, **kwargs)
            with psycopg.connect(seeded_db) as blocker:
                blocker.execute("LOCK TABLE slot_usage IN SHARE ROW EXCLUSIVE MODE")
                killer = threading.Thread(target=kill_mid_statement)
                killer.start()
                try:
                    return original(connection, *args, **kwargs)
                finally:
                    killer.join()
                    blocker.rollback()

        monkeypatch.setattr(repository, "book", book_into_a_dying_connection)
        status, _, body = invoke(pooled_app, post_booking_event(booking_body()))
        assert status == 201 and killed
        assert event_types(conn) == {"booking.conflict": 1, "booking.success": 1}
        assert [str(r["id"]) for r in conn.execute("SELECT id FROM bookings")] == [body["booking"]["id"]]

    def test_a_proxy_outage_is_a_quick_503_and_the_retry_books_once(
        self, seeded_db, own_pooler, pooled_app_for, handler_env, conn
    ):
        app = pooled_app_for(own_pooler.url(seeded_db))
        assert invoke(app, post_booking_event(booking_body(), key="before"))[0] == 201
        own_pooler.stop()
        status, headers, body = invoke(app, post_booking_event(booking_body(), key="during"))
        assert status == 503 and body["code"] in ("service_unavailable", "retry_exhausted")
        assert "Retry-After" in headers
        # a 5xx stored nothing under the key: the caller's retry after the outage books it, once
        assert conn.execute("SELECT count(*) AS n FROM idempotency_keys WHERE key = 'during'").fetchone()["n"] == 0
        own_pooler.start()
        status, _, body = invoke(app, post_booking_event(booking_body(), key="during"))
        assert status == 201
        again = invoke(app, post_booking_event(booking_body(), key="during"))
        assert again[0] == 201 and again[2] == body
        assert slot_covers(conn) == 4
        assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 2
