"""Shared helpers of the alert and roll-up tests: bookings and observability events written
straight to the database. The alert channels' stand-ins behind conftest's ``topic`` and
``webhook`` fixtures are capctl's own (``capctl.sns_inbox``, ``capctl.webhook_sink``)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from capacity.notifiers import Notice
from tests.support import RESTAURANT_ID

REGION = "eu-west-1"
OTHER_ID = "99999999-8888-4777-8666-555555555555"
LONDON = ZoneInfo("Europe/London")
GUEST = {"name": "Grace Hopper", "email": "grace@example.com", "phone": "+44 20 7946 0999"}


def slot_date(days_ahead: int = 7) -> dt.date:
    return dt.datetime.now(LONDON).date() + dt.timedelta(days=days_ahead)


def other_restaurant(timezone: str, *weekly: dict[str, Any]) -> dict[str, Any]:
    """A seed file of a second restaurant (OTHER_ID, "Osteria Due") with these weekly rules."""
    return {"restaurants": [{"id": OTHER_ID, "name": "Osteria Due", "timezone": timezone, "weekly": list(weekly)}]}


def insert_booking(
    conn: Any,
    *,
    restaurant_id: str = RESTAURANT_ID,
    date: dt.date,
    time: str = "19:00",
    party_size: int = 4,
    source: str = "web",
    status: str = "confirmed",
) -> str:
    booking_id = str(uuid.uuid4())
    conn.execute(
        """INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source,
                                 idempotency_key, tenant, guest_name, guest_email, guest_phone)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'tenant-a', %s, %s, %s)""",
        (
            booking_id,
            restaurant_id,
            date,
            time,
            party_size,
            status,
            source,
            f"k-{booking_id}",
            GUEST["name"],
            GUEST["email"],
            GUEST["phone"],
        ),
    )
    return booking_id


def overbook(conn: Any, *, restaurant_id: str = RESTAURANT_ID, date: dt.date, time: str = "19:00") -> list[str]:
    """24 confirmed covers in a 20-cover slot: six parties of four."""
    return [insert_booking(conn, restaurant_id=restaurant_id, date=date, time=time) for _ in range(6)]


def insert_event(
    conn: Any,
    event_type: str,
    *,
    restaurant_id: str = RESTAURANT_ID,
    at: dt.datetime | None = None,
    count: int = 1,
    **metadata: Any,
) -> None:
    meta = {
        "restaurantId": restaurant_id,
        "date": "2030-06-14",
        "time": "19:00",
        "attempts": 1,
        "source": "web",
        "partySize": 2,
        **metadata,
    }
    when = at or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    for _ in range(count):
        conn.execute(
            "INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata) VALUES (%s, %s, %s, %s)",
            (event_type, restaurant_id, when, json.dumps(meta)),
        )


def notice(**overrides: Any) -> Notice:
    """An overbooking notice as the alert check raises it, with ``overrides``."""
    values: dict[str, Any] = {
        "alert_type": "overbooking",
        "notice": "opened",
        "severity": "critical",
        "restaurant_id": RESTAURANT_ID,
        "restaurant_name": "Test Trattoria",
        "incident_key": "2030-06-14 19:00",
        "figures": {
            "date": "2030-06-14",
            "time": "19:00",
            "timezone": "Europe/London",
            "maxCovers": 20,
            "acceptedMaxCovers": 20,
            "confirmedCovers": 24,
            "bookings": 6,
            "bookingIds": ["b1", "b2", "b3"],
            "command": f"capctl slot show {RESTAURANT_ID} 2030-06-14 19:00",
        },
        "opened_at": "2030-06-14T18:05:00Z",
        "at": "2030-06-14T18:05:00Z",
        "environment": "prod",
        "runbook_url": "https://runbooks.example/capacity#overbooking",
        "dashboard_url": None,
    }
    values.update(overrides)
    return Notice(**values)
