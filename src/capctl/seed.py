"""`capctl seed FILE.json`: restaurants, weekly rules and overrides (contract section 6).

Re-running updates: a restaurant is upserted by id and its rules are replaced as a whole, in one
transaction per file, so a seed never duplicates and never leaves half a restaurant behind.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Self
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capacity.db import DictConnection
from capacity.models import TIME_PATTERN
from capctl.errors import UserError

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
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "file"
        raise UserError(f"{path}: {where}: {err['msg']}") from None


def apply_seed(conn: DictConnection, seed: SeedFile) -> dict[str, int]:
    counts = {"restaurants": 0, "weekly": 0, "overrides": 0}
    with conn.transaction():
        for r in seed.restaurants:
            conn.execute(
                """INSERT INTO restaurants (id, name, timezone, slot_minutes, max_party_size)
                   VALUES (%(id)s, %(name)s, %(tz)s, %(slot)s, %(party)s)
                   ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone,
                       slot_minutes = EXCLUDED.slot_minutes, max_party_size = EXCLUDED.max_party_size,
                       updated_at = now()""",
                {"id": r.id, "name": r.name, "tz": r.timezone, "slot": r.slot_minutes, "party": r.max_party_size},
            )
            conn.execute("DELETE FROM weekly_rules WHERE restaurant_id = %s", (r.id,))
            conn.execute("DELETE FROM capacity_overrides WHERE restaurant_id = %s", (r.id,))
            for w in r.weekly:
                for day in w.weekdays:
                    conn.execute(
                        """INSERT INTO weekly_rules (restaurant_id, weekday, start_time, end_time, max_covers)
                           VALUES (%s, %s, %s, %s, %s)""",
                        (r.id, day, w.start, w.end, w.max_covers),
                    )
                    counts["weekly"] += 1
            for o in r.overrides:
                conn.execute(
                    """INSERT INTO capacity_overrides
                           (restaurant_id, override_date, start_time, end_time, max_covers, reason)
                       VALUES (%s, %s, %s, %s, %s, %s)""",
                    (r.id, o.date, o.start, o.end, o.max_covers, o.reason),
                )
                counts["overrides"] += 1
            counts["restaurants"] += 1
    return counts
