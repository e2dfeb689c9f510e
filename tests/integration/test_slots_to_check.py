"""The alert check's first pass (``capacity.reconcile.slots_to_check``) flags exactly what the
full reconciliation (``slot_states``) flags, over rules, overrides and bookings of every awkward
kind, against the real PostgreSQL; and the alert check counts every booked slot it checked."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from capacity.alerts import AlertChecker
from capacity.reconcile import SlotState, slot_states, slots_to_check
from capacity.scheduled_settings import AlertSettings

pytestmark = pytest.mark.integration

TODAY = dt.date.today()
DAYS = 21


def _rid(n: int) -> uuid.UUID:
    return uuid.UUID(int=0xC0FFEE0000 + n)


# weekday, start, end, max_covers: overlapping rules (the lowest wins), an end of 00:00, a start
# with seconds (compared to the minute), unlimited (NULL) and closed (0) rules, weekdays without
# any rule (closed)
WEEKLY = [
    *[(wd, "12:00", "15:00", 12) for wd in (1, 2, 3, 4, 5)],
    *[(wd, "17:00", "22:00", 20) for wd in (1, 2, 3, 4, 5, 6)],
    (2, "19:00", "20:00", 6),
    (3, "18:00", "19:00", None),
    (4, "22:00", "00:00", 5),
    (5, "12:00:30", "13:00", 3),
    (6, "20:00", "21:00", 0),
    (6, "17:00", "22:00", None),
]


def _seed(conn: Any) -> None:
    for n, tz in ((0, "UTC"), (1, "Europe/Madrid"), (2, "UTC")):
        conn.execute("INSERT INTO restaurants (id, name, timezone) VALUES (%s, %s, %s)", (_rid(n), f"Pass {n}", tz))
    for n in (0, 1):  # restaurant 2 has no rules at all: every slot is closed
        for wd, start, end, cap in WEEKLY:
            conn.execute(
                "INSERT INTO weekly_rules (restaurant_id, weekday, start_time, end_time, max_covers)"
                " VALUES (%s, %s, %s, %s, %s)",
                (_rid(n), wd, start, end, cap),
            )
    overrides = [
        (0, 3, "19:00", "19:30", 2),
        (0, 3, "19:00", "21:00", 50),
        (0, 5, None, None, 0),
        (0, 8, None, None, None),
        (1, 4, None, None, 7),
        (1, 4, "12:00", "12:15", None),
    ]
    for n, day, start, end, cap in overrides:
        conn.execute(
            "INSERT INTO capacity_overrides (restaurant_id, override_date, start_time, end_time, max_covers)"
            " VALUES (%s, %s, %s, %s, %s)",
            (_rid(n), TODAY + dt.timedelta(days=day), start, end, cap),
        )
    rnd = random.Random(11)
    times = [dt.time(h, m) for h in range(11, 24) for m in (0, 15, 30, 45)] + [dt.time(0, 0)]
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(1500):
        n = rnd.choice((0, 0, 1, 1, 2))
        guarded = rnd.random() < 0.7
        accepted = rnd.choice((None, 2, 4, 6, 12, 20, 40)) if guarded else None
        conn.execute(
            "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, guarded,"
            " accepted_max_covers, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                uuid.UUID(int=i + 1),
                _rid(n),
                TODAY + dt.timedelta(days=rnd.randrange(-2, DAYS)),
                rnd.choice(times),
                rnd.randint(1, 8),
                "cancelled" if rnd.random() < 0.1 else "confirmed",
                guarded,
                accepted,
                # ties on created_at too: the latest booking is then the greatest id
                created + dt.timedelta(minutes=rnd.randrange(0, 900)),
            ),
        )


def _key(s: SlotState) -> tuple[uuid.UUID, dt.date, dt.time]:
    return (s.restaurant_id, s.date, s.time)


def test_the_first_pass_flags_what_the_full_reconciliation_flags(conn):
    _seed(conn)
    ranges = {
        _rid(0): (TODAY, TODAY + dt.timedelta(days=DAYS)),
        _rid(1): (TODAY - dt.timedelta(days=1), TODAY + dt.timedelta(days=10)),
        _rid(2): (TODAY, TODAY + dt.timedelta(days=3)),
    }
    every = [s for s in slot_states(conn) if ranges[s.restaurant_id][0] <= s.date <= ranges[s.restaurant_id][1]]
    flagged = [s for s in every if s.over_capacity or s.below_bookings]
    # the data holds both conditions, and slots with neither
    assert any(s.over_capacity for s in flagged) and any(s.below_bookings for s in flagged)
    assert len(flagged) < len(every)

    checked = slots_to_check(conn, ranges)

    assert checked.slots == len(every)
    found = [s for s in checked.states if s.over_capacity or s.below_bookings]
    assert [_key(s) for s in found] == [_key(s) for s in flagged]
    # each state it builds is the full reconciliation's state of that slot, to the booking ids
    by_key = {_key(s): s for s in every}
    assert all(by_key[_key(s)] == s for s in checked.states)
    # and it passed on far fewer slots than it counted
    assert len(checked.states) < len(every)


def test_no_restaurants_no_slots(conn):
    assert slots_to_check(conn, {}).slots == 0
    _seed(conn)
    assert slots_to_check(conn, {_rid(0): (TODAY + dt.timedelta(days=400), TODAY + dt.timedelta(days=401))}) == (
        slots_to_check(conn, {})
    )


def test_the_alert_check_counts_every_booked_slot_of_the_window(conn):
    _seed(conn)
    now = dt.datetime.now(dt.UTC)
    config = AlertSettings.from_env({"ENVIRONMENT": "test", "RECONCILE_FUTURE_DAYS": "7"})
    summary = AlertChecker(config, [], now=lambda: now).run(conn, dry_run=True)
    zones = {_rid(0): "UTC", _rid(1): "Europe/Madrid", _rid(2): "UTC"}
    expected = []
    for s in slot_states(conn):
        today = now.astimezone(ZoneInfo(zones[s.restaurant_id])).date()
        if today - dt.timedelta(days=1) <= s.date <= today + dt.timedelta(days=7):
            expected.append(s)
    assert summary.slots_checked == len(expected)
    # an overbooked slot: one incident each
    overbooked = sorted((t.key.restaurant_id, t.key.incident) for t in summary.transitions if t.key.slot)
    assert overbooked == sorted(
        (s.restaurant_id, f"{s.date.isoformat()} {s.time.strftime('%H:%M')}") for s in expected if s.over_capacity
    )
    # slots below their bookings: one incident per change behind them, naming exactly those slots
    # (a slot that has begun has no guests left to move: no warning)
    grouped = [t for t in summary.transitions if t.key.grouped]
    assert len(grouped) == len({t.key for t in grouped})
    assert sorted((t.key.restaurant_id, *slot) for t in grouped for slot in t.members) == sorted(
        (s.restaurant_id, s.date, s.time)
        for s in expected
        if s.below_bookings and not s.has_begun(zones[s.restaurant_id], now)
    )
    assert grouped and len(grouped) < sum(len(t.members) for t in grouped)
