"""`capctl booking cancel ID`: an operator cancels a booking as `DELETE /bookings/{id}` would,
without the API key of the tenant that made it — the same statement, so the booking's covers are
freed in the slot's ledger and a booking.cancelled event is recorded, in one transaction."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from capacity import repository
from capacity.db import DictConnection
from capctl.errors import UserError
from capctl.text import plural


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="booking_command", required=True, metavar="ACTION")
    cancel = sub.add_parser("cancel", help="cancel a booking: frees its covers and records booking.cancelled")
    cancel.add_argument("booking_id", metavar="BOOKING_ID", help="the booking's id (capctl slot show lists them)")


def cancel(conn: DictConnection, booking_id: uuid.UUID) -> tuple[dict[str, Any], bool]:
    """The booking after the cancel, and whether this call cancelled it (False: it already was)."""
    row = conn.execute("SELECT tenant FROM bookings WHERE id = %s", (booking_id,)).fetchone()
    if row is None:
        raise UserError(f"no booking {booking_id}")
    cancelled = repository.cancel_booking(conn, booking_id, row["tenant"])
    if cancelled is not None:
        return cancelled, True
    current = repository.get_booking(conn, booking_id, row["tenant"])
    assert current is not None
    return current, False


def run(args: argparse.Namespace, name: str) -> int:
    from capctl import database

    try:
        booking_id = uuid.UUID(args.booking_id)
    except ValueError:
        raise UserError(f"BOOKING_ID must be a UUID, not {args.booking_id!r}") from None
    with database.connection() as conn:
        booking, now = cancel(conn, booking_id)
    slot = f"{booking['restaurant_id']} {booking['booking_date']} {booking['booking_time']:%H:%M}"
    if now:
        print(f"cancelled {booking_id}: {plural(booking['party_size'], 'cover')} freed at {slot}")
    else:
        print(f"{booking_id} was already cancelled ({slot}): nothing changed")
    return 0
