"""`capctl verify [--restaurant ID] [--change ID|none] [--json]`: reconcile every booked slot,
and tell the two conditions apart.

* **overbooked** — confirmed covers exceed the capacity they were accepted under: the guard
  failed or was bypassed. Exit 1.
* **below bookings** — the capacity was lowered after bookings were accepted, below their
  covers: a capacity change whose guests need moving. Reported with the change; exit 0.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from capacity.changes import change_line, changes_behind
from capacity.db import DictConnection
from capacity.incidents import slot_command
from capacity.reconcile import SlotState, below_bookings, over_capacity, slot_states
from capctl.errors import UserError
from capctl.text import plural


def _restaurant(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a restaurant id (a UUID): {value!r}") from None


def _change(value: str) -> str:
    if value != "none" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a change id (a number, or none): {value!r}")
    return value if value == "none" else str(int(value))


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--restaurant", metavar="ID", type=_restaurant, help="only this restaurant's slots")
    parser.add_argument(
        "--change",
        metavar="ID",
        type=_change,
        help="of the slots below bookings, only those this capacity change explains (the id an alert names;"
        " none: those no recorded change explains); overbooked slots are always listed",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (overCapacitySlots, belowBookingsSlots)"
    )


def verify(
    conn: DictConnection,
    restaurants: dict[uuid.UUID, dict[str, Any]],
    *,
    restaurant_id: uuid.UUID | None = None,
    change: str | None = None,
) -> dict[str, Any]:
    """Every booked slot (of one restaurant): the overbooked ones (any date: a guard failure stays
    one), and the ones below bookings that have not begun yet (a dinner that is over has no guests
    left to move) — of one capacity change when ``change`` names its id ("none": no recorded change)."""
    if restaurant_id is not None and restaurant_id not in restaurants:
        raise UserError(f"no restaurant {restaurant_id} in the database")
    states = slot_states(conn, restaurant_ids=None if restaurant_id is None else [restaurant_id])
    upcoming = [s for s in below_bookings(states) if not s.has_begun(restaurants[s.restaurant_id]["timezone"])]
    causes = changes_behind(conn, upcoming)
    below = []
    for s in upcoming:
        cause = causes[(s.restaurant_id, s.date, s.time)]
        if change is not None and change != ("none" if cause is None else str(cause.id)):
            continue
        below.append({**s.as_json(), "command": _command(s), "change": cause.as_json() if cause else None})
    over = [{**s.as_json(), "command": _command(s)} for s in over_capacity(states)]
    return {"slots": len(states), "overCapacitySlots": over, "belowBookingsSlots": below, "passed": not over}


def _command(s: SlotState) -> str:
    return slot_command(s.restaurant_id, s.date, s.time)


def _where(s: dict[str, Any], names: dict[str, str]) -> str:
    return f"{names.get(s['restaurantId'], '?')} ({s['restaurantId']}) {s['date']} {s['time']}"


def render(result: dict[str, Any], names: dict[str, str]) -> str:
    over, below = result["overCapacitySlots"], result["belowBookingsSlots"]
    lines = [
        f"reconciled {plural(result['slots'], 'slot')} with confirmed bookings: "
        f"{len(over)} overbooked, {len(below)} below bookings after a capacity change"
    ]
    for s in over:
        limit = s["acceptedMaxCovers"]
        held_to = (
            f"accepted under max {limit}"
            if s["acceptedByGuard"]
            else f"max {limit} (no booking of it passed the guard)"
        )
        lines.append(
            f"OVERBOOKED {_where(s, names)}: {s['confirmedCovers']} covers confirmed, {held_to} "
            f"({s['confirmedCovers'] - limit} over) in {plural(s['bookings'], 'booking')} - guard failure"
        )
        lines.append(f"  next: {s['command']}")
    for s in below:
        change = s["change"]
        why = f"; changed {change_line(change)}" if change else "; no recorded change"
        lines.append(
            f"BELOW BOOKINGS {_where(s, names)}: capacity now {s['maxCovers']}, "
            f"{s['confirmedCovers']} covers confirmed in {plural(s['bookings'], 'booking')}{why}"
        )
        lines.append(f"  next: {s['command']}  (move guests or raise the capacity)")
    return "\n".join(lines)


def run(args: argparse.Namespace, name: str) -> int:
    from capctl import database

    with database.connection() as conn:
        restaurants = {r["id"]: r for r in conn.execute("SELECT id, name, timezone FROM restaurants")}
        result = verify(conn, restaurants, restaurant_id=args.restaurant, change=args.change)
    names = {str(rid): r["name"] for rid, r in restaurants.items()}
    print(json.dumps(result, indent=2) if args.json else render(result, names))
    return 0 if result["passed"] else 1
