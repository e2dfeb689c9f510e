"""Capacity history: reading ``capacity_changes``, which the database's triggers write for every
change of a restaurant's weekly rules, overrides or slot grid, whoever makes it.

Used to explain a slot whose capacity now sits below its confirmed covers: the change that put
it there (when, who, before → after, why) is the latest change that touches the slot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, computed_field

from capacity.camel_json import CamelJson, UtcInstant
from capacity.db import DictConnection
from capacity.reconcile import SlotKey, SlotState
from capacity.rules import clock, in_range

# Changes of one restaurant that may touch a date: its slot grid, the weekly rules of that
# weekday, the overrides of that date. Ranges are checked in Python (``touches``).
_CHANGES_OF_DATE = """
SELECT id, restaurant_id, changed_at, actor, kind, before, after, reason
  FROM capacity_changes
 WHERE restaurant_id = %(restaurant_id)s
   AND (kind LIKE 'restaurant.%%'
        OR (kind LIKE 'weekly_rule.%%'
            AND %(weekday)s IN ((before ->> 'weekday')::int, (after ->> 'weekday')::int))
        OR (kind LIKE 'override.%%'
            AND %(date)s IN (before ->> 'override_date', after ->> 'override_date')))
 ORDER BY changed_at, id
"""


def _holds(row: dict[str, Any] | None, time: dt.time) -> bool:
    """Does this rule row's [start, end) hold the time? A row without a range holds every time."""
    if row is None:
        return False
    start, end = row.get("start_time"), row.get("end_time")
    if start is None or end is None:
        return True
    return in_range(time, clock(start), clock(end))


def _capacity(row: dict[str, Any] | None) -> str:
    if row is None:
        return "none"
    value = row.get("max_covers")
    return "unlimited" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class CapacityChange(CamelJson):
    id: int
    restaurant_id: Annotated[UUID, Field(exclude=True)]
    changed_at: UtcInstant
    actor: str
    kind: str  # weekly_rule|override|restaurant . insert|update|delete
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str

    def touches(self, time: dt.time) -> bool:
        if self.kind.startswith("restaurant."):
            # Of a restaurant's settings only its creation and its slot grid bear on a slot's
            # capacity (the horizon, the party size and the name do not).
            before, after = self.before or {}, self.after or {}
            return not before or not after or before.get("slot_minutes") != after.get("slot_minutes")
        return _holds(self.before, time) or _holds(self.after, time)

    @property
    def changes_capacity(self) -> bool:
        """A change of a rule's covers (or a rule added or removed), not only of its bookkeeping."""
        if self.subject == "restaurant":
            return False
        return _capacity(self.before) != _capacity(self.after) or self.before is None or self.after is None

    def leaves_below(self, covers: int) -> bool:
        """Could this change be why a slot holding ``covers`` is below them? A rule removed, the
        slot grid changed, or a capacity set under ``covers``; not a rule that still fits them
        (e.g. the seed's first "new weekly rule … max covers 20" of a slot holding 12), nor the
        restaurant's creation."""
        if self.subject == "restaurant":
            return self.before is not None and self.after is not None  # its slot grid (``touches``)
        if self.after is None:
            return True
        limit = self.after.get("max_covers")
        return limit is not None and int(limit) < covers

    @property
    def subject(self) -> str:
        return self.kind.split(".", 1)[0]

    @computed_field
    @property
    def summary(self) -> str:
        """One line an operator can read: what changed, from what to what."""
        row = self.after or self.before or {}
        if self.subject == "restaurant":
            keys = ("timezone", "slot_minutes", "max_party_size", "booking_horizon_days")
            before, after = self.before or {}, self.after or {}
            if not before or not after:
                settings = ", ".join(f"{k} {(after or before).get(k)}" for k in keys)
                return f"restaurant {'created' if not before else 'removed'} ({settings})"
            diffs = [f"{k} {before.get(k)} → {after.get(k)}" for k in keys if before.get(k) != after.get(k)]
            return "restaurant settings: " + ", ".join(diffs)
        span = f"{row['start_time'][:5]}-{row['end_time'][:5]}" if row.get("start_time") else "whole date"
        what = f"weekday {row.get('weekday')}" if self.subject == "weekly_rule" else str(row.get("override_date"))
        label = "weekly rule" if self.subject == "weekly_rule" else "override"
        if self.before is None:
            return f"new {label} {what} {span}: max covers {_capacity(self.after)}"
        if self.after is None:
            return f"removed {label} {what} {span} (max covers {_capacity(self.before)})"
        return f"{label} {what} {span}: max covers {_capacity(self.before)} → {_capacity(self.after)}"


def change_line(change: dict[str, Any]) -> str:
    """A change, from its JSON (``as_json()``, as verify and the alert notices carry it), as an
    operator reads it: when (UTC, to the minute), who, what, why."""
    reason = f" (reason: {change['reason']})" if change.get("reason") else ""
    when = str(change.get("changedAt", ""))[:16].replace("T", " ")
    return f"{when} UTC by {change.get('actor')}: {change.get('summary')}{reason}"


def _changes_of_date(conn: DictConnection, restaurant_id: UUID, date: dt.date) -> list[CapacityChange]:
    """Every recorded change that may touch the date, oldest first (ranges not yet checked)."""
    rows = conn.execute(
        _CHANGES_OF_DATE, {"restaurant_id": restaurant_id, "weekday": date.isoweekday(), "date": date.isoformat()}
    ).fetchall()
    return [CapacityChange(**row) for row in rows]


def changes_of_slot(conn: DictConnection, restaurant_id: UUID, date: dt.date, time: dt.time) -> list[CapacityChange]:
    """Every recorded change that touches the slot, oldest first."""
    return [c for c in _changes_of_date(conn, restaurant_id, date) if c.touches(time)]


def _behind(changes: list[CapacityChange], state: SlotState) -> CapacityChange | None:
    """Of the date's changes, the one that explains the slot below its bookings: the latest change
    of a rule's covers touching the slot, leaving it under its confirmed covers, made after its
    latest booking, else the latest such change at all; a change of the slot grid only when no
    rule change touches the slot; None when no recorded change could explain it."""
    touching = [c for c in changes if c.touches(state.time) and c.leaves_below(state.confirmed_covers)]
    since = state.last_booked_at
    for candidates in ([c for c in touching if c.changes_capacity], touching):
        later = [c for c in candidates if since is None or c.changed_at >= since]
        found = later or candidates
        if found:
            return found[-1]
    return None


def changes_behind(conn: DictConnection, states: Iterable[SlotState]) -> dict[SlotKey, CapacityChange | None]:
    """The change behind each slot below its bookings (``_behind``), the history read once per
    restaurant and date, not once per slot: a year of Fridays is a year of dates, not of slots."""
    of_date: dict[tuple[UUID, dt.date], list[CapacityChange]] = {}
    behind: dict[SlotKey, CapacityChange | None] = {}
    for state in states:
        day = (state.restaurant_id, state.date)
        if day not in of_date:
            of_date[day] = _changes_of_date(conn, *day)
        behind[(state.restaurant_id, state.date, state.time)] = _behind(of_date[day], state)
    return behind
