"""A cancellation is final (migration 010): no role, however privileged, confirms a cancelled
booking again with an UPDATE — that would put covers back in a slot without the guard checking
its capacity. Re-booking goes through the API, where the guard decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from capctl.apigw import rest_event
from tests.support import booking_body, invoke, post_booking_event

pytestmark = pytest.mark.integration

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "010_cancellation_is_final.sql"


def cancelled_booking(booking_app: Any) -> str:
    status, _, created = invoke(booking_app, post_booking_event(booking_body(partySize=4), key="final-1"))
    assert status == 201, created
    booking_id: str = created["booking"]["id"]
    event = rest_event("DELETE", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a")
    assert invoke(booking_app, event)[0] == 200
    return booking_id


def state(conn: Any, booking_id: str) -> tuple[str, int]:
    row = conn.execute(
        """SELECT b.status, u.booked_covers FROM bookings b
             JOIN slot_usage u ON (u.restaurant_id, u.slot_date, u.slot_time)
                                = (b.restaurant_id, b.booking_date, b.booking_time)
            WHERE b.id = %s""",
        (booking_id,),
    ).fetchone()
    return row["status"], row["booked_covers"]


def test_the_owner_cannot_confirm_a_cancelled_booking_again(booking_app, conn):
    booking_id = cancelled_booking(booking_app)
    with pytest.raises(errors.CheckViolation, match="a cancellation is final"):
        conn.execute("UPDATE bookings SET status = 'confirmed', cancelled_at = NULL WHERE id = %s", (booking_id,))
    assert state(conn, booking_id) == ("cancelled", 0)


def test_nor_can_the_functions_role(booking_app, function_user, conn):
    booking_id = cancelled_booking(booking_app)
    with psycopg.connect(function_user, autocommit=True) as function, pytest.raises(errors.CheckViolation):
        function.execute("UPDATE bookings SET status = 'confirmed' WHERE id = %s", (booking_id,))
    assert state(conn, booking_id) == ("cancelled", 0)


def test_cancelling_again_and_rebooking_still_work(booking_app, conn):
    booking_id = cancelled_booking(booking_app)
    conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = %s", (booking_id,))  # a no-op stays allowed
    event = rest_event("DELETE", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a")
    assert invoke(booking_app, event)[0] == 200  # the API's second cancel: the same 200
    status, _, again = invoke(booking_app, post_booking_event(booking_body(partySize=4), key="final-2"))
    assert status == 201 and again["booking"]["id"] != booking_id  # re-booked through the guard
    assert state(conn, again["booking"]["id"]) == ("confirmed", 4)


def test_migration_010_runs_again(conn):
    conn.execute(MIGRATION.read_text().encode())
    triggers = conn.execute(
        "SELECT count(*) AS n FROM pg_trigger WHERE tgname = 'bookings_cancellation_is_final'"
    ).fetchone()
    assert triggers["n"] == 1
