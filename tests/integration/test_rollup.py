"""The hourly roll-up on a real PostgreSQL: counters, rates, utilization by the restaurant's time
zone, idempotence, late events, load-test traffic apart, idempotency-key purge."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from capacity import rollup
from capacity.reconcile import load_rules
from capacity.rollup import run_rollup
from tests.alerting import OTHER_ID, insert_booking, insert_event, other_restaurant
from tests.support import RESTAURANT_ID, UNLIMITED_DATE

# Friday 2030-06-14, 19:30 UTC = 20:30 in London (BST). With 3 hours the window is
# [16:00, 20:00) UTC: London slots 17:00-20:45 local, four 20-cover slots per hour.
NOW = dt.datetime(2030, 6, 14, 19, 30, tzinfo=dt.UTC)
DATE = dt.date(2030, 6, 14)


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2030, 6, 14, hour, minute, tzinfo=dt.UTC)


def rows(conn: Any, table: str = "capacity_metrics_hourly") -> list[dict[str, Any]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY restaurant_id, hour").fetchall()


def row(
    conn: Any, hour: dt.datetime, table: str = "capacity_metrics_hourly", restaurant_id: str = RESTAURANT_ID
) -> dict[str, Any]:
    found = conn.execute(
        f"SELECT * FROM {table} WHERE restaurant_id = %s AND hour = %s", (restaurant_id, hour)
    ).fetchone()
    assert found is not None, f"no row for {hour}"
    return found


def counters(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in rollup.FIGURE_NAMES}


def plant_hour_17(conn: Any) -> None:
    """Twelve requests in the 17:00 UTC hour, five of which met a conflict."""
    h = at(17, 20)
    insert_event(conn, "booking.success", at=h, count=6)
    # two that retried once, each with its conflict event
    insert_event(conn, "booking.conflict", at=h, count=2, attempts=2, attempt=1)
    insert_event(conn, "booking.success", at=h, count=2, attempts=2)
    # a lost race on the first attempt: refusal + overbook_prevented
    insert_event(conn, "booking.capacity_exceeded", at=h, reason="full")
    insert_event(conn, "booking.overbook_prevented", at=h)
    # a lost race on the third attempt (counted once, through its attempts)
    insert_event(conn, "booking.conflict", at=h, count=2, attempts=3)
    insert_event(conn, "booking.capacity_exceeded", at=h, attempts=3, reason="full")
    insert_event(conn, "booking.overbook_prevented", at=h, attempts=3)
    # a closed slot
    insert_event(conn, "booking.capacity_exceeded", at=h, reason="closed")
    # retries exhausted after four failures
    insert_event(conn, "booking.conflict", at=h, count=4, attempts=4)
    insert_event(conn, "booking.retry_exhausted", at=h, attempts=4)
    insert_event(conn, "booking.cancelled", at=h)
    # covers of the 18:00 and 18:30 local slots (17:00 UTC)
    insert_booking(conn, date=DATE, time="18:00", party_size=4)
    insert_booking(conn, date=DATE, time="18:00", party_size=6)
    insert_booking(conn, date=DATE, time="18:30", party_size=2)
    insert_booking(conn, date=DATE, time="18:15", party_size=8, status="cancelled")


class TestFigures:
    def test_counters_rates_and_utilization_of_an_hour(self, seeded_db, conn):
        plant_hour_17(conn)
        summary = run_rollup(conn, hours=3, now=NOW)
        assert (summary.window_start, summary.window_end) == (at(16), at(20))
        assert counters(row(conn, at(17))) == {
            "requests": 12,
            "successes": 8,
            "capacity_exceeded": 3,
            "slot_closed": 1,
            "retry_exhausted": 1,
            "overbook_prevented": 2,
            "retried_failures": 8,
            "conflicts": 5,
            "cancellations": 1,
            "overbook_detected": 0,
            "conflict_rate": Decimal("0.416667"),
            "success_rate": Decimal("0.666667"),
            "covers_booked": 12,
            "capacity_covers": 80,
            "utilization": Decimal("0.150000"),
        }

    def test_every_open_hour_of_the_window_has_a_live_row(self, seeded_db, conn):
        plant_hour_17(conn)
        summary = run_rollup(conn, hours=3, now=NOW)
        assert [
            (r["hour"], r["requests"], r["capacity_covers"], r["utilization"], r["conflict_rate"]) for r in rows(conn)
        ] == [
            (at(16), 0, 80, Decimal("0.000000"), None),
            (at(17), 12, 80, Decimal("0.150000"), Decimal("0.416667")),
            (at(18), 0, 80, Decimal("0.000000"), None),
            (at(19), 0, 80, Decimal("0.000000"), None),
        ]
        assert (summary.live.rows, summary.live.changed, summary.live.removed) == (4, 4, 0)

    def test_hours_without_finite_capacity_have_no_utilization(self, seeded_db, conn):
        # UNLIMITED_DATE has a whole-day "no limit" override: nothing to divide by.
        day = dt.date.fromisoformat(UNLIMITED_DATE)
        insert_event(conn, "booking.success", at=dt.datetime.combine(day, dt.time(18, 5), tzinfo=dt.UTC), count=2)
        run_rollup(conn, hours=1, now=dt.datetime.combine(day, dt.time(18, 30), tzinfo=dt.UTC))
        [only] = rows(conn)
        assert (only["requests"], only["capacity_covers"], only["utilization"]) == (2, 0, None)
        assert only["success_rate"] == Decimal("1.000000")

    def test_last_complete_hour_totals(self, seeded_db, conn):
        insert_event(conn, "booking.success", at=at(18, 10), count=3)
        insert_event(conn, "booking.success", at=at(18, 11), attempts=2)
        insert_booking(conn, date=DATE, time="19:15", party_size=8)  # 18:15 UTC
        summary = run_rollup(conn, hours=3, now=NOW)
        assert summary.as_json()["lastHour"] == {
            "hour": "2030-06-14T18:00:00Z",
            "restaurants": 1,
            "requests": 4,
            "successes": 4,
            "conflicts": 1,
            "retryExhausted": 0,
            "coversBooked": 8,
            "capacityCovers": 80,
            "successRate": 1.0,
            "conflictRate": 0.25,
            "utilization": 0.1,
        }

    def test_time_zones_place_slots_in_their_utc_hours(self, seeded_db, conn, seed):
        seed(other_restaurant("America/New_York", {"weekdays": [5], "start": "17:00", "end": "18:00", "maxCovers": 10}))
        insert_booking(conn, restaurant_id=OTHER_ID, date=DATE, time="17:30", party_size=5)
        # 22:10 UTC: window [19:00, 23:00). New York 17:00-17:45 EDT is 21:00 UTC.
        run_rollup(conn, hours=3, now=dt.datetime(2030, 6, 14, 22, 10, tzinfo=dt.UTC))
        other = [
            (r["hour"], r["capacity_covers"], r["covers_booked"])
            for r in rows(conn)
            if str(r["restaurant_id"]) == OTHER_ID
        ]
        assert other == [(at(21), 40, 5)]
        london = [(r["hour"], r["capacity_covers"]) for r in rows(conn) if str(r["restaurant_id"]) == RESTAURANT_ID]
        assert london == [(at(19), 80), (at(20), 80)]  # 20:00-21:45 BST

    def test_a_restaurant_with_an_unknown_time_zone_is_skipped_not_fatal(self, seeded_db, conn, seed):
        seed(other_restaurant("UTC", {"weekdays": [5], "start": "17:00", "end": "18:00", "maxCovers": 10}))
        conn.execute("UPDATE restaurants SET timezone = 'Mars/Olympus' WHERE id = %s", (OTHER_ID,))
        summary = run_rollup(conn, hours=3, now=NOW)
        assert summary.skipped_restaurants == [OTHER_ID]
        assert {str(r["restaurant_id"]) for r in rows(conn)} == {RESTAURANT_ID}

    def test_no_restaurants_no_rows(self, db_url, conn):
        summary = run_rollup(conn, hours=2, now=NOW)
        assert (summary.live.rows, summary.synthetic.rows, summary.last_hour.requests) == (0, 0, 0)


# (time zone, slot minutes, weekly ranges with their covers): two London restaurants share a
# grid with different rules, a third has another grid; the others have odd offsets, a 30-minute
# daylight saving shift (Lord Howe) and a day the clocks skipped (Apia, 2011-12-30).
AWKWARD = [
    ("Europe/London", 15, [("00:00", "00:00", 10)]),
    ("Europe/London", 15, [("00:00", "12:00", None), ("12:00", "00:00", 4), ("18:00", "19:00", 0)]),
    ("Europe/London", 20, [("00:00", "00:00", 7)]),
    ("Australia/Lord_Howe", 30, [("00:00", "00:00", 5)]),
    ("Pacific/Apia", 60, [("00:00", "00:00", 3)]),
    ("Asia/Kathmandu", 15, [("00:00", "00:00", 2)]),
    ("America/St_Johns", 45, [("01:30", "23:00", 6)]),
]
WINDOWS = [
    dt.datetime(2030, 3, 31, 0, tzinfo=dt.UTC),  # London's clocks go forward at 01:00 UTC
    dt.datetime(2030, 10, 27, 0, tzinfo=dt.UTC),  # and back
    dt.datetime(2030, 4, 6, 14, tzinfo=dt.UTC),  # Lord Howe back by 30 minutes at 15:00 UTC
    dt.datetime(2011, 12, 30, 8, tzinfo=dt.UTC),  # Apia from UTC-10 to UTC+14 at 10:00 UTC
    dt.datetime(2030, 6, 14, 16, tzinfo=dt.UTC),
]


def _slots_one_by_one(conn: Any, start: dt.datetime, end: dt.datetime) -> list[rollup.SlotCapacity]:
    """The window's slots as the roll-up resolved them before it shared the work per time zone
    and grid: every grid time of every restaurant, one by one."""
    restaurants = conn.execute("SELECT id, timezone FROM restaurants ORDER BY id").fetchall()
    first, last = (start - dt.timedelta(days=1)).date(), (end + dt.timedelta(days=1)).date()
    dates = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    rules = load_rules(conn, [r["id"] for r in restaurants], dates)
    found = []
    for r in restaurants:
        tz, own = ZoneInfo(r["timezone"]), rules[r["id"]]
        day = start.astimezone(tz).date()
        while day <= (end - dt.timedelta(microseconds=1)).astimezone(tz).date():
            for slot_time in own.grid():
                local = dt.datetime.combine(day, slot_time, tzinfo=tz)
                instant = local.astimezone(dt.UTC)
                happens = instant.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None)
                covers = own.capacity(day, slot_time).max_covers
                if start <= instant < end and happens and covers:
                    hour = instant.replace(minute=0, second=0, microsecond=0)
                    found.append(rollup.SlotCapacity(r["id"], hour, day, slot_time, covers))
            day += dt.timedelta(days=1)
    return found


def test_window_slots_are_the_slots_of_each_restaurant_resolved_on_its_own(conn):
    """The grid of a (time zone, slot length) is resolved once for every restaurant that has it:
    the same slots, hours and capacities as resolving each restaurant's own grid."""
    for n, (timezone, minutes, ranges) in enumerate(AWKWARD):
        rid = f"a0000000-0000-4000-8000-{n:012d}"
        conn.execute(
            "INSERT INTO restaurants (id, name, timezone, slot_minutes) VALUES (%s, %s, %s, %s)",
            (rid, f"Awkward {n}", timezone, minutes),
        )
        for weekday in range(1, 8):
            for start_time, end_time, covers in ranges:
                conn.execute(
                    "INSERT INTO weekly_rules (restaurant_id, weekday, start_time, end_time, max_covers)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (rid, weekday, start_time, end_time, covers),
                )
    # an override on one London restaurant only: shared grids must not share capacities
    conn.execute(
        "INSERT INTO capacity_overrides (restaurant_id, override_date, start_time, end_time, max_covers)"
        " VALUES ('a0000000-0000-4000-8000-000000000000', '2030-06-14', '17:00', '19:00', 1)"
    )
    total, restaurants = 0, set()
    for start in WINDOWS:
        end = start + 4 * rollup.HOUR
        shared, skipped = rollup.window_slots(conn, start, end)
        one_by_one = _slots_one_by_one(conn, start, end)
        key = lambda s: (str(s.restaurant_id), s.date, s.time)  # noqa: E731
        assert sorted(shared, key=key) == sorted(one_by_one, key=key), start
        assert skipped == []
        total += len(shared)
        restaurants |= {s.restaurant_id for s in shared}
    assert total > 300 and len(restaurants) == len(AWKWARD)  # the comparison compared something


