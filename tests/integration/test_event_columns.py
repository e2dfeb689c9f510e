"""The event columns of migration 007 on a real PostgreSQL: ``source``, ``attempts`` and
``reason`` of observability_events follow the event's metadata whoever writes it (plain SQL, the
functions' role), by the rules capacity.figures counts with; an event written by plain SQL lands
in the right counters of the roll-up."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from psycopg import errors

from capacity.figures import COUNTER_NAMES, COUNTERS_SQL, SYNTHETIC_SQL
from capacity.rollup import LIVE_TABLE, SYNTHETIC_TABLE, run_rollup

pytestmark = pytest.mark.integration

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "007_event_columns.sql"
RESTAURANT = "7e57c01a-0000-4000-8000-000000000007"
NOW = dt.datetime(2030, 6, 14, 19, 30, tzinfo=dt.UTC)
AT = dt.datetime(2030, 6, 14, 19, 10, tzinfo=dt.UTC)  # in the 19:00 UTC hour


def _insert(conn: Any, event_type: str, metadata: Any, at: dt.datetime = AT) -> int:
    """One event as an operator's or an outside tool's SQL writes it: the contract's columns only."""
    row = conn.execute(
        "INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata)"
        " VALUES (%s, %s, %s, %s::jsonb) RETURNING id",
        (event_type, RESTAURANT, at, json.dumps(metadata)),
    ).fetchone()
    return int(row["id"])


def _columns(conn: Any, event_id: int) -> dict[str, Any]:
    found = conn.execute(
        "SELECT source, attempts, reason FROM observability_events WHERE id = %s", (event_id,)
    ).fetchone()
    assert found is not None
    return dict(found)


@pytest.fixture
def restaurant(conn: Any) -> str:
    conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, 'Columns')", (RESTAURANT,))
    return RESTAURANT


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"source": "load-test", "attempts": 1}, ("load-test", Decimal(1), None)),
        ({"source": "web", "attempts": 3}, ("web", Decimal(3), None)),
        ({"attempts": "x"}, (None, Decimal(1), None)),  # not a number: 1, as the counters always took it
        ({"attempts": "3"}, (None, Decimal(1), None)),  # a string, even of digits, is not a number
        ({"attempts": None}, (None, Decimal(1), None)),
        ({"attempts": 1.5}, (None, Decimal("1.5"), None)),
        ({"attempts": 1e30}, (None, Decimal("1e30"), None)),  # no integer overflow fails the INSERT
        ({"attempts": {"n": 2}}, (None, Decimal(1), None)),
        ({"reason": "closed", "source": "api"}, ("api", Decimal(1), "closed")),
        ({"source": 7}, ("7", Decimal(1), None)),  # ->> as the JSON reading had it
        ({}, (None, Decimal(1), None)),
        ([1, 2], (None, Decimal(1), None)),  # not even an object: still written, still counted
        ("text", (None, Decimal(1), None)),
    ],
)
def test_the_columns_follow_the_metadata_of_a_plain_sql_insert(conn, metadata, expected):
    event_id = _insert(conn, "booking.success", metadata)
    assert tuple(_columns(conn, event_id).values()) == expected


def test_the_columns_follow_an_update_of_the_metadata_and_cannot_be_written(conn):
    event_id = _insert(conn, "booking.success", {"source": "web", "attempts": 1})
    conn.execute(
        "UPDATE observability_events SET metadata = metadata || %s::jsonb WHERE id = %s",
        (json.dumps({"source": "load-test", "attempts": 4, "reason": "full"}), event_id),
    )
    assert _columns(conn, event_id) == {"source": "load-test", "attempts": Decimal(4), "reason": "full"}
    with pytest.raises(errors.GeneratedAlways), conn.transaction():
        conn.execute(
            "INSERT INTO observability_events (event_type, metadata, source) VALUES ('booking.success', '{}', 'web')"
        )
    with pytest.raises(errors.GeneratedAlways), conn.transaction():
        conn.execute("UPDATE observability_events SET attempts = 9 WHERE id = %s", (event_id,))
    assert _columns(conn, event_id)["attempts"] == Decimal(4)


