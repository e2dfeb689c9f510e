"""The hourly roll-up: observability_events and bookings into ``capacity_metrics_hourly``.

Every run re-aggregates a trailing window of whole UTC hours (the current one included): one
statement counts its events, one writes both traffic classes. Events that arrive late are
counted by the next run, and a re-run writes the same rows (``updated_at`` moves only when a
figure changed).
Synthetic traffic (``source = 'load-test'``) goes to ``capacity_metrics_hourly_synthetic``, live
traffic to ``capacity_metrics_hourly``.

Counters are per hour of ``occurred_at``; covers, capacity and utilization are per hour of the
slots' start (local slot time converted with the restaurant's time zone). Capacities come from
the rules in Python (``capacity.rules``); everything else is SQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from psycopg import sql
from pydantic import computed_field

from capacity import figures
from capacity.camel_json import CamelJson, Rounded, UtcSeconds
from capacity.db import DictConnection
from capacity.figures import COUNTER_NAMES, COUNTERS_SQL, SYNTHETIC_SQL, sql_text
from capacity.outcomes import LOAD_TEST_SOURCE
from capacity.reconcile import load_rules
from capacity.rules import RestaurantRules

LIVE_TABLE = "capacity_metrics_hourly"
SYNTHETIC_TABLE = "capacity_metrics_hourly_synthetic"

HOUR = dt.timedelta(hours=1)
# Scheduled work is off the booking path: the booking path's short statement timeout would cut a
# month-long backfill short, and waiting for another run's lock is fine here.
STATEMENT_TIMEOUT = "120s"
LOCK_TIMEOUT = "60s"
# Enough to hash the window's events per (restaurant, hour, class) in memory rather than sort
# them all (with the statistics of migration 006); for this one transaction only.
WORK_MEM = "64MB"
_ROLLUP_LOCK_ID = 7_347_202
PURGE_BATCH = 5000
PURGE_MAX_BATCHES = 200

FIGURE_NAMES = (*COUNTER_NAMES, "conflict_rate", "success_rate", "covers_booked", "capacity_covers", "utilization")

_COUNTERS_ZERO = ", ".join(f"coalesce(c.{n}, 0) AS {n}" for n in COUNTER_NAMES)
_FIGURES = ", ".join(FIGURE_NAMES)
_SET_FIGURES = ", ".join(f"{n} = EXCLUDED.{n}" for n in FIGURE_NAMES)
_OLD_FIGURES = ", ".join(f"t.{n}" for n in FIGURE_NAMES)
_NEW_FIGURES = ", ".join(f"EXCLUDED.{n}" for n in FIGURE_NAMES)
_COUNTER_ARRAYS = ", ".join(f"%({n})s::int[]" for n in COUNTER_NAMES)

# The window's events counted per restaurant, UTC hour and traffic class: one read-only statement,
# which PostgreSQL may run in parallel (a statement that writes never is); hashed, not sorted
# (``WORK_MEM`` and the statistics of migration 006). Events of restaurants that no longer exist
# (or of none) are dropped by the writing statement, per counted row rather than per event.
_COUNTERS = f"""
SELECT e.restaurant_id, date_trunc('hour', e.occurred_at, 'UTC') AS hour, {SYNTHETIC_SQL} AS synthetic,
       {COUNTERS_SQL}
  FROM observability_events e
 WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
 GROUP BY 1, 2, 3