class TestReaggregation:
    def test_running_twice_writes_identical_rows(self, seeded_db, conn):
        plant_hour_17(conn)
        run_rollup(conn, hours=3, now=NOW)
        first = rows(conn)
        again = run_rollup(conn, hours=3, now=NOW)
        assert rows(conn) == first  # updated_at included: nothing was rewritten
        assert (again.live.rows, again.live.changed, again.live.removed) == (4, 0, 0)

    def test_a_late_event_is_counted_by_the_next_run(self, seeded_db, conn):
        plant_hour_17(conn)
        run_rollup(conn, hours=3, now=NOW)
        before = {r["hour"]: r for r in rows(conn)}
        insert_event(conn, "booking.success", at=at(17, 59))
        later = run_rollup(conn, hours=3, now=NOW + dt.timedelta(minutes=20))
        after = {r["hour"]: r for r in rows(conn)}
        assert (after[at(17)]["requests"], after[at(17)]["successes"]) == (13, 9)
        assert after[at(17)]["success_rate"] == Decimal("0.692308")
        assert after[at(17)]["updated_at"] > before[at(17)]["updated_at"]
        assert all(after[h] == before[h] for h in (at(16), at(18), at(19)))
        assert later.live.changed == 1

    def test_rows_outside_the_window_are_left_alone(self, seeded_db, conn):
        insert_event(conn, "booking.success", at=at(12, 30), count=2)
        run_rollup(conn, hours=1, now=at(12, 40))
        noon = row(conn, at(12))
        insert_event(conn, "booking.success", at=at(15, 59))  # before the next window
        run_rollup(conn, hours=3, now=NOW)
        assert row(conn, at(12)) == noon
        assert (
            conn.execute("SELECT count(*) AS n FROM capacity_metrics_hourly WHERE hour = %s", (at(15),)).fetchone()["n"]
            == 0
        )

    def test_rows_with_nothing_behind_them_any_more_are_removed(self, seeded_db, conn):
        insert_event(conn, "booking.success", at=at(18, 5), count=3, source="load-test")
        insert_booking(conn, date=DATE, time="18:00", party_size=4, source="load-test")
        run_rollup(conn, hours=3, now=NOW)
        assert [r["hour"] for r in rows(conn, rollup.SYNTHETIC_TABLE)] == [at(17), at(18)]
        # what `capctl cleanup --source load-test` leaves behind: nothing synthetic
        conn.execute("DELETE FROM observability_events WHERE metadata ->> 'source' = 'load-test'")
        conn.execute("DELETE FROM bookings WHERE source = 'load-test'")
        summary = run_rollup(conn, hours=3, now=NOW)
        assert rows(conn, rollup.SYNTHETIC_TABLE) == []
        assert summary.synthetic.removed == 2


