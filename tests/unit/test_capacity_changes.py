"""Which recorded change can explain a slot below its bookings (``CapacityChange.leaves_below``):
the alert notices and `capctl verify` name it as the cause, so a change that left the slot's
capacity at or above its covers must never be named."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from capacity.changes import CapacityChange

RULE = {"weekday": 5, "start_time": "17:00:00", "end_time": "22:00:00"}
GRID = {"timezone": "Europe/London", "max_party_size": 12, "booking_horizon_days": 365}


def change(kind: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> CapacityChange:
    return CapacityChange(7, uuid.uuid4(), dt.datetime(2030, 6, 1, tzinfo=dt.UTC), "alice", kind, before, after, "")


@pytest.mark.parametrize(
    ("kind", "before", "after", "explains"),
    [
        ("weekly_rule.update", {**RULE, "max_covers": 20}, {**RULE, "max_covers": 10}, True),  # lowered under 12
        ("weekly_rule.update", {**RULE, "max_covers": 20}, {**RULE, "max_covers": 12}, False),  # 12 fit
        ("weekly_rule.insert", None, {**RULE, "max_covers": 20}, False),  # the seed's first rule
        ("weekly_rule.insert", None, {**RULE, "max_covers": 4}, True),
        ("weekly_rule.update", {**RULE, "max_covers": 4}, {**RULE, "max_covers": None}, False),  # unlimited
        ("weekly_rule.delete", {**RULE, "max_covers": 20}, None, True),  # the slot may be closed now
        ("override.insert", None, {"override_date": "2030-06-07", "max_covers": 0}, True),
        ("restaurant.insert", None, {**GRID, "slot_minutes": 15}, False),  # its creation
        ("restaurant.update", {**GRID, "slot_minutes": 15}, {**GRID, "slot_minutes": 30}, True),  # the grid
    ],
)
def test_a_change_explains_a_slot_only_if_it_could_leave_it_under_its_covers(kind, before, after, explains):
    assert change(kind, before, after).leaves_below(12) is explains