"""

# Both traffic classes of the window, in one statement: the counters (above), the slots' covers
# summed per class, each class upserted into its own table; rows of the window that no longer
# have anything behind them (e.g. after ``capctl cleanup`` removed synthetic data) are deleted.
# Counting the events inside this statement, once per class, through the (restaurant, time)
# index in restaurant order, was most of the run at a million events.
_CLASS = """
), computed_{name} AS (
    SELECT coalesce(c.restaurant_id, k.restaurant_id) AS restaurant_id, coalesce(c.hour, k.hour) AS hour,
           {counters_zero},
           coalesce(k.{name}_covers, 0) AS covers_booked, coalesce(k.capacity_covers, 0) AS capacity_covers
      FROM (SELECT * FROM counters WHERE synthetic = {synthetic}) c
      FULL JOIN capacity k ON k.restaurant_id = c.restaurant_id AND k.hour = c.hour
     -- live rows for every open hour; synthetic rows only where there was synthetic traffic
     WHERE c.restaurant_id IS NOT NULL OR NOT {synthetic} OR k.{name}_covers > 0
), figures_{name} AS (
    SELECT *,
           CASE WHEN requests > 0 THEN round(conflicts::numeric / requests, 6) END AS conflict_rate,
           CASE WHEN requests > 0 THEN round(successes::numeric / requests, 6) END AS success_rate,
           CASE WHEN capacity_covers > 0 THEN round(covers_booked::numeric / capacity_covers, 6) END AS utilization
      FROM computed_{name}
), upserted_{name} AS (
    INSERT INTO {table} AS t (restaurant_id, hour, {figures}, updated_at)
    SELECT restaurant_id, hour, {figures}, now() FROM figures_{name}
    ON CONFLICT (restaurant_id, hour) DO UPDATE SET {set_figures}, updated_at = EXCLUDED.updated_at
     WHERE ({old_figures}) IS DISTINCT FROM ({new_figures})
    RETURNING 1
), removed_{name} AS (
    DELETE FROM {table} t
     WHERE t.hour >= %(start)s AND t.hour < %(end)s
       AND NOT EXISTS (SELECT 1 FROM figures_{name} f WHERE f.restaurant_id = t.restaurant_id AND f.hour = t.hour)
    RETURNING 1"""


def _class_ctes(name: str, table: str, synthetic: bool) -> str:
    return _CLASS.format(
        name=name,
        table=sql.Identifier(table).as_string(),
        synthetic="true" if synthetic else "false",
        counters_zero=_COUNTERS_ZERO,
        figures=_FIGURES,
        set_figures=_SET_FIGURES,
        old_figures=_OLD_FIGURES,
        new_figures=_NEW_FIGURES,
    )


_ROLLUP = f"""
WITH slots AS (
    SELECT * FROM unnest(%(slot_restaurants)s::uuid[], %(slot_hours)s::timestamptz[], %(slot_dates)s::date[],
                         %(slot_times)s::time[], %(slot_caps)s::int[])
           AS s (restaurant_id, hour, slot_date, slot_time, max_covers)
), capacity AS (
    SELECT s.restaurant_id, s.hour, sum(s.max_covers)::int AS capacity_covers,
           coalesce(sum(b.live), 0)::int AS live_covers, coalesce(sum(b.synthetic), 0)::int AS synthetic_covers
      FROM slots s
      LEFT JOIN LATERAL (
            SELECT sum(bk.party_size) FILTER (WHERE bk.source <> {sql_text(LOAD_TEST_SOURCE)}) AS live,
                   sum(bk.party_size) FILTER (WHERE bk.source = {sql_text(LOAD_TEST_SOURCE)}) AS synthetic
              FROM bookings bk
             WHERE bk.restaurant_id = s.restaurant_id AND bk.booking_date = s.slot_date
               AND bk.booking_time = s.slot_time AND bk.status = 'confirmed') b ON true
     GROUP BY s.restaurant_id, s.hour
), counters AS (
    SELECT * FROM unnest(%(restaurants)s::uuid[], %(hours)s::timestamptz[], %(synthetic)s::bool[],
                         {_COUNTER_ARRAYS})
           AS c (restaurant_id, hour, synthetic, {", ".join(COUNTER_NAMES)})
     -- events outlive a deleted restaurant: a row needs a restaurant to belong to
     WHERE EXISTS (SELECT 1 FROM restaurants r WHERE r.id = c.restaurant_id)
{_class_ctes("live", LIVE_TABLE, False)}
{_class_ctes("synthetic", SYNTHETIC_TABLE, True)}
)
SELECT (SELECT count(*) FROM figures_live)::int AS live_rows,
       (SELECT count(*) FROM upserted_live)::int AS live_changed,
       (SELECT count(*) FROM removed_live)::int AS live_removed,
       (SELECT count(*) FROM figures_synthetic)::int AS synthetic_rows,
       (SELECT count(*) FROM upserted_synthetic)::int AS synthetic_changed,
       (SELECT count(*) FROM removed_synthetic)::int AS synthetic_removed
"""

_HOUR_TOTALS = """
SELECT count(*)::int AS restaurants,
       coalesce(sum(requests), 0)::int AS requests, coalesce(sum(successes), 0)::int AS successes,
       coalesce(sum(conflicts), 0)::int AS conflicts, coalesce(sum(retry_exhausted), 0)::int AS retry_exhausted,
       coalesce(sum(covers_booked), 0)::int AS covers_booked,
       coalesce(sum(capacity_covers), 0)::int AS capacity_covers
  FROM {table} WHERE hour = %(hour)s
"""

_RESTAURANTS = "SELECT id, timezone FROM restaurants ORDER BY id"

_PURGE = """
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT %(batch)s))
"""


@dataclass(frozen=True, slots=True)
class SlotCapacity:
    restaurant_id: UUID
    hour: dt.datetime  # UTC hour the slot starts in
    date: dt.date  # local
    time: dt.time  # local
    max_covers: int


@dataclass(frozen=True, slots=True)
class HourTotals(CamelJson):
    """Live figures of one hour over every restaurant: what the handler emits as EMF metrics."""

    hour: UtcSeconds
    restaurants: int
    requests: int
    successes: int
    conflicts: int
    retry_exhausted: int
    covers_booked: int
    capacity_covers: int

    @computed_field
    @property
    def success_rate(self) -> Rounded:
        return figures.success_rate(self.successes, self.requests)

    @computed_field
    @property
    def conflict_rate(self) -> Rounded:
        return figures.conflict_rate(self.conflicts, self.requests)

    @computed_field
    @property
    def utilization(self) -> Rounded:
        return figures.utilization(self.covers_booked, self.capacity_covers)


@dataclass(frozen=True, slots=True)
class TableResult:
    rows: int  # rows the window holds now
    changed: int  # rows inserted or whose figures changed
    removed: int  # rows of the window with nothing behind them any more


@dataclass(frozen=True, slots=True)
class RollupSummary(CamelJson):
    window_start: UtcSeconds
    window_end: UtcSeconds
    hours: int
    live: TableResult
    synthetic: TableResult
    purged_idempotency_keys: int
    last_hour: HourTotals
    skipped_restaurants: list[str] = field(default_factory=list)  # unknown time zone


def window(now: dt.datetime, hours: int) -> tuple[dt.datetime, dt.datetime]:
    """The ``hours`` whole UTC hours before ``now``'s hour, plus that hour so far: [start, end)."""
    if hours < 1:
        raise ValueError("hours must be at least 1")
    current = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return current - hours * HOUR, current + HOUR