class TestTrafficClasses:
    def test_load_test_traffic_is_kept_apart_from_live(self, seeded_db, conn):
        insert_event(conn, "booking.success", at=at(18, 5), count=2)
        insert_event(conn, "booking.success", at=at(18, 6), count=30, source="load-test", runId="run-1")
        insert_event(conn, "booking.capacity_exceeded", at=at(18, 7), count=10, source="load-test", reason="full")
        insert_booking(conn, date=DATE, time="19:00", party_size=3)
        insert_booking(conn, date=DATE, time="19:00", party_size=12, source="load-test")
        summary = run_rollup(conn, hours=3, now=NOW)
        live = row(conn, at(18))
        assert (live["requests"], live["successes"], live["covers_booked"], live["utilization"]) == (
            2,
            2,
            3,
            Decimal("0.037500"),
        )
        synthetic = row(conn, at(18), rollup.SYNTHETIC_TABLE)
        assert (
            synthetic["requests"],
            synthetic["successes"],
            synthetic["capacity_exceeded"],
            synthetic["covers_booked"],
            synthetic["capacity_covers"],
        ) == (40, 30, 10, 12, 80)
        assert synthetic["success_rate"] == Decimal("0.750000")
        # Synthetic rows only where there was synthetic traffic.
        assert [r["hour"] for r in rows(conn, rollup.SYNTHETIC_TABLE)] == [at(18)]
        assert (summary.live.rows, summary.synthetic.rows) == (4, 1)
        assert summary.last_hour.requests == 2

    def test_events_of_unknown_restaurants_or_none_are_ignored(self, seeded_db, conn):
        insert_event(conn, "booking.success", at=at(18, 5), restaurant_id=OTHER_ID)
        conn.execute(
            "INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata) VALUES (%s, NULL, %s, %s)",
            ("booking.success", at(18, 5), json.dumps({"source": "web"})),
        )
        run_rollup(conn, hours=3, now=NOW)
        assert row(conn, at(18))["requests"] == 0
        assert {str(r["restaurant_id"]) for r in rows(conn)} == {RESTAURANT_ID}

    def test_malformed_attempts_count_as_one(self, seeded_db, conn):
        insert_event(conn, "booking.success", at=at(18, 5), attempts="two")
        insert_event(conn, "booking.success", at=at(18, 5), attempts=None)
        run_rollup(conn, hours=3, now=NOW)
        assert (row(conn, at(18))["requests"], row(conn, at(18))["conflicts"]) == (2, 0)


