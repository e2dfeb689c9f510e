"""Reconciliation: every slot's confirmed covers, summed from ``bookings`` (never from the usage
ledger, so a bug in the ledger is caught too), against the capacity its bookings were accepted
under and the capacity its rules put in force now (see ``SlotState``)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field

from capacity.camel_json import CamelJson, HourMinute
from capacity.db import DictConnection
from capacity.rules import RestaurantRules


@dataclass(frozen=True, slots=True)
class SlotState(CamelJson):
    """One booked slot: its confirmed covers against the capacity in force now and the capacity
    its bookings were accepted under.

    ``accepted_max_covers`` is the capacity the guard checked when the slot's latest confirmed
    booking was accepted: the guard let the slot reach at most that. A booking that did not pass
    the guard (inserted by plain SQL, or before the engine recorded it) has no such figure, so
    the slot is held to the capacity in force now. Two conditions follow, never confused:

    * **overbooked** — confirmed covers exceed ``accepted_max_covers``: the guard failed or was
      bypassed (CRITICAL);
    * **below bookings** — not overbooked, but the capacity was lowered since below the covers
      already accepted (WARNING: a capacity change, the guests need moving, nothing is broken).
    """

    restaurant_id: UUID
    date: dt.date
    time: HourMinute
    max_covers: int | None  # in force now; None = unlimited
    accepted_max_covers: int | None  # None = unlimited
    confirmed_covers: int
    bookings: int
    booking_ids: tuple[UUID, ...] = ()
    last_booked_at: Annotated[dt.datetime | None, Field(exclude=True)] = None

    @property
    def over_capacity(self) -> bool:
        return self.accepted_max_covers is not None and self.confirmed_covers > self.accepted_max_covers

    @property
    def below_bookings(self) -> bool:
        return not self.over_capacity and self.max_covers is not None and self.confirmed_covers > self.max_covers


# Per slot: covers, bookings (oldest first), and what the latest booking was accepted under.
_SLOTS = """
SELECT restaurant_id, booking_date, booking_time, sum(party_size)::int AS covers, count(*)::int AS bookings,
       array_agg(id ORDER BY created_at, id) AS booking_ids,
       max(created_at) AS last_booked_at,
       (array_agg(guarded ORDER BY created_at DESC, id DESC))[1] AS last_guarded,
       (array_agg(accepted_max_covers ORDER BY created_at DESC, id DESC))[1] AS last_accepted
  FROM bookings
 WHERE status = 'confirmed'
   AND (%(restaurants)s::uuid[] IS NULL OR restaurant_id = ANY(%(restaurants)s::uuid[]))
   AND (%(date_from)s::date IS NULL OR booking_date >= %(date_from)s::date)
   AND (%(date_to)s::date IS NULL OR booking_date <= %(date_to)s::date)
   AND (%(times)s::time[] IS NULL OR booking_time = ANY(%(times)s::time[]))
 GROUP BY restaurant_id, booking_date, booking_time
 ORDER BY restaurant_id, booking_date, booking_time
"""

_RESTAURANTS = "SELECT * FROM restaurants WHERE id = ANY(%(ids)s::uuid[])"
_WEEKLY = "SELECT * FROM weekly_rules WHERE restaurant_id = ANY(%(ids)s::uuid[])"
_OVERRIDES = """SELECT * FROM capacity_overrides
                 WHERE restaurant_id = ANY(%(ids)s::uuid[]) AND override_date = ANY(%(dates)s::date[])"""


def load_rules(
    conn: DictConnection, restaurant_ids: Sequence[UUID], dates: Sequence[dt.date]
) -> dict[UUID, RestaurantRules]:
    """Rules of the given restaurants, with their overrides on the given dates."""
    ids = list(restaurant_ids)
    weekly: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
    for w in conn.execute(_WEEKLY, {"ids": ids}):
        weekly[w["restaurant_id"]].append(w)
    overrides: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
    for o in conn.execute(_OVERRIDES, {"ids": ids, "dates": list(dates)}):
        overrides[o["restaurant_id"]].append(o)
    return {
        r["id"]: RestaurantRules.from_rows(r, weekly[r["id"]], overrides[r["id"]])
        for r in conn.execute(_RESTAURANTS, {"ids": ids})
    }


def slot_states(
    conn: DictConnection,
    *,
    restaurant_ids: Sequence[UUID] | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    times: Sequence[dt.time] | None = None,
) -> list[SlotState]:
    """Every slot holding confirmed bookings (within the filters), with the capacity in force."""
    rows = conn.execute(
        _SLOTS,
        {
            "restaurants": list(restaurant_ids) if restaurant_ids is not None else None,
            "date_from": date_from,
            "date_to": date_to,
            "times": list(times) if times is not None else None,
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
                accepted_max_covers=r["last_accepted"] if r["last_guarded"] else capacity.max_covers,
                booking_ids=tuple(r["booking_ids"]),
                last_booked_at=r["last_booked_at"],
            )
        )
    return states


def over_capacity(states: Sequence[SlotState]) -> list[SlotState]:
    return [s for s in states if s.over_capacity]


def below_bookings(states: Sequence[SlotState]) -> list[SlotState]:
    return [s for s in states if s.below_bookings]