def grid_in_window(
    tz: ZoneInfo, grid: Sequence[dt.time], start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.date, dt.time, dt.datetime]]:
    """(local date, local time, UTC hour) of every grid time whose local start falls in
    [start, end). It depends on the time zone and the grid alone, so restaurants that share both
    share it: the roll-up resolves it once per (time zone, slot length), not per restaurant."""
    first = start.astimezone(tz).date()
    last = (end - dt.timedelta(microseconds=1)).astimezone(tz).date()
    found: list[tuple[dt.date, dt.time, dt.datetime]] = []
    day = first
    while day <= last:
        for slot_time in grid:
            # fold=0: an ambiguous local time (clocks going back) counts once, at its first instant.
            local = dt.datetime.combine(day, slot_time, tzinfo=tz)
            instant = local.astimezone(dt.UTC)
            if not start <= instant < end:
                continue
            if instant.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
                continue  # skipped by the clocks going forward: that slot does not happen
            found.append((day, slot_time, instant.replace(minute=0, second=0, microsecond=0)))
        day += dt.timedelta(days=1)
    return found


def _finite_slots(
    restaurant_id: UUID, rules: RestaurantRules, in_window: Iterable[tuple[dt.date, dt.time, dt.datetime]]
) -> list[SlotCapacity]:
    found: list[SlotCapacity] = []
    for day, slot_time, hour in in_window:
        max_covers = rules.capacity(day, slot_time).max_covers
        if max_covers:  # None (unlimited) and 0 (closed) have no utilization
            found.append(SlotCapacity(restaurant_id, hour, day, slot_time, max_covers))
    return found


