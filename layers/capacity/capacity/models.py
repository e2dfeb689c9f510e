"""The API's request and response models (pydantic 2): the contract. The OpenAPI document is
generated from these, and every success body is built through them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, StringConstraints

from capacity.outcomes import DEFAULT_SOURCE

TIME_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
SOURCE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,31}$"
PHONE_PATTERN = r"^\+?[0-9][0-9 ()\-]{5,24}$"
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _iso_date_only(value: object) -> object:
    # pydantic would also take a datetime or a number of seconds; the contract says YYYY-MM-DD.
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return value
    raise ValueError("must be a date as YYYY-MM-DD")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here as a field error, not later as a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date_only)]
NoNul = AfterValidator(_no_nul)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Guest(_Strict):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoNul]
    email: EmailStr | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, pattern=PHONE_PATTERN)] | None = None


class BookingRequest(_Strict):
    restaurant_id: UUID = Field(alias="restaurantId")
    date: IsoDate
    time: Annotated[str, StringConstraints(pattern=TIME_PATTERN)] = Field(description="HH:MM, local to the restaurant")
    party_size: Annotated[int, Field(strict=True, ge=1, le=50)] = Field(alias="partySize")
    guest: Guest
    source: Annotated[str, StringConstraints(pattern=SOURCE_PATTERN)] = DEFAULT_SOURCE
    notes: Annotated[str, StringConstraints(max_length=1000), NoNul] | None = None

    @property
    def slot_time(self) -> dt.time:
        return dt.time.fromisoformat(self.time)


SlotTime = Annotated[str, StringConstraints(pattern=TIME_PATTERN)]  # HH:MM, as every answer writes a slot


class _Response(BaseModel):
    """A success body of the API: the one way a body is built (from rows or a stored answer), so
    what is sent is what docs/openapi.json says. Extra members are refused, not passed through."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    def body(self) -> dict[str, Any]:
        """The JSON body: members by their API names, values as JSON types."""
        return self.model_dump(mode="json", by_alias=True)


class CapacityView(_Response):
    max_covers: int | None = Field(alias="maxCovers")
    booked_covers: int = Field(alias="bookedCovers")
    remaining_covers: int | None = Field(alias="remainingCovers")


class BookingView(_Response):
    id: UUID
    restaurant_id: UUID = Field(alias="restaurantId")
    date: dt.date
    time: SlotTime
    party_size: int = Field(alias="partySize")
    status: Literal["confirmed", "cancelled"]
    source: str
    created_at: str = Field(alias="createdAt", json_schema_extra={"format": "date-time"})  # UTC, to the ms

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BookingView:
        """The public shape of a booking, from a ``bookings`` row (``repository._BOOKING_COLUMNS``)."""
        return cls(
            id=row["id"],
            restaurant_id=row["restaurant_id"],
            date=row["booking_date"],
            time=format_time(row["booking_time"]),
            party_size=row["party_size"],
            status=row["status"],
            source=row["source"],
            created_at=format_timestamp(row["created_at"]),
        )


class BookingCreated(_Response):
    booking: BookingView
    capacity: CapacityView


class BookingEnvelope(_Response):
    booking: BookingView


class SlotAvailability(_Response):
    time: SlotTime
    max_covers: int | None = Field(alias="maxCovers")
    booked_covers: int = Field(alias="bookedCovers")
    remaining_covers: int | None = Field(alias="remainingCovers")


class Availability(_Response):
    restaurant_id: UUID = Field(alias="restaurantId")
    date: dt.date
    slots: list[SlotAvailability]


class AlternativeSlot(_Response):
    date: dt.date
    time: SlotTime
    remaining_covers: int | None = Field(alias="remainingCovers")


def format_time(value: dt.time) -> str:
    return value.strftime("%H:%M")


def format_timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# The problem models describe problem+json in the OpenAPI document and nowhere else: problems
# are written by ``outcomes.problem_body``. Their validators are built when the document (or a
# test) first asks for them, not at each cold start of the booking function.
_DOCUMENT_ONLY = ConfigDict(defer_build=True)


class FieldError(BaseModel):
    model_config = _DOCUMENT_ONLY

    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, with the contract's machine-readable ``code``; members in this
    order for every code (docs/problems.md)."""

    model_config = _DOCUMENT_ONLY

    type: str = Field(description="Absolute URI of the code's section in docs/problems.md")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request id (as in the access log)")
    code: str
    errors: list[FieldError] | None = None
    requested: int | None = None
    remaining_covers: int | None = Field(default=None, alias="remainingCovers")
    alternatives: list[AlternativeSlot] | None = None
