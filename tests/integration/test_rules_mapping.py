"""One mapper from stored rules to RestaurantRules: the booking path (one JSON round trip) and the
reconciliation (plain rows, many restaurants and dates) read the same rules for the same date."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from capacity import repository
from capacity.reconcile import load_rules
from tests.support import FUTURE, RESTAURANT_ID

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("offset", [-1, 0, 1, 2, 3])
def test_the_booking_path_and_the_reconciliation_read_the_same_rules(seeded_db: str, conn: Any, offset: int) -> None:
    conn.execute(
        "INSERT INTO capacity_overrides (restaurant_id, override_date, start_time, end_time, max_covers, reason) "
        "VALUES (%s, %s, '21:00', '00:00', 7, 'late: to midnight')",
        (RESTAURANT_ID, FUTURE),
    )
    date = FUTURE + dt.timedelta(days=offset)
    rid = uuid.UUID(RESTAURANT_ID)
    day = repository.load_day(conn, rid, date)
    assert day is not None
    booking_path, reconciliation = day[0].rules, load_rules(conn, [rid], [date])[rid]
    # the booking path reads the date's weekday only; the reconciliation every weekday
    assert booking_path.weekly == tuple(r for r in reconciliation.weekly if r.weekday == date.isoweekday())
    assert (booking_path.overrides, booking_path.slot_minutes) == (
        reconciliation.overrides,
        reconciliation.slot_minutes,
    )
    grid = booking_path.grid()
    assert [booking_path.capacity(date, t) for t in grid] == [reconciliation.capacity(date, t) for t in grid]
