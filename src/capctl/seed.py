"""`capctl seed FILE.json`: restaurants, weekly rules and overrides.

Re-running updates, and only what changed: a restaurant is upserted by id, and its rules are
compared with the file's, row by row — a rule that is the same keeps its row (and id), a rule
whose capacity or reason changed is updated in place, the rest are deleted or inserted. One
transaction per file, so a seed never duplicates and never leaves half a restaurant behind.

Every change lands in ``capacity_changes`` through the database's triggers, with the actor
this command names (``--actor``, default the OS user). Before committing, the seed checks that
no future slot ends up with less capacity than the covers already confirmed in it; if one
would, nothing is committed unless ``allow_below_bookings`` (``--allow-below-bookings``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capacity.db import DictConnection
from capacity.models import TIME_PATTERN
from capacity.reconcile import SlotState, slot_states
from capctl.errors import UserError
from capctl.text import plural

Time = Annotated[str, Field(pattern=TIME_PATTERN)]


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WeeklySeed(_Seed):
    weekdays: list[Annotated[int, Field(ge=1, le=7)]] = Field(min_length=1)
    start: Time
    end: Time
    max_covers: Annotated[int, Field(ge=0)] | None = Field(alias="maxCovers")

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.end != "00:00" and self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start} (00:00 means midnight)")
        return self


class OverrideSeed(_Seed):
    date: dt.date
    start: Time | None = None
    end: Time | None = None
    max_covers: Annotated[int, Field(ge=0)] | None = Field(alias="maxCovers")
    reason: str = ""

    @model_validator(mode="after")
    def _range(self) -> Self:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both start and end, or neither for the whole date")
        if self.start and self.end and self.end != "00:00" and self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class RestaurantSeed(_Seed):
    id: UUID
    name: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    slot_minutes: int = Field(default=15, ge=1, le=1440, alias="slotMinutes")
    max_party_size: int = Field(default=50, ge=1, le=50, alias="maxPartySize")
    booking_horizon_days: int = Field(default=365, ge=1, le=3660, alias="bookingHorizonDays")
    weekly: list[WeeklySeed] = []
    overrides: list[OverrideSeed] = []

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("slot_minutes")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 1440 % value:
            raise ValueError("must divide the day (1440 minutes) evenly")
        return value


class SeedFile(_Seed):
    restaurants: list[RestaurantSeed] = Field(min_length=1)


def load_seed(path: Path) -> SeedFile:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"seed file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read seed file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    try:
        return SeedFile.model_validate(raw)
    except ValidationError as exc:
        raise UserError(seed_errors(path, exc)) from None


def seed_errors(path: Path, exc: ValidationError) -> str:
    """Every error of the file at once, each with its JSON path (``$.restaurants[0].weekly[1].end``)."""
    found = []
    for err in exc.errors():
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        found.append(f"{where}: {message}")
    count = f"{len(found)} error" + ("s" if len(found) != 1 else "")
    return f"{path}: {count}: " + "; ".join(found)


@dataclass(frozen=True, slots=True)
class SeedResult:
    restaurants: int = 0
    weekly: int = 0
    overrides: int = 0
    changes: int = 0  # rows written to capacity_changes
    below_bookings: tuple[SlotState, ...] = ()  # future slots now below their confirmed covers

    def describe(self) -> str:
        parts = [
            plural(self.restaurants, "restaurant"),
            plural(self.weekly, "weekly rule"),
            plural(self.overrides, "override"),
        ]
        changed = "no capacity change" if not self.changes else plural(self.changes, "capacity change") + " recorded"
        return f"seeded {', '.join(parts)}: {changed}"


class BelowBookings(Exception):
    """The seed would leave future slots with less capacity than their confirmed covers."""

    def __init__(self, slots: Sequence[SlotState]) -> None:
        super().__init__(f"{len(slots)} future slots would drop below their confirmed covers")
        self.slots = tuple(slots)


# Rows of a restaurant's rules as comparable tuples: (key, value). The key says which rule it is
# (a weekly rule is its weekday and range; an override its date and range); the value is what a
# change of the rule changes.
_WeeklyKey = tuple[int, dt.time, dt.time]
_OverrideKey = tuple[dt.date, dt.time | None, dt.time | None]


def _t(value: str | None) -> dt.time | None:
    return dt.time.fromisoformat(value) if value is not None else None


def _sync(
    conn: DictConnection,
    existing: Sequence[tuple[int, Any, Any]],
    wanted: Sequence[tuple[Any, Any]],
    *,
    update: Callable[[int, Any], object],
    delete: str,
    insert: Callable[[Any, Any], object],
) -> None:
    """Make the rows ``existing`` (id, key, value) equal ``wanted`` (key, value), touching only differences."""
    pool: dict[Any, list[tuple[int, Any]]] = defaultdict(list)
    for row_id, key, value in existing:
        pool[key].append((row_id, value))
    unmatched: list[tuple[Any, Any]] = []
    for key, value in wanted:
        rows = pool.get(key)
        if not rows:
            unmatched.append((key, value))
            continue
        # the same rule with the same value keeps its row; otherwise the first row of that key changes
        same = next((i for i, (_, v) in enumerate(rows) if v == value), None)
        row_id, old = rows.pop(same if same is not None else 0)
        if old != value:
            update(row_id, value)
    for rows in pool.values():
        for row_id, _ in rows:
            conn.execute(delete, {"id": row_id})
    for key, value in unmatched:
        insert(key, value)


def _sync_restaurant(conn: DictConnection, r: RestaurantSeed) -> None:
    conn.execute(
        """INSERT INTO restaurants (id, name, timezone, slot_minutes, max_party_size, booking_horizon_days)
           VALUES (%(id)s, %(name)s, %(tz)s, %(slot)s, %(party)s, %(horizon)s)
           ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone,
               slot_minutes = EXCLUDED.slot_minutes, max_party_size = EXCLUDED.max_party_size,
               booking_horizon_days = EXCLUDED.booking_horizon_days, updated_at = now()
           WHERE (restaurants.name, restaurants.timezone, restaurants.slot_minutes, restaurants.max_party_size,
                  restaurants.booking_horizon_days)
                 IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.timezone, EXCLUDED.slot_minutes,
                                   EXCLUDED.max_party_size, EXCLUDED.booking_horizon_days)""",
        {
            "id": r.id,
            "name": r.name,
            "tz": r.timezone,
            "slot": r.slot_minutes,
            "party": r.max_party_size,
            "horizon": r.booking_horizon_days,
        },
    )
    weekly_rows = conn.execute(
        "SELECT id, weekday, start_time, end_time, max_covers FROM weekly_rules WHERE restaurant_id = %s ORDER BY id",
        (r.id,),
    ).fetchall()
    _sync(
        conn,
        [(w["id"], (w["weekday"], w["start_time"], w["end_time"]), (w["max_covers"],)) for w in weekly_rows],
        [((day, _t(w.start), _t(w.end)), (w.max_covers,)) for w in r.weekly for day in w.weekdays],
        update=lambda row_id, value: conn.execute(
            "UPDATE weekly_rules SET max_covers = %s WHERE id = %s", (*value, row_id)
        ),
        delete="DELETE FROM weekly_rules WHERE id = %(id)s",
        insert=lambda key, value: conn.execute(
            """INSERT INTO weekly_rules (restaurant_id, weekday, start_time, end_time, max_covers)
               VALUES (%s, %s, %s, %s, %s)""",
            (r.id, *key, *value),
        ),
    )
    override_rows = conn.execute(
        """SELECT id, override_date, start_time, end_time, max_covers, reason FROM capacity_overrides
            WHERE restaurant_id = %s AND managed_by = 'seed' ORDER BY id""",
        (r.id,),
    ).fetchall()
    _sync(
        conn,
        [
            (o["id"], (o["override_date"], o["start_time"], o["end_time"]), (o["max_covers"], o["reason"]))
            for o in override_rows
        ],
        [((o.date, _t(o.start), _t(o.end)), (o.max_covers, o.reason)) for o in r.overrides],
        update=lambda row_id, value: conn.execute(
            "UPDATE capacity_overrides SET max_covers = %s, reason = %s WHERE id = %s", (*value, row_id)
        ),
        delete="DELETE FROM capacity_overrides WHERE id = %(id)s",
        insert=lambda key, value: conn.execute(
            """INSERT INTO capacity_overrides
                   (restaurant_id, override_date, start_time, end_time, max_covers, reason, managed_by)
               VALUES (%s, %s, %s, %s, %s, %s, 'seed')""",
            (r.id, *key, *value),
        ),
    )


def set_actor(conn: DictConnection, actor: str, reason: str | None = None) -> None:
    """Name who makes the changes of the current transaction (read by the history triggers)."""
    conn.execute(
        "SELECT set_config('capacity.actor', %s, true), set_config('capacity.reason', %s, true)", (actor, reason or "")
    )


def newly_below(before: Sequence[SlotState], after: Sequence[SlotState]) -> list[SlotState]:
    """Slots whose capacity this change lowered below their confirmed covers (a raise that still
    leaves a slot below them is not refused: it moves the right way)."""
    previous = {(s.restaurant_id, s.date, s.time): s.max_covers for s in before}
    lowered = []
    for s in after:
        was = previous.get((s.restaurant_id, s.date, s.time), s.max_covers)
        if s.max_covers is None or s.confirmed_covers <= s.max_covers:
            continue
        if was is None or s.max_covers < was:
            lowered.append(s)
    return lowered


def future_slots(conn: DictConnection, restaurant_ids: Sequence[UUID]) -> list[SlotState]:
    """Booked slots of these restaurants that have not begun yet, in each restaurant's own time."""
    zones = {
        r["id"]: r["timezone"]
        for r in conn.execute("SELECT id, timezone FROM restaurants WHERE id = ANY(%s)", (list(restaurant_ids),))
    }
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    states = slot_states(conn, restaurant_ids=list(restaurant_ids), date_from=yesterday)
    return [s for s in states if not s.has_begun(zones.get(s.restaurant_id, "UTC"))]


