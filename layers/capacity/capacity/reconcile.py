"""Reconciliation: every slot's confirmed covers, summed from ``bookings`` (never from the usage
ledger, so a bug in the ledger is caught too), against the capacity its rules put in force."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from capacity.db import DictConnection
from capacity.rules import Override, RestaurantRules, WeeklyRule


@dataclass(frozen=True, slots=True)
class SlotState:
    restaurant_id: UUID
    date: dt.date
    time: dt.time
    max_covers: int | None  # None = unlimited
    confirmed_covers: int
    bookings: int

    @property
    def over_capacity(self) -> bool:
        return self.max_covers is not None and self.confirmed_covers > self.max_covers

    def as_json(self) -> dict[str, Any]:
        return {
            "restaurantId": str(self.restaurant_id),
            "date": self.date.isoformat(),
            "time": self.time.strftime("%H:%M"),
            "maxCovers": self.max_covers,
            "confirmedCovers": self.confirmed_covers,
            "bookings": self.bookings,
        }


_SLOTS = """
SELECT restaurant_id, booking_date, booking_time, sum(party_size)::int AS covers, count(*)::int AS bookings
  FROM bookings
 WHERE status = 'confirmed'
   AND (%(restaurants)s::uuid[] IS NULL OR restaurant_id = ANY(%(restaurants)s::uuid[]))
   AND (%(date_from)s::date IS NULL OR booking_date >= %(date_from)s::date)
   AND (%(date_to)s::date IS NULL OR booking_date <= %(date_to)s::date)
 GROUP BY restaurant_id, booking_date, booking_time
 ORDER BY restaurant_id, booking_date, booking_time
"""

_RESTAURANTS = "SELECT id, slot_minutes, max_party_size FROM restaurants WHERE id = ANY(%(ids)s::uuid[])"
_WEEKLY = """SELECT restaurant_id, weekday, start_time, end_time, max_covers FROM weekly_rules
              WHERE restaurant_id = ANY(%(ids)s::uuid[])"""
_OVERRIDES = """SELECT restaurant_id, override_date, start_time, end_time, max_covers, reason FROM capacity_overrides
                 WHERE restaurant_id = ANY(%(ids)s::uuid[]) AND override_date = ANY(%(dates)s::date[])"""


def load_rules(
    conn: DictConnection, restaurant_ids: Sequence[UUID], dates: Sequence[dt.date]
) -> dict[UUID, RestaurantRules]:
    """Rules of the given restaurants, with their overrides on the given dates."""
    ids = list(restaurant_ids)
    weekly: dict[UUID, list[WeeklyRule]] = defaultdict(list)
    for r in conn.execute(_WEEKLY, {"ids": ids}):
        weekly[r["restaurant_id"]].append(WeeklyRule(r["weekday"], r["start_time"], r["end_time"], r["max_covers"]))
    overrides: dict[UUID, list[Override]] = defaultdict(list)
    for r in conn.execute(_OVERRIDES, {"ids": ids, "dates": list(dates)}):
        overrides[r["restaurant_id"]].append(
            Override(r["override_date"], r["max_covers"], r["start_time"], r["end_time"], r["reason"])
        )
    return {
        r["id"]: RestaurantRules(
            slot_minutes=r["slot_minutes"],
            max_party_size=r["max_party_size"],
            weekly=tuple(weekly[r["id"]]),
            overrides=tuple(overrides[r["id"]]),
        )
        for r in conn.execute(_RESTAURANTS, {"ids": ids})
    }


def slot_states(
    conn: DictConnection,
    *,
    restaurant_ids: Sequence[UUID] | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> list[SlotState]:
    """Every slot holding confirmed bookings (within the filters), with the capacity in force."""
    rows = conn.execute(
        _SLOTS,
        {
            "restaurants": list(restaurant_ids) if restaurant_ids is not None else None,
            "date_from": date_from,
            "date_to": date_to,
        },
    ).fetchall()
    if not rows:
        return []
    rules = load_rules(conn, sorted({r["restaurant_id"] for r in rows}), sorted({r["booking_date"] for r in rows}))
    states = []
    for r in rows:
        restaurant_rules = rules.get(r["restaurant_id"], RestaurantRules())
        capacity = restaurant_rules.capacity(r["booking_date"], r["booking_time"])
        states.append(
            SlotState(
                restaurant_id=r["restaurant_id"],
                date=r["booking_date"],
                time=r["booking_time"],
                max_covers=capacity.max_covers,
                confirmed_covers=r["covers"],
                bookings=r["bookings"],
            )
        )
    return states


def over_capacity(states: Sequence[SlotState]) -> list[SlotState]:
    return [s for s in states if s.over_capacity]
