"""What the booking-path tests read back from the database, and the hot-slot scenario's checks,
shared by the direct path (test_booking_path) and the path through a pooler (test_pooler_booking)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.support import FUTURE_DATE, booking_body, post_booking_event

HOT_SLOT_REQUESTS = 200  # one cover each, on the 20-cover 19:00 slot of FUTURE_DATE


def slot_covers(conn: Any, date: str = FUTURE_DATE, time: str = "19:00") -> int:
    row = conn.execute(
        "SELECT coalesce(sum(party_size), 0)::int AS covers FROM bookings "
        "WHERE status = 'confirmed' AND booking_date = %s AND booking_time = %s",
        (date, time),
    ).fetchone()
    return int(row["covers"])


def event_types(conn: Any) -> Counter[str]:
    return Counter(r["event_type"] for r in conn.execute("SELECT event_type FROM observability_events"))


def hot_slot_events() -> list[dict[str, Any]]:
    """The hot slot's requests: one cover each, each with its own Idempotency-Key."""
    return [post_booking_event(booking_body(partySize=1), key=f"hot-{n}") for n in range(HOT_SLOT_REQUESTS)]


def assert_hot_slot_booked_exactly_full(results: list[tuple[int, dict[str, str], Any]], conn: Any) -> None:
    """Exactly 20 booked, every other request 409 capacity_exceeded; the ledger agrees with the
    bookings; every request recorded its outcome and is replayable."""
    outcomes = Counter((status, body.get("code")) for status, _, body in results)
    assert outcomes == {(201, None): 20, (409, "capacity_exceeded"): HOT_SLOT_REQUESTS - 20}
    assert slot_covers(conn) == 20
    assert conn.execute("SELECT booked_covers FROM slot_usage").fetchone()["booked_covers"] == 20
    types = event_types(conn)
    assert types["booking.success"] == 20 and types["booking.capacity_exceeded"] == HOT_SLOT_REQUESTS - 20
    assert conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()["n"] == HOT_SLOT_REQUESTS