def apply_seed(
    conn: DictConnection,
    seed: SeedFile,
    *,
    actor: str | None = None,
    allow_below_bookings: bool = False,
    reason: str = "capctl seed",
) -> SeedResult:
    """Apply the file in one transaction; raises ``BelowBookings`` (nothing committed) when it would
    lower a future slot below its confirmed covers, unless ``allow_below_bookings``."""
    ids = [r.id for r in seed.restaurants]
    with conn.transaction():
        set_actor(conn, actor or default_actor(), reason)
        first_change = conn.execute("SELECT coalesce(max(id), 0) AS id FROM capacity_changes").fetchone()
        assert first_change is not None
        before = future_slots(conn, ids)
        for r in seed.restaurants:
            _sync_restaurant(conn, r)
        below = newly_below(before, future_slots(conn, ids))
        if below and not allow_below_bookings:
            raise BelowBookings(below)
        changes = conn.execute(
            "SELECT count(*)::int AS n FROM capacity_changes WHERE id > %s", (first_change["id"],)
        ).fetchone()
        assert changes is not None
    return SeedResult(
        restaurants=len(seed.restaurants),
        weekly=sum(len(w.weekdays) for r in seed.restaurants for w in r.weekly),
        overrides=sum(len(r.overrides) for r in seed.restaurants),
        changes=changes["n"],
        below_bookings=tuple(below),
    )


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
