from __future__ import annotations

from tests.support import FUTURE_DATE, booking_body, invoke, post_booking_event


def test_books_and_replays(booking_app, conn):
    status, headers, body = invoke(booking_app, post_booking_event(booking_body()))
    assert status == 201, body
    assert body["capacity"] == {"maxCovers": 20, "bookedCovers": 2, "remainingCovers": 18}
    assert headers["Location"] == f"/bookings/{body['booking']['id']}"
    status2, headers2, body2 = invoke(booking_app, post_booking_event(booking_body()))
    assert (status2, body2) == (201, body)
    assert headers2["Idempotent-Replayed"] == "true"
    rows = conn.execute("SELECT booking_date::text, party_size, status FROM bookings").fetchall()
    assert rows == [{"booking_date": FUTURE_DATE, "party_size": 2, "status": "confirmed"}]
    events = conn.execute("SELECT event_type FROM observability_events").fetchall()
    assert [e["event_type"] for e in events] == ["booking.success"]