def idempotency_key(conn: Any, key: str, *, expires: str) -> None:
    """A stored 201 under ``key`` that expires ``expires`` from now (negative: already expired)."""
    conn.execute(
        "INSERT INTO idempotency_keys (tenant, key, fingerprint, status_code, response, expires_at)"
        " VALUES ('t', %s, 'f', 201, '{}', now() + %s::interval)",
        (key, expires),
    )


class TestPurge:
    def test_expired_idempotency_keys_are_purged(self, seeded_db, conn, monkeypatch):
        monkeypatch.setattr(rollup, "PURGE_BATCH", 2)
        for n in range(5):
            idempotency_key(conn, f"old-{n}", expires="-1 minute")
        idempotency_key(conn, "fresh", expires="1 day")
        summary = run_rollup(conn, hours=1, now=NOW)
        assert summary.purged_idempotency_keys == 5
        assert [r["key"] for r in conn.execute("SELECT key FROM idempotency_keys")] == ["fresh"]

    def test_one_run_purges_a_bounded_amount(self, seeded_db, conn, monkeypatch):
        monkeypatch.setattr(rollup, "PURGE_BATCH", 2)
        monkeypatch.setattr(rollup, "PURGE_MAX_BATCHES", 2)
        for n in range(5):
            idempotency_key(conn, f"old-{n}", expires="-1 minute")
        assert run_rollup(conn, hours=1, now=NOW).purged_idempotency_keys == 4
        assert run_rollup(conn, hours=1, now=NOW).purged_idempotency_keys == 1


def test_window_needs_an_hour(seeded_db, conn):
    with pytest.raises(ValueError, match="at least 1"):
        run_rollup(conn, hours=0, now=NOW)
