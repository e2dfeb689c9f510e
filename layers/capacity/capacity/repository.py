"""Every SQL statement of the booking path, in one place. Parameterised SQL only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import errors
from psycopg.types.json import Jsonb

from capacity.db import DictConnection
from capacity.outcomes import EventType
from capacity.rules import RestaurantRules, clock


@dataclass(frozen=True, slots=True)
class Restaurant:
    id: UUID
    timezone: str
    rules: RestaurantRules
    booking_horizon_days: int = 365


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: str
    status_code: int
    body: dict[str, Any]
    expired: bool


@dataclass(frozen=True, slots=True)
class BookingContext:
    """What the booking path reads before its write, in one round trip."""

    stored: StoredResponse | None
    restaurant: Restaurant | None
    booked_covers: int  # of the requested slot
    usage: dict[dt.time, int]  # booked covers of each slot of the date: a refusal's alternatives


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewBooking:
    id: UUID
    restaurant_id: UUID
    date: dt.date
    time: dt.time
    party_size: int
    source: str
    tenant: str
    idempotency_key: str
    run_id: str | None
    guest_name: str
    guest_email: str | None
    guest_phone: str | None
    notes: str | None
    created_at: dt.datetime

    def as_row(self) -> dict[str, Any]:
        """The ``bookings`` row this booking becomes (the columns a booking's view is read from)."""
        return {
            "id": self.id,
            "restaurant_id": self.restaurant_id,
            "booking_date": self.date,
            "booking_time": self.time,
            "party_size": self.party_size,
            "status": "confirmed",
            "source": self.source,
            "created_at": self.created_at,
        }


class DuplicateKey(Exception):
    """Another request with the same (tenant, Idempotency-Key) committed first (perhaps while
    this one waited for it on the key's index entry)."""


# The rules of one date, as rows of their tables (to_jsonb: every column, by its name), for
# ``RestaurantRules.from_rows``: weekly rules of the date's ISO weekday and its overrides.
_RULES_OF_DATE = """
    (SELECT coalesce(jsonb_agg(to_jsonb(w)), '[]')
       FROM weekly_rules w WHERE w.restaurant_id = r.id AND w.weekday = extract(isodow FROM %(date)s::date)) AS weekly,
    (SELECT coalesce(jsonb_agg(to_jsonb(o)), '[]')
       FROM capacity_overrides o WHERE o.restaurant_id = r.id AND o.override_date = %(date)s::date) AS overrides
"""

# The date's booked covers per slot, one JSON object {"HH:MM:SS": covers}: the one reading of a
# date's usage, for the booking context, the availability and a refusal after a lost race.
_USAGE_OF_DATE = """
    (SELECT coalesce(jsonb_object_agg(u.slot_time::text, u.booked_covers), '{}')
       FROM slot_usage u WHERE u.restaurant_id = %(restaurant_id)s AND u.slot_date = %(date)s::date) AS usage
"""

_USAGE_ALONE = f"SELECT {_USAGE_OF_DATE}"

_BOOKING_CONTEXT = f"""
SELECT
    (SELECT jsonb_build_object('fingerprint', k.fingerprint, 'statusCode', k.status_code,
                               'response', k.response, 'expired', k.expires_at < now())
       FROM idempotency_keys k WHERE k.tenant = %(tenant)s AND k.key = %(key)s) AS stored,
    r.id, r.timezone, r.slot_minutes, r.max_party_size, r.booking_horizon_days,
    {_RULES_OF_DATE},
    {_USAGE_OF_DATE}
FROM (VALUES (1)) AS one (x)
LEFT JOIN restaurants r ON r.id = %(restaurant_id)s
"""

_DAY = f"""
SELECT r.id, r.timezone, r.slot_minutes, r.max_party_size, r.booking_horizon_days,
    {_RULES_OF_DATE},
    {_USAGE_OF_DATE}
FROM restaurants r WHERE r.id = %(restaurant_id)s
"""

# The guarded write: one statement, so one transaction in autocommit. The conditional upsert on
# the slot's usage row is the only point where concurrent bookings of a slot serialise; every
# later sub-statement reads its RETURNING, so nothing is written when the slot is full.
# Idempotency rests on the key's primary key alone (no advisory lock: an advisory-lock function
# pins the connection behind RDS Proxy). A duplicate that writes while the first is in flight
# waits on the key's index entry until the first commits, then fails with a unique violation,
# which rolls back its whole statement (usage, booking, events); the caller re-reads and replays
# the original. A duplicate that starts after the first committed fails the same way at once.
_BOOK = """
WITH usage AS (
    INSERT INTO slot_usage AS u (restaurant_id, slot_date, slot_time, booked_covers)
    SELECT %(restaurant_id)s, %(date)s, %(time)s, %(party_size)s
     WHERE %(max_covers)s::int IS NULL OR %(party_size)s <= %(max_covers)s::int
    ON CONFLICT (restaurant_id, slot_date, slot_time) DO UPDATE
       SET booked_covers = u.booked_covers + EXCLUDED.booked_covers
     WHERE %(max_covers)s::int IS NULL OR u.booked_covers + EXCLUDED.booked_covers <= %(max_covers)s::int
    RETURNING booked_covers
), booking AS (
    INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source,
                          idempotency_key, tenant, run_id, guest_name, guest_email, guest_phone, notes, created_at,
                          guarded, accepted_max_covers)
    SELECT %(id)s, %(restaurant_id)s, %(date)s, %(time)s, %(party_size)s, 'confirmed', %(source)s,
           %(key)s, %(tenant)s, %(run_id)s, %(guest_name)s, %(guest_email)s, %(guest_phone)s, %(notes)s,
           %(created_at)s, true, %(max_covers)s::int
      FROM usage
    RETURNING id
), claim AS (
    INSERT INTO idempotency_keys (tenant, key, fingerprint, status_code, response, expires_at)
    SELECT %(tenant)s, %(key)s, %(fingerprint)s, 201,
           jsonb_build_object('booking', %(booking)s::jsonb, 'capacity', jsonb_build_object(
               'maxCovers', %(max_covers)s::int,
               'bookedCovers', usage.booked_covers,
               'remainingCovers', %(max_covers)s::int - usage.booked_covers)),
           now() + make_interval(hours => %(ttl_hours)s)
      FROM usage, booking
    RETURNING response
), events AS (
    INSERT INTO observability_events (event_type, restaurant_id, metadata)
    SELECT e ->> 'type', %(restaurant_id)s, e -> 'metadata'
      FROM jsonb_array_elements(%(events)s::jsonb) AS e, booking
)
SELECT (SELECT response FROM claim) AS response
"""

# A refusal (full or closed slot): its events and its idempotency record, one statement. The
# answer is the stored response, so the first answer and every replay are the same bytes.
_REFUSE = """
WITH claim AS (
    INSERT INTO idempotency_keys (tenant, key, fingerprint, status_code, response, expires_at)
    VALUES (%(tenant)s, %(key)s, %(fingerprint)s, %(status_code)s, %(response)s,
            now() + make_interval(hours => %(ttl_hours)s))
    RETURNING response
), events AS (
    INSERT INTO observability_events (event_type, restaurant_id, metadata)
    SELECT e ->> 'type', %(restaurant_id)s, e -> 'metadata'
      FROM jsonb_array_elements(%(events)s::jsonb) AS e, claim
)
SELECT response FROM claim
"""

_EVENTS = """
INSERT INTO observability_events (event_type, restaurant_id, metadata)
SELECT e ->> 'type', %(restaurant_id)s, e -> 'metadata' FROM jsonb_array_elements(%(events)s::jsonb) AS e
"""

_DELETE_EXPIRED_KEY = """
DELETE FROM idempotency_keys WHERE tenant = %(tenant)s AND key = %(key)s AND expires_at < now()
"""

_BOOKING_COLUMNS = "id, restaurant_id, booking_date, booking_time, party_size, status, source, created_at"

_GET_BOOKING = f"SELECT {_BOOKING_COLUMNS} FROM bookings WHERE id = %(id)s AND tenant = %(tenant)s"

# Cancel: the status change, the freed covers and the event commit together, once.
_CANCEL = f"""
WITH cancelled AS (
    UPDATE bookings SET status = 'cancelled', cancelled_at = now()
     WHERE id = %(id)s AND tenant = %(tenant)s AND status = 'confirmed'
    RETURNING {_BOOKING_COLUMNS}
), freed AS (
    UPDATE slot_usage u SET booked_covers = greatest(u.booked_covers - c.party_size, 0)
      FROM cancelled c
     WHERE u.restaurant_id = c.restaurant_id AND u.slot_date = c.booking_date AND u.slot_time = c.booking_time
), event AS (
    INSERT INTO observability_events (event_type, restaurant_id, metadata)
    SELECT %(event_type)s, c.restaurant_id,
           jsonb_build_object('restaurantId', c.restaurant_id, 'date', c.booking_date,
                              'time', to_char(c.booking_time, 'HH24:MI'), 'attempts', 1,
                              'source', c.source, 'partySize', c.party_size, 'bookingId', c.id)
      FROM cancelled c
)
SELECT * FROM cancelled
"""


def _restaurant(row: dict[str, Any]) -> Restaurant:
    rules = RestaurantRules.from_rows(row, row["weekly"], row["overrides"])
    return Restaurant(
        id=row["id"], timezone=row["timezone"], rules=rules, booking_horizon_days=row["booking_horizon_days"]
    )


def load_booking_context(
    conn: DictConnection, *, tenant: str, key: str, restaurant_id: UUID, date: dt.date, time: dt.time
) -> BookingContext:
    row = conn.execute(
        _BOOKING_CONTEXT,
        {"tenant": tenant, "key": key, "restaurant_id": restaurant_id, "date": date},
    ).fetchone()
    assert row is not None  # the VALUES row is always there
    stored_json = row["stored"]
    stored = None
    if stored_json is not None:
        stored = StoredResponse(
            fingerprint=stored_json["fingerprint"],
            status_code=stored_json["statusCode"],
            body=stored_json["response"],
            expired=stored_json["expired"],
        )
    restaurant = _restaurant(row) if row["id"] is not None else None
    usage = _usage(row)
    return BookingContext(stored=stored, restaurant=restaurant, booked_covers=usage.get(time, 0), usage=usage)


def load_day(conn: DictConnection, restaurant_id: UUID, date: dt.date) -> tuple[Restaurant, dict[dt.time, int]] | None:
    row = conn.execute(_DAY, {"restaurant_id": restaurant_id, "date": date}).fetchone()
    if row is None:
        return None
    return _restaurant(row), _usage(row)


def usage_of_date(conn: DictConnection, restaurant_id: UUID, date: dt.date) -> dict[dt.time, int]:
    row = conn.execute(_USAGE_ALONE, {"restaurant_id": restaurant_id, "date": date}).fetchone()
    assert row is not None  # an aggregate always answers a row
    return _usage(row)


def _usage(row: dict[str, Any]) -> dict[dt.time, int]:
    return {clock(t): covers for t, covers in row["usage"].items()}


def _events_param(events: Sequence[Event]) -> Jsonb:
    return Jsonb([{"type": e.type, "metadata": e.metadata} for e in events])


def book(
    conn: DictConnection,
    booking: NewBooking,
    *,
    max_covers: int | None,
    fingerprint: str,
    response_booking: dict[str, Any],
    events: Sequence[Event],
    ttl_hours: int,
) -> dict[str, Any] | None:
    """The guarded write. Returns the stored 201 body, or None when the slot had no room.

    Raises ``DuplicateKey`` when a request with the same key committed since this request's read
    (if it was still in flight, after waiting for it to commit); nothing is written then.
    """
    params = {
        "restaurant_id": booking.restaurant_id,
        "date": booking.date,
        "time": booking.time,
        "party_size": booking.party_size,
        "max_covers": max_covers,
        "id": booking.id,
        "source": booking.source,
        "key": booking.idempotency_key,
        "tenant": booking.tenant,
        "run_id": booking.run_id,
        "guest_name": booking.guest_name,
        "guest_email": booking.guest_email,
        "guest_phone": booking.guest_phone,
        "notes": booking.notes,
        "created_at": booking.created_at,
        "fingerprint": fingerprint,
        "booking": Jsonb(response_booking),
        "ttl_hours": ttl_hours,
        "events": _events_param(events),
    }
    try:
        row = conn.execute(_BOOK, params).fetchone()
    except errors.UniqueViolation as exc:
        raise DuplicateKey from exc
    assert row is not None
    response: dict[str, Any] | None = row["response"]
    return response


def refuse(
    conn: DictConnection,
    *,
    tenant: str,
    key: str,
    fingerprint: str,
    restaurant_id: UUID,
    status_code: int,
    response: dict[str, Any],
    events: Sequence[Event],
    ttl_hours: int,
) -> dict[str, Any]:
    """Store a refusal under the key with its events; returns the stored response."""
    try:
        row = conn.execute(
            _REFUSE,
            {
                "tenant": tenant,
                "key": key,
                "fingerprint": fingerprint,
                "status_code": status_code,
                "response": Jsonb(response),
                "ttl_hours": ttl_hours,
                "restaurant_id": restaurant_id,
                "events": _events_param(events),
            },
        ).fetchone()
    except errors.UniqueViolation as exc:
        raise DuplicateKey from exc
    assert row is not None
    stored: dict[str, Any] = row["response"]
    return stored


def record_events(conn: DictConnection, restaurant_id: UUID | None, events: Sequence[Event]) -> None:
    conn.execute(_EVENTS, {"restaurant_id": restaurant_id, "events": _events_param(events)})


def delete_expired_key(conn: DictConnection, *, tenant: str, key: str) -> None:
    conn.execute(_DELETE_EXPIRED_KEY, {"tenant": tenant, "key": key})


def get_booking(conn: DictConnection, booking_id: UUID, tenant: str) -> dict[str, Any] | None:
    return conn.execute(_GET_BOOKING, {"id": booking_id, "tenant": tenant}).fetchone()


def cancel_booking(conn: DictConnection, booking_id: UUID, tenant: str) -> dict[str, Any] | None:
    """Cancel a confirmed booking; None when there was nothing to cancel (see ``get_booking``)."""
    params = {"id": booking_id, "tenant": tenant, "event_type": EventType.CANCELLED.value}
    return conn.execute(_CANCEL, params).fetchone()
