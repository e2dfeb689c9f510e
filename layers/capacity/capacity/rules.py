"""Capacity rules: weekly rules, overrides, the slot grid and alternatives. Pure: no I/O.

Resolution for (restaurant, date, time), most specific first:
  1. an override of that date whose [start, end) range holds the time — the narrowest range wins;
  2. a whole-date override of that date;
  3. the weekly rule of that ISO weekday whose [start, end) range holds the time.
Nothing matches: the slot is closed. ``max_covers`` None means unlimited; 0 means closed.
Rules of the same rank that overlap (two equally narrow overrides, two whole-date overrides,
two weekly rules) resolve to the lowest capacity, so an ambiguous seed can never open more
room than one of its rules grants.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_ALTERNATIVES = 5
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class WeeklyRule:
    weekday: int  # ISO 1 (Monday) .. 7 (Sunday)
    start: dt.time
    end: dt.time  # exclusive; 00:00 as end means end of day
    max_covers: int | None

    def holds(self, time: dt.time) -> bool:
        return in_range(time, self.start, self.end)


@dataclass(frozen=True, slots=True)
class Override:
    date: dt.date
    max_covers: int | None
    start: dt.time | None = None
    end: dt.time | None = None
    reason: str = ""

    @property
    def whole_date(self) -> bool:
        return self.start is None or self.end is None

    def holds(self, time: dt.time) -> bool:
        if self.start is None or self.end is None:
            return True
        return in_range(time, self.start, self.end)

    def width_minutes(self) -> int:
        if self.start is None or self.end is None:
            return MINUTES_PER_DAY
        return _end_minutes(self.end) - _minutes(self.start)


@dataclass(frozen=True, slots=True)
class Capacity:
    """The capacity in force for one slot, and which rule put it there."""

    max_covers: int | None  # None = unlimited
    source: str  # "override", "date-override", "weekly" or "none"
    # The rule that set it (one of them, on a tie): provenance, not part of the capacity's value.
    rule: WeeklyRule | Override | None = field(default=None, compare=False)

    @property
    def closed(self) -> bool:
        return self.max_covers == 0

    def fits(self, booked_covers: int, party_size: int) -> bool:
        if self.max_covers is None:
            return True
        return booked_covers + party_size <= self.max_covers

    def remaining(self, booked_covers: int) -> int | None:
        if self.max_covers is None:
            return None
        return max(self.max_covers - booked_covers, 0)


CLOSED = Capacity(max_covers=0, source="none")


@dataclass(frozen=True, slots=True)
class Alternative:
    time: dt.time
    remaining_covers: int | None


@dataclass(frozen=True, slots=True)
class RestaurantRules:
    """Everything needed to resolve any slot of one restaurant (a date's worth is enough)."""

    slot_minutes: int = 15
    max_party_size: int = 50
    weekly: Sequence[WeeklyRule] = field(default_factory=tuple)
    overrides: Sequence[Override] = field(default_factory=tuple)

    @classmethod
    def from_rows(
        cls,
        restaurant: Mapping[str, Any],
        weekly: Iterable[Mapping[str, Any]],
        overrides: Iterable[Mapping[str, Any]],
    ) -> RestaurantRules:
        """The one mapper from stored rules to ``RestaurantRules``: rows of ``restaurants``,
        ``weekly_rules`` and ``capacity_overrides`` by their column names, as psycopg returns them
        or as ``to_jsonb`` aggregates them (times and dates then as ISO text). The booking path
        and the reconciliation both read rules through it, so they never disagree."""
        return cls(
            slot_minutes=restaurant["slot_minutes"],
            max_party_size=restaurant["max_party_size"],
            weekly=tuple(
                WeeklyRule(w["weekday"], clock(w["start_time"]), clock(w["end_time"]), w["max_covers"]) for w in weekly
            ),
            overrides=tuple(
                Override(
                    date=_day(o["override_date"]),
                    max_covers=o["max_covers"],
                    start=clock(o["start_time"]) if o["start_time"] is not None else None,
                    end=clock(o["end_time"]) if o["end_time"] is not None else None,
                    reason=o["reason"],
                )
                for o in overrides
            ),
        )

    def on_grid(self, time: dt.time) -> bool:
        return time.second == 0 and time.microsecond == 0 and _minutes(time) % self.slot_minutes == 0

    def capacity(self, date: dt.date, time: dt.time) -> Capacity:
        ranged = [o for o in self.overrides if o.date == date and not o.whole_date and o.holds(time)]
        if ranged:
            narrowest = min(ranged, key=lambda o: (o.width_minutes(), _lowest_first(o.max_covers)))
            return Capacity(narrowest.max_covers, "override", narrowest)
        whole = [o for o in self.overrides if o.date == date and o.whole_date]
        if whole:
            lowest = min(whole, key=lambda o: _lowest_first(o.max_covers))
            return Capacity(lowest.max_covers, "date-override", lowest)
        weekday = date.isoweekday()
        weekly = [r for r in self.weekly if r.weekday == weekday and r.holds(time)]
        if weekly:
            strictest = min(weekly, key=lambda r: _lowest_first(r.max_covers))
            return Capacity(strictest.max_covers, "weekly", strictest)
        return CLOSED

    def grid(self) -> list[dt.time]:
        return [_time(m) for m in range(0, MINUTES_PER_DAY, self.slot_minutes)]

    def bookable_slots(self, date: dt.date) -> list[tuple[dt.time, Capacity]]:
        """Every slot of the date on the grid that is not closed, in time order."""
        slots = ((t, self.capacity(date, t)) for t in self.grid())
        return [(t, c) for t, c in slots if not c.closed]

    def alternatives(
        self,
        date: dt.date,
        requested: dt.time,
        party_size: int,
        booked: Mapping[dt.time, int],
        *,
        not_before: dt.time | None = None,
        limit: int = MAX_ALTERNATIVES,
    ) -> list[Alternative]:
        """Up to ``limit`` other bookable slots of the same date that fit the party, nearest first.

        Ties in distance go to the earlier slot. ``not_before`` drops slots already past.
        """
        target = _minutes(requested)
        fitting = [
            Alternative(t, c.remaining(booked.get(t, 0)))
            for t, c in self.bookable_slots(date)
            if t != requested and (not_before is None or t >= not_before) and c.fits(booked.get(t, 0), party_size)
        ]
        fitting.sort(key=lambda a: (abs(_minutes(a.time) - target), _minutes(a.time)))
        return fitting[:limit]


def clock(value: dt.time | str) -> dt.time:
    """A time of day as psycopg returns it, or as ISO text (``to_jsonb`` of a time column)."""
    return value if isinstance(value, dt.time) else dt.time.fromisoformat(value)


def _day(value: dt.date | str) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def _minutes(time: dt.time) -> int:
    return time.hour * 60 + time.minute


def _end_minutes(end: dt.time) -> int:
    # An end of 00:00 means midnight at the end of the day: [17:00, 00:00) is the evening.
    minutes = _minutes(end)
    return MINUTES_PER_DAY if minutes == 0 else minutes


def _lowest_first(max_covers: int | None) -> float:
    """Orders capacities from the most restrictive: 0 (closed), then 1, 2, ..., unlimited last."""
    return float("inf") if max_covers is None else max_covers


def in_range(time: dt.time, start: dt.time, end: dt.time) -> bool:
    """Does the rule range [start, end) hold the time? An end of 00:00 is the day's end."""
    return _minutes(start) <= _minutes(time) < _end_minutes(end)


def _time(minutes: int) -> dt.time:
    return dt.time(minutes // 60, minutes % 60)