def slots_in_window(
    restaurant_id: UUID, rules: RestaurantRules, tz: ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[SlotCapacity]:
    """Slots of finite, non-zero capacity whose local start falls in [start, end), by UTC hour."""
    return _finite_slots(restaurant_id, rules, grid_in_window(tz, rules.grid(), start, end))


def window_slots(conn: DictConnection, start: dt.datetime, end: dt.datetime) -> tuple[list[SlotCapacity], list[str]]:
    """Every restaurant's finite-capacity slots starting in the window; and restaurants skipped."""
    restaurants = conn.execute(_RESTAURANTS).fetchall()
    if not restaurants:
        return [], []
    # Local dates of the window in any time zone lie within a day of its UTC dates.
    day = (start - dt.timedelta(days=1)).date()
    dates = []
    while day <= (end + dt.timedelta(days=1)).date():
        dates.append(day)
        day += dt.timedelta(days=1)
    rules = load_rules(conn, [r["id"] for r in restaurants], dates)
    slots: list[SlotCapacity] = []
    skipped: list[str] = []
    # Each restaurant resolving every grid time of the window's days on its own took 19-22 ms of a
    # 50 ms run at 100 restaurants (7 ms shared); it grows with restaurants, this with time zones.
    grids: dict[tuple[str, int], list[tuple[dt.date, dt.time, dt.datetime]]] = {}
    for r in restaurants:
        try:
            tz = ZoneInfo(r["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            skipped.append(str(r["id"]))
            continue
        restaurant_rules = rules[r["id"]]
        key = (r["timezone"], restaurant_rules.slot_minutes)
        if key not in grids:
            grids[key] = grid_in_window(tz, restaurant_rules.grid(), start, end)
        slots.extend(_finite_slots(r["id"], restaurant_rules, grids[key]))
    return slots, skipped


def _rollup_tables(
    conn: DictConnection, slots: list[SlotCapacity], start: dt.datetime, end: dt.datetime
) -> tuple[TableResult, TableResult]:
    """The live and the synthetic table of the window: the events counted, then both written.

    Neither statement is ever prepared (``prepare=False``), however often a warm connection runs
    it: a prepared statement is soon planned once for any window, and that plan guesses a narrow
    one (the events read through the time index, no parallel workers, small arrays)."""
    counters = conn.execute(_COUNTERS, {"start": start, "end": end}, prepare=False).fetchall()
    row = conn.execute(
        _ROLLUP,
        {
            "restaurants": [c["restaurant_id"] for c in counters],
            "hours": [c["hour"] for c in counters],
            "synthetic": [c["synthetic"] for c in counters],
            **{n: [c[n] for c in counters] for n in COUNTER_NAMES},
            "slot_restaurants": [s.restaurant_id for s in slots],
            "slot_hours": [s.hour for s in slots],
            "slot_dates": [s.date for s in slots],
            "slot_times": [s.time for s in slots],
            "slot_caps": [s.max_covers for s in slots],
            "start": start,
            "end": end,
        },
        prepare=False,
    ).fetchone()
    assert row is not None
    return (
        TableResult(rows=row["live_rows"], changed=row["live_changed"], removed=row["live_removed"]),
        TableResult(rows=row["synthetic_rows"], changed=row["synthetic_changed"], removed=row["synthetic_removed"]),
    )


def hour_totals(conn: DictConnection, hour: dt.datetime, table: str = LIVE_TABLE) -> HourTotals:
    """The figures of one hour over every restaurant, from either roll-up table."""
    statement = sql.SQL(_HOUR_TOTALS).format(table=sql.Identifier(table))
    row = conn.execute(statement, {"hour": hour}).fetchone()
    assert row is not None
    return HourTotals(hour=hour, **row)


def purge_idempotency_keys(conn: DictConnection) -> int:
    """Delete expired idempotency records in small batches (short locks next to the booking path)."""
    purged = 0
    for _ in range(PURGE_MAX_BATCHES):
        deleted = conn.execute(_PURGE, {"batch": PURGE_BATCH}).rowcount
        purged += deleted
        if deleted < PURGE_BATCH:
            break
    return purged


def run_rollup(conn: DictConnection, *, hours: int, now: dt.datetime | None = None) -> RollupSummary:
    """Re-aggregate the trailing window; purge expired idempotency records."""
    moment = now or dt.datetime.now(dt.UTC)
    start, end = window(moment, hours)
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        # Two overlapping runs (a retried schedule, a manual `capctl rollup`) take turns.
        conn.execute("SELECT pg_advisory_xact_lock(%(id)s)", {"id": _ROLLUP_LOCK_ID})
        slots, skipped = window_slots(conn, start, end)
        live, synthetic = _rollup_tables(conn, slots, start, end)
    last_complete = end - 2 * HOUR
    totals = hour_totals(conn, last_complete)
    purged = purge_idempotency_keys(conn)
    return RollupSummary(
        window_start=start,
        window_end=end,
        hours=hours,
        live=live,
        synthetic=synthetic,
        purged_idempotency_keys=purged,
        last_hour=totals,
        skipped_restaurants=skipped,
    )