def _plant(conn: Any) -> None:
    """Plain-SQL events of one hour, each meant for particular counters."""
    _insert(conn, "booking.success", {"source": "load-test", "attempts": 1})  # synthetic
    _insert(conn, "booking.success", {"source": "load-test", "attempts": 3})  # synthetic, retried
    _insert(conn, "booking.success", {"source": "web", "attempts": 3})  # live, retried: a conflict
    _insert(conn, "booking.success", {"source": "web", "attempts": "x"})  # live, attempts 1: none
    _insert(conn, "booking.capacity_exceeded", {"reason": "closed"})  # live (no source), closed
    _insert(conn, "booking.capacity_exceeded", {"source": "web", "reason": "full", "attempts": "2"})
    _insert(conn, "booking.overbook_prevented", {"source": "web", "attempts": "x"})  # a lost race on try 1
    _insert(conn, "booking.overbook_prevented", {"source": "web", "attempts": 2})  # on try 2: its outcome counts
    _insert(conn, "booking.retry_exhausted", {"source": "load-test", "attempts": 4})
    _insert(conn, "booking.cancelled", {"source": "web"})


LIVE = {
    "requests": 4,
    "successes": 2,
    "capacity_exceeded": 2,
    "slot_closed": 1,
    "retry_exhausted": 0,
    "overbook_prevented": 2,
    "retried_failures": 0,
    "conflicts": 2,  # the web success with 3 attempts; the overbook_prevented on try 1
    "cancellations": 1,
    "overbook_detected": 0,
}
SYNTHETIC = {
    "requests": 3,
    "successes": 2,
    "capacity_exceeded": 0,
    "slot_closed": 0,
    "retry_exhausted": 1,
    "overbook_prevented": 0,
    "retried_failures": 0,
    "conflicts": 2,  # the success with 3 attempts; the exhausted one
    "cancellations": 0,
    "overbook_detected": 0,
}


def test_plain_sql_events_land_in_the_right_counters(conn, restaurant):
    _plant(conn)
    counted = conn.execute(
        f"SELECT {SYNTHETIC_SQL} AS synthetic, {COUNTERS_SQL} FROM observability_events e GROUP BY 1"
    ).fetchall()
    by_class = {r["synthetic"]: {n: r[n] for n in COUNTER_NAMES} for r in counted}
    assert by_class == {False: LIVE, True: SYNTHETIC}


def test_the_rollup_counts_plain_sql_events_into_the_right_table(conn, restaurant):
    _plant(conn)
    summary = run_rollup(conn, hours=1, now=NOW)
    assert (summary.live.rows, summary.synthetic.rows) == (1, 1)
    hour = AT.replace(minute=0)
    for table, expected in ((LIVE_TABLE, LIVE), (SYNTHETIC_TABLE, SYNTHETIC)):
        found = conn.execute(
            f"SELECT * FROM {table} WHERE restaurant_id = %s AND hour = %s",
            (restaurant, hour),
        ).fetchone()
        assert found is not None, table
        assert {n: found[n] for n in COUNTER_NAMES} == expected, table
        want_rate = Decimal(expected["conflicts"]) / expected["requests"]
        assert found["conflict_rate"] == round(want_rate, 6), table


def test_the_functions_role_writes_events_and_counts_them(conn, restaurant):
    """capacity_app (migrations 005, 009) needs no grant of its own for the new columns."""
    conn.execute("SET ROLE capacity_app")
    try:
        event_id = _insert(conn, "booking.success", {"source": "load-test", "attempts": 2})
        assert _columns(conn, event_id) == {"source": "load-test", "attempts": Decimal(2), "reason": None}
        [counted] = conn.execute(
            f"SELECT {SYNTHETIC_SQL} AS synthetic, {COUNTERS_SQL} FROM observability_events e"
            " WHERE e.id = %s GROUP BY 1",
            (event_id,),
        ).fetchall()
    finally:
        conn.execute("RESET ROLE")
    assert (counted["synthetic"], counted["requests"], counted["conflicts"]) == (True, 1, 1)


def test_migration_007_runs_again_without_changing_anything(conn):
    """Idempotent, as every migration must be (capctl db migrate may run it again): a second run adds nothing."""
    columns = (
        "SELECT column_name, data_type, generation_expression FROM information_schema.columns"
        " WHERE table_name = 'observability_events' ORDER BY ordinal_position"
    )
    before = conn.execute(columns).fetchall()
    conn.execute(MIGRATION.read_text().encode())
    assert conn.execute(columns).fetchall() == before
    generated = {r["column_name"]: r["data_type"] for r in before if r["generation_expression"]}
    assert generated == {"source": "text", "attempts": "numeric", "reason": "text"}
    # the contract's columns come first, as they were
    assert [r["column_name"] for r in before[:5]] == ["id", "event_type", "restaurant_id", "occurred_at", "metadata"]
