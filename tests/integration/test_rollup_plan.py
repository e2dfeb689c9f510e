"""The roll-up at volume, against the real PostgreSQL: both traffic classes come out of one
read-only count of the window's events, which hashes them per (restaurant, hour) rather than
reading every event through the (restaurant, time) index (migration 006 gives the planner the
number of such groups), from the event columns of migration 007 rather than the JSON metadata;
the statement that writes does not read the events again."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from capacity.figures import COUNTER_NAMES
from capacity.rollup import _COUNTERS, _ROLLUP, WORK_MEM, run_rollup, window

pytestmark = pytest.mark.integration

RESTAURANTS = 50


def _rid(n: int) -> uuid.UUID:
    return uuid.UUID(int=0xBEEF0000 + n)


def _seed(conn: Any, now: dt.datetime) -> None:
    for n in range(RESTAURANTS):
        conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, %s)", (_rid(n), f"Plan {n}"))
    # a day of history before the window, then 60,000 events inside it; every 7th is synthetic
    conn.execute(
        """
        INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata)
        SELECT 'booking.success', ('00000000-0000-0000-0000-0000' || to_hex(3203334144 + g %% %(n)s))::uuid,
               %(now)s - make_interval(secs => CASE WHEN g < 60000 THEN g %% 7000 ELSE 86400 + g END),
               CASE WHEN g %% 7 = 0 THEN '{"source": "load-test"}'::jsonb ELSE '{"source": "web"}'::jsonb END
          FROM generate_series(0, 119999) g
        """,
        {"n": RESTAURANTS, "now": now},
    )
    conn.execute("ANALYZE observability_events")


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _plan(conn: Any, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.transaction():
        conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")  # as run_rollup does
        # VERBOSE: every node's output and filter expressions, the aggregate's FILTERs included
        [row] = conn.execute("EXPLAIN (VERBOSE, FORMAT JSON) " + statement, params).fetchall()
    return _nodes(row["QUERY PLAN"][0]["Plan"])


def test_the_window_is_counted_once_by_hashing_for_both_tables(conn):
    now = dt.datetime.now(dt.UTC)
    _seed(conn, now)
    assert _rid(0) == uuid.UUID("00000000-0000-0000-0000-0000beef0000")  # the SQL above builds the same ids
    stats = "SELECT count(*)::int AS n FROM pg_statistic_ext WHERE stxname = 'observability_events_restaurant_hour'"
    assert conn.execute(stats).fetchone() == {"n": 1}
    start, end = window(now, 3)

    counting = _plan(conn, _COUNTERS, {"start": start, "end": end})
    events_read = [n for n in counting if n.get("Relation Name") == "observability_events"]
    assert len(events_read) == 1
    assert events_read[0].get("Index Name") != "observability_events_restaurant_time"
    assert any(n["Node Type"] == "Aggregate" and n["Strategy"] == "Hashed" for n in counting)
    # the counters read the event columns of migration 007, not the JSON: no node of the plan
    # (scan, join, aggregate, the events' group keys) takes a field out of the metadata (a scan
    # may still pass the whole row up, metadata included)
    expressions = json.dumps(counting)
    assert "metadata ->" not in expressions and "jsonb" not in expressions
    read = {column.removeprefix("e.") for column in events_read[0]["Output"]}
    assert {"attempts", "reason", "event_type"} <= read and "metadata" not in read
    assert any("source" in column for column in read)
    empty: dict[str, Any] = {"restaurants": [], "hours": [], "synthetic": [], "start": start, "end": end}
    empty |= {k: [] for k in ("slot_restaurants", "slot_hours", "slot_dates", "slot_times", "slot_caps")}
    empty |= {n: [] for n in COUNTER_NAMES}
    writing = _plan(conn, _ROLLUP, empty)
    assert not [n for n in writing if n.get("Relation Name") == "observability_events"]

    summary = run_rollup(conn, hours=3, now=now)
    live = conn.execute(
        "SELECT sum(successes)::int AS n, count(*)::int AS rows FROM capacity_metrics_hourly"
    ).fetchone()
    synthetic = conn.execute(
        "SELECT sum(successes)::int AS n, count(*)::int AS rows FROM capacity_metrics_hourly_synthetic"
    ).fetchone()
    in_window = range(60000)
    assert live == {"n": sum(1 for g in in_window if g % 7), "rows": summary.live.rows}
    assert synthetic == {"n": sum(1 for g in in_window if g % 7 == 0), "rows": summary.synthetic.rows}
    assert summary.live.rows >= RESTAURANTS * 2 and summary.synthetic.rows >= RESTAURANTS * 2


def test_a_warm_connection_never_prepares_the_rollups_statements(conn):
    """A warm Lambda reuses its connection. psycopg prepares a statement once it has run a few
    times on it (DB_PREPARE_THRESHOLD) and PostgreSQL then plans it for any window, guessing a
    narrow one: an index read of the events without parallel workers (0.7 s against 0.5 s at a
    million events). The counting and the writing statement are planned for their window every
    run."""
    conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, 'Warm')", (_rid(0),))
    now = dt.datetime.now(dt.UTC)
    conn.execute(
        "INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata)"
        " VALUES ('booking.success', %s, %s, '{}')",
        (_rid(0), now),
    )
    for _ in range(12):
        summary = run_rollup(conn, hours=3, now=now)
    assert summary.live.rows == 1
    prepared = [r["statement"] for r in conn.execute("SELECT statement FROM pg_prepared_statements")]
    assert any("FROM restaurants" in p for p in prepared)  # the threshold was reached: others are prepared
    assert not [p for p in prepared if "FROM observability_events" in p or "INSERT INTO" in p]
