"""What the three functions send to PostgreSQL, captured through their handlers against the real
database, checked against what pins a client to one server connection behind RDS Proxy (and
breaks behind a transaction pooler): session ``SET``/``set_config``/``RESET``/``DISCARD``,
prepared statements, advisory-lock functions (every variant), temporary tables, ``LISTEN``,
cursors, ``LOAD``, explicit sequence functions, and the startup parameter ``options``.

The booking function must be free of all of them: thousands of its instances arrive at once.
The scheduled functions run one instance per schedule; pinning their one connection for the
run is harmless, so their constructs are listed here and a new one fails the test.

Also here: every statement of the booking path carries the request's restaurant id, so a
sharded PostgreSQL (Citus, distributed by ``restaurant_id``) can route it to one shard.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from capacity.settings import DatabaseSettings
from capctl.apigw import LambdaContext, rest_event
from capctl.handlers import load_handler
from tests.booking_checks import event_types
from tests.support import CLOSED_DATE, FUTURE_DATE, RESTAURANT_ID, booking_body, invoke, post_booking_event

# The switch that keeps the timeouts off the connection (capacity.settings, DB_SESSION_OPTIONS).
SESSION_OPTIONS_SETTING = "session_options" in DatabaseSettings.model_fields

PINNING: dict[str, re.Pattern[str]] = {
    "SET / RESET / DISCARD": re.compile(r"^\s*(SET|RESET|DISCARD)\b", re.IGNORECASE),
    "set_config()": re.compile(r"\bset_config\s*\(", re.IGNORECASE),
    "prepared statement (PREPARE / EXECUTE / DEALLOCATE)": re.compile(
        r"^\s*(PREPARE|EXECUTE|DEALLOCATE)\b", re.IGNORECASE
    ),
    "advisory-lock function": re.compile(r"\bpg_(try_)?advisory_(xact_)?(un)?lock(_shared|_all)?\s*\(", re.IGNORECASE),
    "temporary table, sequence or view": re.compile(r"\bCREATE\s+(TEMP|TEMPORARY)\b", re.IGNORECASE),
    "LISTEN": re.compile(r"^\s*(UN)?LISTEN\b", re.IGNORECASE),
    "cursor": re.compile(r"^\s*DECLARE\b", re.IGNORECASE),
    "LOAD": re.compile(r"^\s*LOAD\b", re.IGNORECASE),
    "sequence function": re.compile(r"\b(nextval|setval|currval|lastval)\s*\(", re.IGNORECASE),
}


def _outside_literals(statement: str) -> str:
    """The statement with its string literals blanked: a guest's note may say 'SET'."""
    return re.sub(r"'(?:[^']|'')*'", "''", statement)


def pinning_constructs(statement: str) -> set[str]:
    text = _outside_literals(statement)
    return {name for name, pattern in PINNING.items() if pattern.search(text)}


@dataclass
class Sent:
    statements: list[tuple[str, Any]] = field(default_factory=list)
    connections: list[dict[str, Any]] = field(default_factory=list)
    prepare_thresholds: list[int | None] = field(default_factory=list)

    def constructs(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for statement, _ in self.statements:
            for name in pinning_constructs(statement):
                found.setdefault(name, set()).add(" ".join(statement.split())[:120])
        return found

    def startup_options(self) -> list[str]:
        return [str(c["options"]) for c in self.connections if c.get("options")]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    """Every statement (text and parameters) and every connection's parameters, as the functions'
    code sends them: only connections opened from ``capacity`` code (``capacity.db``) count, not
    the test's own."""
    record = Sent()
    theirs: set[int] = set()  # ids of the connections the functions opened
    original_execute = psycopg.Cursor.execute
    original_executemany = psycopg.Cursor.executemany
    original_connect = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def text_of(cursor: Any, query: Any) -> str:
        if isinstance(query, bytes):
            return query.decode()
        return query if isinstance(query, str) else query.as_string(cursor.connection)

    def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if id(self.connection) in theirs:
            record.statements.append((text_of(self, query), params))
            if kwargs.get("prepare"):
                record.statements.append(("PREPARE (explicit prepare=True)", None))
        return original_execute(self, query, params, **kwargs)

    def executemany(self: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        if id(self.connection) in theirs:
            record.statements.append((text_of(self, query), None))
        return original_executemany(self, query, params_seq, **kwargs)

    def connect(cls: Any, conninfo: str = "", **kwargs: Any) -> Any:
        conn = original_connect(cls, conninfo, **kwargs)
        caller = sys._getframe(1)
        while caller is not None and caller.f_code.co_filename.endswith(("test_pinning.py", "connection.py")):
            caller = caller.f_back  # past this fixture's own wrappers and psycopg's
        if caller is not None and f"{os.sep}capacity{os.sep}" in caller.f_code.co_filename:
            theirs.add(id(conn))
            record.connections.append({**psycopg.conninfo.conninfo_to_dict(conninfo), **kwargs})
            record.prepare_thresholds.append(conn.prepare_threshold)
        return conn

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.Cursor, "executemany", executemany)
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(connect))
    # psycopg.connect is the classmethod bound at import: it is patched on its own
    monkeypatch.setattr(
        psycopg, "connect", lambda conninfo="", **kwargs: connect(psycopg.Connection, conninfo, **kwargs)
    )
    yield record


