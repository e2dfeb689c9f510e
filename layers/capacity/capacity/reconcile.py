"""Reconciliation: every slot's confirmed covers, summed from ``bookings`` (never from the usage
ledger, so a bug in the ledger is caught too), against the capacity its bookings were accepted
under and the capacity its rules put in force now (see ``SlotState``)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from capacity.camel_json import CamelJson, HourMinute
from capacity.db import DictConnection
from capacity.rules import RestaurantRules


@dataclass(frozen=True, slots=True)
class SlotState(CamelJson):
    """One booked slot: its confirmed covers against the capacity in force now and the capacity
    its bookings were accepted under.

    ``accepted_max_covers`` is the capacity the guard checked when the slot's latest confirmed
    booking *that went through the guard* was accepted: the guard let the slot reach at most
    that, so covers beyond it were added around the guard. A booking that did not pass the guard
    (plain SQL, or written before the engine recorded it) carries no such figure; a slot holding
    only such bookings (``accepted_by_guard`` false) is held to the capacity in force now. Two
    conditions follow, never confused:

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
    accepted_by_guard: bool = True  # False: no booking of it passed the guard; the limit is "now"

    @property
    def over_capacity(self) -> bool:
        return self.accepted_max_covers is not None and self.confirmed_covers > self.accepted_max_covers

    @property
    def below_bookings(self) -> bool:
        return not self.over_capacity and self.max_covers is not None and self.confirmed_covers > self.max_covers

    def has_begun(self, timezone: str, now: dt.datetime | None = None) -> bool:
        """Has the slot begun in its restaurant's time zone (UTC when the zone is unknown)?"""
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        local = (now or dt.datetime.now(dt.UTC)).astimezone(zone)
        return (self.date, self.time) < (local.date(), local.time())


# Per slot: covers, bookings (oldest first), and what the latest booking was accepted under.
_SLOT_COLUMNS = """
SELECT restaurant_id, booking_date, booking_time, sum(party_size)::int AS covers, count(*)::int AS bookings,
       array_agg(id ORDER BY created_at, id) AS booking_ids,
       max(created_at) AS last_booked_at,
       bool_or(guarded) AS any_guarded,
       (array_agg(accepted_max_covers ORDER BY created_at DESC, id DESC) FILTER (WHERE guarded))[1] AS last_accepted
  FROM bookings
"""

_SLOTS = f"""{_SLOT_COLUMNS}
 WHERE status = 'confirmed'
   AND (%(restaurants)s::uuid[] IS NULL OR restaurant_id = ANY(%(restaurants)s::uuid[]))
   AND (%(date_from)s::date IS NULL OR booking_date >= %(date_from)s::date)
   AND (%(date_to)s::date IS NULL OR booking_date <= %(date_to)s::date)
 GROUP BY restaurant_id, booking_date, booking_time
 ORDER BY restaurant_id, booking_date, booking_time
"""

# The same, for the slots named (restaurant, date, time).
_SLOTS_OF = f"""{_SLOT_COLUMNS}
 WHERE status = 'confirmed'
   AND (restaurant_id, booking_date, booking_time) IN (
        SELECT * FROM unnest(%(restaurants)s::uuid[], %(dates)s::date[], %(times)s::time[]))
 GROUP BY restaurant_id, booking_date, booking_time
 ORDER BY restaurant_id, booking_date, booking_time
"""  # noqa: S608 - the select list above, no input


def _minutes_sql(column: str) -> str:
    # minutes of the day, seconds ignored, as ``capacity.rules`` compares times
    return f"(extract(hour FROM {column}) * 60 + extract(minute FROM {column}))::int"


