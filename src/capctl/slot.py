"""`capctl slot show|close`: one slot's forensics, and stopping its bleeding.

``show`` answers what an on-call operator asks first about a slot an alert names: which rule
sets its capacity and where that rule came from (its change history), whether the usage ledger
agrees with a recount from ``bookings``, every booking of the slot (the ids to cancel or move;
guest contact only with ``--with-contact``), and its recent outcome events.

``close`` stops new bookings of a slot (or a range of slots) at once with an override of 0
covers, recorded in the capacity history with the operator's name and reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from capacity.camel_json import iso_instant
from capacity.changes import change_line, changes_of_slot
from capacity.db import DictConnection
from capacity.incidents import slot_command
from capacity.reconcile import load_rules, slot_states_of
from capacity.rules import Capacity, Override, RestaurantRules, WeeklyRule
from capctl.errors import UserError
from capctl.seed import default_actor, set_actor
from capctl.text import plural

RECENT_EVENTS = 20
T = TypeVar("T")

_RESTAURANT = "SELECT id, name, timezone, slot_minutes FROM restaurants WHERE id = %s"
_LEDGER = "SELECT booked_covers FROM slot_usage WHERE restaurant_id = %s AND slot_date = %s AND slot_time = %s"
_BOOKINGS = """
SELECT id, created_at, source, party_size, status, guarded, accepted_max_covers, cancelled_at,
       guest_name, guest_email, guest_phone
  FROM bookings
 WHERE restaurant_id = %s AND booking_date = %s AND booking_time = %s
 ORDER BY created_at, id
"""
# The slot's own outcome events: their metadata names the slot (date and HH:MM).
_EVENTS = """
SELECT id, event_type, occurred_at, metadata
  FROM observability_events
 WHERE restaurant_id = %s AND metadata ->> 'date' = %s AND metadata ->> 'time' = %s
 ORDER BY occurred_at DESC, id DESC
 LIMIT %s