def _cold_start(function: str, url: str, handler_env: Callable[..., None], **env: str) -> Any:
    from capacity import settings

    # as deployed behind RDS Proxy (docs/capacity/deploy.md): no server-side prepared statements,
    # no session settings sent at connect (the login role's defaults give the timeouts)
    handler_env(url, DB_PREPARE_THRESHOLD="off", DB_SESSION_OPTIONS="off", **env)
    settings.booking_settings.cache_clear()
    return load_handler(function, fresh=True, instance="pinning")


def every_booking_path(module: Any) -> None:
    """Each route and outcome of the booking function once: created, replayed, key reused, full,
    closed, availability, get, cancel."""
    created = invoke(module, post_booking_event(booking_body(partySize=12), key="a"))
    assert created[0] == 201
    assert invoke(module, post_booking_event(booking_body(partySize=12), key="a"))[1]["Idempotent-Replayed"] == "true"
    assert invoke(module, post_booking_event(booking_body(partySize=3), key="a"))[0] == 422
    assert invoke(module, post_booking_event(booking_body(partySize=8), key="b"))[0] == 201
    full = invoke(module, post_booking_event(booking_body(partySize=1), key="c"))
    assert full[0] == 409 and full[2]["code"] == "capacity_exceeded"
    closed = invoke(module, post_booking_event(booking_body(date=CLOSED_DATE), key="d"))
    assert closed[0] == 409
    availability = rest_event("GET", f"/restaurants/{RESTAURANT_ID}/availability", query={"date": FUTURE_DATE})
    assert invoke(module, availability)[0] == 200
    booking_id = created[2]["booking"]["id"]
    assert (
        invoke(module, rest_event("GET", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a"))[0]
        == 200
    )
    cancel = rest_event("DELETE", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a")
    assert invoke(module, cancel)[0] == 200


@pytest.fixture
def booking_function(seeded_db: str, handler_env: Callable[..., None]) -> Iterator[Any]:
    module = _cold_start("create_booking", seeded_db, handler_env)
    yield module
    module.service.db.close()
    from capacity import settings

    settings.booking_settings.cache_clear()


class TestBookingFunctionDoesNotPin:
    def test_no_statement_of_any_route_pins(self, booking_function, sent, conn):
        every_booking_path(booking_function)
        assert len(sent.statements) >= 10
        assert sent.constructs() == {}
        assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 2

    @pytest.mark.xfail(
        not SESSION_OPTIONS_SETTING,
        strict=True,
        reason="capacity.db sends statement_timeout, lock_timeout, idle_in_transaction_session_timeout "
        "and TimeZone as startup options until DB_SESSION_OPTIONS=off exists (secret-rotation work)",
    )
    def test_its_connection_sends_no_startup_options(self, booking_function, sent):
        every_booking_path(booking_function)
        assert sent.connections, "the function connected"
        assert sent.startup_options() == []

    def test_its_connection_prepares_nothing_server_side(self, booking_function, sent, conn):
        every_booking_path(booking_function)
        assert sent.prepare_thresholds and set(sent.prepare_thresholds) == {None}
        function_conn = booking_function.service.db.connection()
        assert function_conn.execute("SELECT count(*) AS n FROM pg_prepared_statements").fetchone()["n"] == 0

    def test_the_check_finds_what_pins(self):
        # the list itself can fail: each construct the functions must not send is recognised
        assert pinning_constructs("SET statement_timeout = 1") == {"SET / RESET / DISCARD"}
        assert pinning_constructs("set local lock_timeout = '1s'") == {"SET / RESET / DISCARD"}
        assert pinning_constructs("SELECT pg_try_advisory_xact_lock(1)") == {"advisory-lock function"}
        assert pinning_constructs("SELECT pg_advisory_unlock_all()") == {"advisory-lock function"}
        assert pinning_constructs("select set_config('a.b', 'c', false)") == {"set_config()"}
        assert pinning_constructs("CREATE TEMPORARY TABLE t (x int)") == {"temporary table, sequence or view"}
        assert pinning_constructs("LISTEN bookings") == {"LISTEN"}
        assert pinning_constructs("PREPARE p AS SELECT 1") == {"prepared statement (PREPARE / EXECUTE / DEALLOCATE)"}
        assert pinning_constructs("SELECT nextval('s')") == {"sequence function"}
        assert pinning_constructs("INSERT INTO bookings (notes) VALUES ('SET the table; LISTEN')") == set()


# The scheduled functions' own constructs, one connection per scheduled run (see the module doc).
KNOWN_SCHEDULED = {
    "rollup_metrics": {"SET / RESET / DISCARD", "advisory-lock function"},  # SET LOCAL timeouts, run lock
    "check_alerts": {"SET / RESET / DISCARD", "advisory-lock function"},  # statement_timeout, run lock
}


class TestScheduledFunctionsPinOnlyWhatIsKnown:
    @pytest.mark.parametrize("function", ["rollup_metrics", "check_alerts"])
    def test_constructs_are_the_known_ones(self, function, seeded_db, handler_env, sent, conn):
        booking = _cold_start("create_booking", seeded_db, handler_env)
        assert invoke(booking, post_booking_event(booking_body()))[0] == 201
        booking.service.db.close()
        # an overbooked slot planted by SQL, so the alert check opens an incident too
        conn.execute(
            "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size) "
            "SELECT gen_random_uuid(), %s, %s, '20:00', 12 FROM generate_series(1, 2)",
            (RESTAURANT_ID, FUTURE_DATE),
        )
        sent.statements.clear()
        module = _cold_start(function, seeded_db, handler_env)
        try:
            module.lambda_handler({"time": "2030-01-01T00:00:00Z", "detail": {}}, LambdaContext(function_name=function))
        finally:
            module.db.close()
        assert len(sent.statements) >= 3
        assert set(sent.constructs()) == KNOWN_SCHEDULED[function]
        if function == "check_alerts":
            assert conn.execute("SELECT count(*) AS n FROM alert_state").fetchone()["n"] >= 1


class TestBookingPathIsShardable:
    def test_every_statement_carries_the_restaurant_id(self, booking_function, sent):
        """POST /bookings (created, replayed, refused) and availability: each statement has the
        restaurant id among its parameters, so Citus can route it to the restaurant's shard."""
        assert invoke(booking_function, post_booking_event(booking_body(partySize=12), key="a"))[0] == 201
        invoke(booking_function, post_booking_event(booking_body(partySize=12), key="a"))
        assert invoke(booking_function, post_booking_event(booking_body(partySize=12), key="b"))[0] == 409
        availability = rest_event("GET", f"/restaurants/{RESTAURANT_ID}/availability", query={"date": FUTURE_DATE})
        assert invoke(booking_function, availability)[0] == 200
        assert len(sent.statements) >= 5
        for statement, params in sent.statements:
            values = {str(v) for v in (params.values() if isinstance(params, dict) else params or ())}
            assert RESTAURANT_ID in values, f"not keyed by restaurant_id: {' '.join(statement.split())[:160]}"


def book_in_an_open_transaction(url: str, key: str) -> tuple[psycopg.Connection[Any], Any]:
    """The real booking service writing ``booking_body()`` under ``key`` on a connection whose
    transaction stays open: a duplicate's original, in flight. Commit the connection to land it."""
    from capacity.booking import BookingService, Caller
    from capacity.db import Database
    from capacity.models import BookingRequest
    from capacity.settings import BookingSettings

    settings = BookingSettings.from_env({"DATABASE_URL": url})
    original = psycopg.connect(url, row_factory=psycopg.rows.dict_row)  # not autocommit: stays open
    service = BookingService(Database(settings), settings)
    service.db.connection = lambda: original  # type: ignore[method-assign]
    result = service.book(
        BookingRequest.model_validate(booking_body()), Caller(tenant="id-tenant-a", idempotency_key=key)
    )
    assert result.status == 201
    return original, result


def duplicate_while_in_flight(module: Any, watcher: Any, url: str) -> tuple[Any, Any]:
    """A duplicate sent while its original is uncommitted: it waits on the key's index entry;
    the original commits; the duplicate's answer and the original's result."""
    original, result = book_in_an_open_transaction(url, "in-flight")
    answers: list[Any] = []
    duplicate = threading.Thread(
        target=lambda: answers.append(invoke(module, post_booking_event(booking_body(), key="in-flight")))
    )
    duplicate.start()
    try:
        for _ in range(400):  # until the duplicate's write waits on the original's transaction
            if watcher.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()["n"]:
                break
            time.sleep(0.025)
        else:
            raise AssertionError("the duplicate never waited on the original")
    finally:
        original.commit()
        original.close()
        duplicate.join()
    return answers[0], result


class TestInFlightDuplicatesWithoutAdvisoryLock:
    def test_a_duplicate_in_flight_waits_for_the_original_and_replays_it(self, booking_function, seeded_db, conn):
        (status, headers, body), original = duplicate_while_in_flight(booking_function, conn, seeded_db)
        assert status == 201 and headers["Idempotent-Replayed"] == "true"
        assert body == original.body
        assert [str(r["id"]) for r in conn.execute("SELECT id FROM bookings")] == [original.body["booking"]["id"]]
        assert conn.execute("SELECT booked_covers FROM slot_usage").fetchone()["booked_covers"] == 2
        assert event_types(conn) == {"booking.success": 1}