# A first pass over every booked slot of each restaurant's date range, inside the database, so
# that Python never holds the millions of slots of a large estate: how many slots there are, and
# which could be flagged. It errs towards passing a slot on; ``slot_states_of`` and the rules in
# Python decide. A slot is passed on when
#   * its covers exceed the least capacity any of its guarded bookings was accepted under (the
#     latest one's figure is never below that least), or
#   * its date has an override (left to ``RestaurantRules.capacity``), or
#   * its covers exceed the capacity its weekly rules give it now: the lowest ``max_covers`` of
#     the rules of its weekday whose [start, end) holds its time (NULL = unlimited; an end of
#     00:00 is midnight), closed (0) when none holds — ``RestaurantRules.capacity``'s third rank.
# The weekly rules are resolved once per (restaurant, weekday, time), not once per slot.
_SLOTS_TO_CHECK = f"""
WITH ranges AS (
    SELECT * FROM unnest(%(restaurants)s::uuid[], %(date_from)s::date[], %(date_to)s::date[])
           AS r (restaurant_id, date_from, date_to)
), slots AS MATERIALIZED (
    SELECT b.restaurant_id, b.booking_date, b.booking_time,
           extract(isodow FROM b.booking_date)::int AS weekday, sum(b.party_size) AS covers,
           min(b.accepted_max_covers) FILTER (WHERE b.guarded) AS least_accepted
      FROM bookings b
      JOIN ranges r ON r.restaurant_id = b.restaurant_id AND b.booking_date BETWEEN r.date_from AND r.date_to
     WHERE b.status = 'confirmed'
     GROUP BY b.restaurant_id, b.booking_date, b.booking_time
), weekly AS (
    SELECT k.restaurant_id, k.weekday, k.booking_time,
           CASE WHEN count(w.id) = 0 THEN 0 ELSE min(w.max_covers) END AS max_covers
      FROM (SELECT DISTINCT restaurant_id, weekday, booking_time FROM slots) k
      LEFT JOIN weekly_rules w
        ON w.restaurant_id = k.restaurant_id AND w.weekday = k.weekday
       AND {_minutes_sql("w.start_time")} <= {_minutes_sql("k.booking_time")}
       AND {_minutes_sql("k.booking_time")}
           < CASE WHEN {_minutes_sql("w.end_time")} = 0 THEN 1440 ELSE {_minutes_sql("w.end_time")} END
     GROUP BY k.restaurant_id, k.weekday, k.booking_time
), overridden AS (
    SELECT DISTINCT restaurant_id, override_date FROM capacity_overrides
), checked AS (
    SELECT s.restaurant_id, s.booking_date, s.booking_time,
           coalesce(s.covers > s.least_accepted, false)
           OR o.restaurant_id IS NOT NULL
           OR coalesce(s.covers > w.max_covers, false) AS maybe_flagged
      FROM slots s
      JOIN weekly w USING (restaurant_id, weekday, booking_time)
      LEFT JOIN overridden o ON o.restaurant_id = s.restaurant_id AND o.override_date = s.booking_date
)
SELECT count(*)::int AS slots,
       coalesce(array_agg(restaurant_id) FILTER (WHERE maybe_flagged), '{{}}') AS restaurants,
       coalesce(array_agg(booking_date) FILTER (WHERE maybe_flagged), '{{}}') AS dates,
       coalesce(array_agg(booking_time) FILTER (WHERE maybe_flagged), '{{}}') AS times
  FROM checked
"""  # noqa: S608 - column names, no input; values are bound parameters

SlotKey = tuple[UUID, dt.date, dt.time]  # restaurant, local date, local time

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
    return _states(conn, rows)


def slot_states_of(conn: DictConnection, slots: Iterable[SlotKey]) -> list[SlotState]:
    """The named slots that hold confirmed bookings, by restaurant, date and time."""
    keys = list(dict.fromkeys(slots))
    if not keys:
        return []
    rows = conn.execute(
        _SLOTS_OF,
        {"restaurants": [k[0] for k in keys], "dates": [k[1] for k in keys], "times": [k[2] for k in keys]},
    ).fetchall()
    return _states(conn, rows)


@dataclass(frozen=True, slots=True)
class SlotsChecked:
    slots: int  # slots holding confirmed bookings within their restaurant's range
    states: list[SlotState]  # a superset of those over capacity or below bookings among them


def slots_to_check(conn: DictConnection, ranges: Mapping[UUID, tuple[dt.date, dt.date]]) -> SlotsChecked:
    """Of every slot holding confirmed bookings within its restaurant's [from, to] dates: how many
    there are, and the states of every one that may be over capacity or below bookings (each
    condition still to be read on the state; every slot that holds one is among them). What
    ``slot_states`` of those ranges would flag, without building a state for every slot."""
    if not ranges:
        return SlotsChecked(0, [])
    ids = list(ranges)
    row = conn.execute(
        _SLOTS_TO_CHECK,
        {
            "restaurants": ids,
            "date_from": [ranges[i][0] for i in ids],
            "date_to": [ranges[i][1] for i in ids],
        },
    ).fetchone()
    assert row is not None
    candidates = zip(row["restaurants"], row["dates"], row["times"], strict=True)
    return SlotsChecked(row["slots"], slot_states_of(conn, candidates))


def _states(conn: DictConnection, rows: Sequence[dict[str, Any]]) -> list[SlotState]:
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
                accepted_max_covers=r["last_accepted"] if r["any_guarded"] else capacity.max_covers,
                accepted_by_guard=bool(r["any_guarded"]),
                booking_ids=tuple(r["booking_ids"]),
                last_booked_at=r["last_booked_at"],
            )
        )
    return states


def over_capacity(states: Sequence[SlotState]) -> list[SlotState]:
    return [s for s in states if s.over_capacity]


def below_bookings(states: Sequence[SlotState]) -> list[SlotState]:
    return [s for s in states if s.below_bookings]