"""
# One override of 0 per slot, one slot wide: the narrowest an override can be, so it wins over
# any other override of the slot (equally narrow ones resolve to the lowest: 0).
_CLOSE = """
INSERT INTO capacity_overrides (restaurant_id, override_date, start_time, end_time, max_covers, reason, managed_by)
VALUES (%s, %s, %s, %s, 0, %s, 'operator')
"""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="slot_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="rule, history, ledger vs recount, bookings and events of one slot")
    _slot_arguments(show)
    show.add_argument("--json", action="store_true", help="print the forensics as JSON")
    show.add_argument(
        "--with-contact", action="store_true", help="include guests' names, emails and phones (personal data)"
    )
    close = sub.add_parser("close", help="stop new bookings of a slot: a recorded override of 0 covers")
    _slot_arguments(close)
    close.add_argument("--reason", required=True, help="why, recorded with the override and in the history")
    close.add_argument("--until", metavar="HH:MM", help="close every slot from TIME up to this time (exclusive)")
    close.add_argument("--actor", help="who closes it, recorded in the history (default: your OS user name)")


def _slot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("restaurant_id", metavar="RESTAURANT_ID", help="the restaurant's id (a UUID)")
    parser.add_argument("date", metavar="DATE", help="the slot's date, YYYY-MM-DD (the restaurant's local date)")
    parser.add_argument("time", metavar="TIME", help="the slot's time, HH:MM (the restaurant's local time)")


def _parse_slot(args: argparse.Namespace) -> tuple[uuid.UUID, dt.date, dt.time]:
    try:
        restaurant_id = uuid.UUID(args.restaurant_id)
    except ValueError:
        raise UserError(f"RESTAURANT_ID must be a UUID, not {args.restaurant_id!r}") from None
    date = _exactly(args.date, "DATE", "date", "YYYY-MM-DD", dt.date.fromisoformat)
    return restaurant_id, date, _time(args.time, "TIME")


def _time(value: str, name: str) -> dt.time:
    return _exactly(value, name, "time", "HH:MM", dt.time.fromisoformat)


def _exactly(value: str, name: str, kind: str, form: str, parse: Callable[[str], T]) -> T:
    """``value`` written exactly as ``form`` (HH:MM, not also HH:MM:SS), or a one-line error."""
    try:
        if len(value) == len(form):
            return parse(value)
    except ValueError:
        pass
    raise UserError(f"{name} must be a {kind} as {form}, not {value!r}")


def _restaurant(conn: DictConnection, restaurant_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(_RESTAURANT, (restaurant_id,)).fetchone()
    if row is None:
        raise UserError(f"no restaurant {restaurant_id}")
    return row


def _hhmm(value: dt.time | None) -> str | None:
    return value.strftime("%H:%M") if value is not None else None


def rule_json(capacity: Capacity) -> dict[str, Any]:
    rule = capacity.rule
    described: dict[str, Any] = {"maxCovers": capacity.max_covers, "source": capacity.source}
    if isinstance(rule, Override):
        described.update(start=_hhmm(rule.start), end=_hhmm(rule.end), reason=rule.reason)
    elif isinstance(rule, WeeklyRule):
        described.update(weekday=rule.weekday, start=_hhmm(rule.start), end=_hhmm(rule.end))
    return described


def forensics(
    conn: DictConnection, restaurant_id: uuid.UUID, date: dt.date, time: dt.time, *, with_contact: bool = False
) -> dict[str, Any]:
    restaurant = _restaurant(conn, restaurant_id)
    rules = load_rules(conn, [restaurant_id], [date])[restaurant_id]
    capacity = rules.capacity(date, time)
    ledger = conn.execute(_LEDGER, (restaurant_id, date, time)).fetchone()
    found = slot_states_of(conn, [(restaurant_id, date, time)])
    state = found[0] if found else None
    bookings = []
    for b in conn.execute(_BOOKINGS, (restaurant_id, date, time)):
        booking = {
            "id": str(b["id"]),
            "createdAt": iso_instant(b["created_at"]),
            "source": b["source"],
            "partySize": b["party_size"],
            "status": b["status"],
            "acceptedMaxCovers": b["accepted_max_covers"],
            "guarded": b["guarded"],  # false: not accepted by the engine's guard (plain SQL)
        }
        if with_contact:
            booking["guest"] = {"name": b["guest_name"], "email": b["guest_email"], "phone": b["guest_phone"]}
        bookings.append(booking)
    events = [
        {"id": e["id"], "type": e["event_type"], "occurredAt": iso_instant(e["occurred_at"]), "metadata": e["metadata"]}
        for e in conn.execute(_EVENTS, (restaurant_id, date.isoformat(), _hhmm(time), RECENT_EVENTS))
    ]
    condition = "ok"
    if state is not None and state.over_capacity:
        condition = "overbooked"
    elif state is not None and state.below_bookings:
        condition = "below_bookings"
    return {
        "restaurantId": str(restaurant_id),
        "restaurantName": restaurant["name"],
        "timezone": restaurant["timezone"],
        "date": date.isoformat(),
        "time": _hhmm(time),
        "onGrid": rules.on_grid(time),
        "rule": rule_json(capacity),
        "condition": condition,
        "acceptedMaxCovers": state.accepted_max_covers if state else None,
        "ledgerCovers": ledger["booked_covers"] if ledger else 0,
        "confirmedCovers": state.confirmed_covers if state else 0,
        "changes": [c.as_json() for c in changes_of_slot(conn, restaurant_id, date, time)],
        "bookings": bookings,
        "events": events,
    }


def _covers(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _rule_line(rule: dict[str, Any]) -> str:
    if rule["source"] == "none":
        return "closed: no rule holds this time"
    span = f"{rule['start']}-{rule['end']}" if rule.get("start") else "whole date"
    if rule["source"] == "weekly":
        where = f"weekly rule, ISO weekday {rule['weekday']}, {span}"
    else:
        where = f"override of this date, {span} (reason: {rule.get('reason') or 'none given'})"
    return f"{_covers(rule['maxCovers'])} covers, from the {where}"


_CONDITION = {
    "ok": "within capacity",
    "overbooked": "OVERBOOKED: confirmed covers exceed the capacity they were accepted under (guard failure)",
    "below_bookings": "BELOW BOOKINGS: the capacity was lowered after these bookings were accepted; move guests",
}


def render(found: dict[str, Any]) -> str:
    confirmed = [b for b in found["bookings"] if b["status"] == "confirmed"]
    lines = [
        f"{found['restaurantName']} ({found['restaurantId']}) {found['date']} {found['time']} {found['timezone']}",
        f"rule in force: {_rule_line(found['rule'])}" + ("" if found["onGrid"] else " (time is off the slot grid)"),
        f"state: {_CONDITION[found['condition']]}",
        f"covers: {found['confirmedCovers']} confirmed (recount from bookings), ledger {found['ledgerCovers']}"
        + ("" if found["ledgerCovers"] == found["confirmedCovers"] else "  <- MISMATCH: ledger and recount disagree"),
        f"history ({len(found['changes'])}):",
    ]
    lines += [f"  #{c['id']} {change_line(c)}" for c in found["changes"]] or ["  no recorded change touches this slot"]
    lines.append(f"bookings ({len(confirmed)} confirmed of {len(found['bookings'])}):")
    for b in found["bookings"]:
        accepted = f"accepted under {_covers(b['acceptedMaxCovers'])}" if b["guarded"] else "NOT through the guard"
        guest = ""
        if "guest" in b:
            guest = "  " + " / ".join(str(v) for v in b["guest"].values() if v)
        lines.append(
            f"  {b['id']}  {b['createdAt']}  {b['status']:<9}  party {b['partySize']:>2}  {b['source']:<10} "
            f"{accepted}{guest}"
        )
    lines.append(f"recent events ({len(found['events'])}, newest first):")
    lines += [f"  {e['occurredAt']}  {e['type']}" for e in found["events"]] or ["  none"]
    return "\n".join(lines)


def close(
    conn: DictConnection,
    restaurant_id: uuid.UUID,
    date: dt.date,
    time: dt.time,
    *,
    reason: str,
    until: dt.time | None = None,
    actor: str | None = None,
) -> tuple[list[dt.time], list[dict[str, Any]]]:
    """Close every slot of [time, until) (one slot without ``until``; 00:00 is midnight) with a
    recorded override of 0 covers each. Returns the slots closed and the history rows written."""
    if not reason.strip():
        raise UserError("--reason must say why the slot is closed")
    restaurant = _restaurant(conn, restaurant_id)
    rules = load_rules(conn, [restaurant_id], [date])[restaurant_id]
    slots = _slots_to_close(rules, restaurant, date, time, until)
    step = dt.timedelta(minutes=restaurant["slot_minutes"])
    with conn.transaction():
        set_actor(conn, actor or default_actor(), reason)
        first = conn.execute("SELECT coalesce(max(id), 0) AS id FROM capacity_changes").fetchone()
        assert first is not None
        for slot in slots:
            end = (dt.datetime.combine(date, slot) + step).time()
            conn.execute(_CLOSE, (restaurant_id, date, slot, end, reason))
        # What it says is what it does: every slot of the range resolves to 0 now.
        closed = load_rules(conn, [restaurant_id], [date])[restaurant_id]
        still_open = [s for s in slots if not closed.capacity(date, s).closed]
        if still_open:
            raise UserError(f"could not close {', '.join(_hhmm(s) or '' for s in still_open)}; nothing was changed")
        changes = conn.execute(
            "SELECT id, changed_at, actor, kind, reason FROM capacity_changes WHERE id > %s ORDER BY id", (first["id"],)
        ).fetchall()
    return slots, changes


def _slots_to_close(
    rules: RestaurantRules, restaurant: dict[str, Any], date: dt.date, time: dt.time, until: dt.time | None
) -> list[dt.time]:
    minutes = restaurant["slot_minutes"]
    for name, value in (("TIME", time), ("--until", until)):
        if value is not None and not rules.on_grid(value):
            raise UserError(f"{name} {_hhmm(value)} is not on this restaurant's {minutes}-minute slot grid")
    start = time.hour * 60 + time.minute
    end = start + minutes if until is None else (until.hour * 60 + until.minute) or 24 * 60
    if end <= start:
        raise UserError(f"--until {_hhmm(until)} must be after {_hhmm(time)} (00:00 means midnight)")
    local_now = dt.datetime.now(ZoneInfo(restaurant["timezone"]))
    slots = [dt.time(m // 60, m % 60) for m in range(start, end, minutes)]
    slots = [s for s in slots if (date, s) >= (local_now.date(), local_now.time())]
    if not slots:
        raise UserError(f"{date.isoformat()} {_hhmm(time)} has already begun: there is nothing left to close")
    return slots


def run(args: argparse.Namespace, name: str) -> int:
    from capctl import database

    restaurant_id, date, time = _parse_slot(args)
    if args.slot_command == "close":
        until = _time(args.until, "--until") if args.until else None
        with database.connection() as conn:
            slots, changes = close(conn, restaurant_id, date, time, reason=args.reason, until=until, actor=args.actor)
        span = _hhmm(slots[0]) if len(slots) == 1 else f"{_hhmm(slots[0])}-{_hhmm(slots[-1])}"
        ids = ", ".join(f"#{c['id']}" for c in changes)
        print(
            f"closed {restaurant_id} {date.isoformat()} {span} ({plural(len(slots), 'slot')}): "
            f"override of 0 covers each, recorded as {plural(len(changes), 'change')} {ids}"
        )
        print(f"next: {slot_command(restaurant_id, date, time)}")
        return 0
    with database.connection() as conn:
        found = forensics(conn, restaurant_id, date, time, with_contact=args.with_contact)
    print(json.dumps(found, indent=2, default=str) if args.json else render(found))
    return 0
