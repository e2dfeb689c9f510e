"""Alert incidents: what an alert is about, and the state machine that moves each one.

Pure: no I/O. An incident is one condition of one restaurant: a slot's overbooking (its covers
exceed the capacity they were accepted under), a capacity change's slots below their bookings
(the capacity was lowered after they were accepted: one incident per change, however many slots
it touched), or the restaurant's last hour (conflict rate, retry exhaustion). ``plan`` decides,
from what holds now and what is open, which incidents open, remind, stay quiet or resolve;
``alerts.AlertChecker`` stores and announces the result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, computed_field

from capacity import figures
from capacity.camel_json import CamelJson, iso_seconds, rounded
from capacity.changes import CapacityChange
from capacity.reconcile import SlotState
from capacity.scheduled_settings import AlertSettings


class AlertKind(StrEnum):
    OVERBOOKING = "overbooking"  # a guard failure: covers over the capacity they were accepted under
    CAPACITY_BELOW_BOOKINGS = "capacity_below_bookings"  # capacity lowered below covers already accepted
    CONFLICT_RATE = "conflict_rate"
    RETRY_EXHAUSTION = "retry_exhaustion"


class NoticeType(StrEnum):
    OPENED = "opened"
    REMINDER = "reminder"
    RESOLVED = "resolved"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


class Action(StrEnum):
    OPEN = "open"
    REMIND = "remind"
    UPDATE = "update"  # still open, inside the cooldown: figures refreshed, nobody notified
    RESOLVE = "resolve"
    SUPERSEDE = "supersede"  # a per-slot incident from before 008 closed into its group: no notice


SEVERITY = {
    AlertKind.OVERBOOKING: Severity.CRITICAL,
    AlertKind.CAPACITY_BELOW_BOOKINGS: Severity.WARNING,
    AlertKind.CONFLICT_RATE: Severity.WARNING,
    AlertKind.RETRY_EXHAUSTION: Severity.WARNING,
}


# Alerts about one slot: an overbooking is one incident per slot (each is its own emergency). A
# capacity below bookings is one incident per capacity change (one decision, one notice), whatever
# the number of slots it put below their bookings.
SLOT_ALERTS = frozenset({AlertKind.OVERBOOKING, AlertKind.CAPACITY_BELOW_BOOKINGS})
MAX_BOOKING_IDS = 20  # booking ids carried by a notice; `capctl slot show` lists them all
MAX_SLOTS_NAMED = 5  # slots a grouped notice names; its command (below_bookings_command) lists them all
NO_RECORDED_CHANGE = "no recorded change"

SlotTime = tuple[dt.date, dt.time]  # a slot of one restaurant: local date and time


@dataclass(frozen=True, slots=True)
class IncidentKey:
    """What an incident is about, field by field (never parsed from its label).

    * overbooking: the slot;
    * capacity below bookings: the change behind it (``change_id``), or none recorded (a rule
      changed before the history existed): then every such slot of the restaurant is one
      incident, since nothing tells its causes apart; a key with a ``slot`` is a per-slot
      incident opened before migration 008 (``legacy``), closed into its group on the next run;
    * the rate alerts: the restaurant only.
    """

    restaurant_id: UUID
    kind: AlertKind
    slot: SlotTime | None = None
    change_id: int | None = None

    @property
    def incident(self) -> str:
        """Its label: the slot, the change, or '' (stored as ``incident_key``, shown, never parsed)."""
        if self.slot is not None:
            return slot_key(*self.slot)
        if self.kind is AlertKind.CAPACITY_BELOW_BOOKINGS:
            return NO_RECORDED_CHANGE if self.change_id is None else f"change {self.change_id}"
        return ""

    @property
    def grouped(self) -> bool:
        return self.kind is AlertKind.CAPACITY_BELOW_BOOKINGS and self.slot is None

    @property
    def legacy(self) -> bool:
        return self.kind is AlertKind.CAPACITY_BELOW_BOOKINGS and self.slot is not None

    @property
    def order(self) -> tuple[str, str, dt.date, dt.time, int]:
        date, time = self.slot or (dt.date.min, dt.time.min)
        return str(self.restaurant_id), self.kind.value, date, time, -1 if self.change_id is None else self.change_id


@dataclass(frozen=True, slots=True)
class Finding:
    """A condition that holds now."""

    key: IncidentKey
    restaurant_name: str
    figures: dict[str, Any]
    members: frozenset[SlotTime] = frozenset()  # the slots of a grouped incident

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.key.kind]


@dataclass(frozen=True, slots=True)
class OpenAlert:
    id: int
    key: IncidentKey
    restaurant_name: str
    opened_at: dt.datetime
    last_notified_at: dt.datetime
    figures: dict[str, Any]
    members: frozenset[SlotTime] = frozenset()  # the slots of a grouped incident, as last stored

    @property
    def slots(self) -> list[SlotTime]:
        """Every slot it names: its own, or its group's."""
        return ([self.key.slot] if self.key.slot is not None else []) + sorted(self.members)


@dataclass(frozen=True, slots=True)
class Transition(CamelJson):
    action: Action
    key: Annotated[IncidentKey, Field(exclude=True)]
    restaurant_name: str
    figures: dict[str, Any]
    opened_at: Annotated[dt.datetime, Field(exclude=True)]
    alert_id: Annotated[int | None, Field(exclude=True)] = None  # None until an opened incident is stored
    members: Annotated[frozenset[SlotTime], Field(exclude=True)] = frozenset()

    @property
    def notice_type(self) -> NoticeType | None:
        return {
            Action.OPEN: NoticeType.OPENED,
            Action.REMIND: NoticeType.REMINDER,
            Action.RESOLVE: NoticeType.RESOLVED,
        }.get(self.action)

    # What the incident is, from its key, for the JSON (logs, `capctl check-alerts --json`).
    @computed_field
    @property
    def alert(self) -> AlertKind:
        return self.key.kind

    @computed_field
    @property
    def restaurant_id(self) -> UUID:
        return self.key.restaurant_id

    @computed_field
    @property
    def incident(self) -> str:
        return self.key.incident

    @computed_field
    @property
    def severity(self) -> Severity:
        return SEVERITY[self.key.kind]


# -- pure decisions --------------------------------------------------------------------------


def conflict_rate_breached(requests: int, conflicts: int, threshold: float, min_requests: int) -> bool:
    """Strictly above the threshold, with at least ``min_requests`` (exactly 5 % does not fire)."""
    if requests <= 0 or requests < min_requests:
        return False
    # Exact arithmetic: 2 of 40 against 0.05 must compare equal, not by a float's last bit.
    return Decimal(conflicts) / Decimal(requests) > Decimal(str(threshold))


def retry_exhaustion_breached(retry_exhausted: int, threshold: int) -> bool:
    return retry_exhausted > threshold


def slot_key(date: dt.date, time: dt.time) -> str:
    return f"{date.isoformat()} {time.strftime('%H:%M')}"


def slot_command(restaurant_id: UUID, date: dt.date, time: dt.time) -> str:
    """The first command an operator runs for a slot an alert names."""
    return f"capctl slot show {restaurant_id} {date.isoformat()} {time.strftime('%H:%M')}"


def slot_alert_kind(state: SlotState) -> AlertKind | None:
    if state.over_capacity:
        return AlertKind.OVERBOOKING
    if state.below_bookings:
        return AlertKind.CAPACITY_BELOW_BOOKINGS
    return None


def slot_figures(state: SlotState, timezone: str = "", change: CapacityChange | None = None) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "date": state.date.isoformat(),
        "time": state.time.strftime("%H:%M"),
        "timezone": timezone,
        "maxCovers": state.max_covers,
        "acceptedMaxCovers": state.accepted_max_covers,
        "acceptedByGuard": state.accepted_by_guard,
        "confirmedCovers": state.confirmed_covers,
        "bookings": state.bookings,
        "bookingIds": [str(b) for b in state.booking_ids[-MAX_BOOKING_IDS:]],
        "command": slot_command(state.restaurant_id, state.date, state.time),
    }
    if change is not None:
        figures["change"] = change.as_json()
    return figures


SlotChanges = Mapping[tuple[UUID, dt.date, dt.time], CapacityChange | None]


def slot_findings(
    states: Iterable[SlotState],
    restaurants: dict[UUID, dict[str, Any]],
    changes: SlotChanges | None = None,
    open_alerts: Sequence[OpenAlert] = (),
) -> list[Finding]:
    """An overbooked slot (critical, one incident per slot) or slots whose capacity was lowered
    below their bookings (warning, one incident per change: ``below_bookings_findings``), never
    both for one slot."""
    findings = []
    below = []
    for s in states:
        kind = slot_alert_kind(s)
        if kind is AlertKind.CAPACITY_BELOW_BOOKINGS:
            below.append(s)
        elif kind is AlertKind.OVERBOOKING:
            restaurant = restaurants.get(s.restaurant_id, {})
            findings.append(
                Finding(
                    IncidentKey(s.restaurant_id, kind, (s.date, s.time)),
                    restaurant.get("name", ""),
                    slot_figures(s, restaurant.get("timezone", "")),
                )
            )
    return findings + below_bookings_findings(below, restaurants, changes or {}, open_alerts)


def below_bookings_findings(
    states: Sequence[SlotState],
    restaurants: dict[UUID, dict[str, Any]],
    changes: SlotChanges,
    open_alerts: Sequence[OpenAlert] = (),
) -> list[Finding]:
    """Slots below their bookings, one finding per change behind them.

    A slot already named by an open grouped incident stays with it until it is back within
    capacity, whatever change touched it since (a partial raise that still leaves it below is
    the operator's remedy, not a new cause); any other slot joins the incident of the change
    ``changes`` names for it (none recorded: the restaurant's one "no recorded change" incident).
    """
    held = {(a.key.restaurant_id, *slot): a for a in open_alerts if a.key.grouped for slot in a.members}
    opened = {a.key: a for a in open_alerts if a.key.grouped}
    groups: dict[IncidentKey, list[SlotState]] = {}
    causes: dict[IncidentKey, dict[str, Any] | None] = {}
    for s in states:
        slot = (s.restaurant_id, s.date, s.time)
        holder = held.get(slot)
        if holder is not None:
            key, cause = holder.key, holder.figures.get("change")
        else:
            change = changes.get(slot)
            change_id = None if change is None else change.id
            key = IncidentKey(s.restaurant_id, AlertKind.CAPACITY_BELOW_BOOKINGS, change_id=change_id)
            cause = None if change is None else change.as_json()
        groups.setdefault(key, []).append(s)
        causes.setdefault(key, cause)
    findings = []
    for key, members in groups.items():
        restaurant = restaurants.get(key.restaurant_id, {})
        figures = group_figures(key, members, restaurant.get("timezone", ""), causes[key])
        earlier = opened.get(key)
        if earlier is not None:
            # How many it named when it opened: a resolve notice says "all 12".
            figures["openedWithSlots"] = earlier.figures.get("openedWithSlots", figures["slotCount"])
        findings.append(Finding(key, restaurant.get("name", ""), figures, frozenset((s.date, s.time) for s in members)))
    return findings


def covers_over(state: SlotState) -> int:
    """Covers above the capacity in force now (guests to move); 0 for an unlimited slot."""
    return 0 if state.max_covers is None else max(state.confirmed_covers - state.max_covers, 0)


def below_bookings_command(restaurant_id: UUID, change_id: int | None) -> str:
    """What lists every slot of one grouped incident: its restaurant's slots below bookings that
    its change explains (``--change none``: those no recorded change explains)."""
    return f"capctl verify --restaurant {restaurant_id} --change {'none' if change_id is None else change_id}"


def group_figures(
    key: IncidentKey, states: Sequence[SlotState], timezone: str, change: dict[str, Any] | None
) -> dict[str, Any]:
    """A grouped incident's figures: its change, how many slots, the worst few, the command."""
    worst = sorted(states, key=lambda s: (-covers_over(s), s.date, s.time))
    dates = sorted(s.date for s in states)
    return {
        "change": change,
        "timezone": timezone,
        "slotCount": len(states),
        "openedWithSlots": len(states),
        "coversOver": sum(covers_over(s) for s in states),
        "confirmedCovers": sum(s.confirmed_covers for s in states),
        "bookings": sum(s.bookings for s in states),
        "firstDate": dates[0].isoformat() if dates else None,
        "lastDate": dates[-1].isoformat() if dates else None,
        "slots": [
            {
                "date": s.date.isoformat(),
                "time": s.time.strftime("%H:%M"),
                "maxCovers": s.max_covers,
                "acceptedMaxCovers": s.accepted_max_covers,
                "confirmedCovers": s.confirmed_covers,
                "coversOver": covers_over(s),
                "bookings": s.bookings,
                "command": slot_command(s.restaurant_id, s.date, s.time),
            }
            for s in worst[:MAX_SLOTS_NAMED]
        ],
        "command": below_bookings_command(key.restaurant_id, key.change_id),
    }


def rate_figures(
    row: dict[str, Any], settings: AlertSettings, start: dt.datetime, end: dt.datetime
) -> dict[AlertKind, dict[str, Any]]:
    """The figures of both rate alerts for one restaurant's row of counters."""
    requests = int(row["requests"])
    common = {
        "requests": requests,
        "windowStart": iso_seconds(start),
        "windowEnd": iso_seconds(end),
        "includesLoadTest": settings.include_load_test,
    }
    conflicts = int(row["conflicts"])
    return {
        AlertKind.CONFLICT_RATE: {
            **common,
            "conflicts": conflicts,
            "conflictRate": rounded(figures.conflict_rate(conflicts, requests)) or 0.0,
            "threshold": settings.conflict_rate_threshold,
            "minRequests": settings.conflict_min_requests,
        },
        AlertKind.RETRY_EXHAUSTION: {
            **common,
            "retryExhausted": int(row["retry_exhausted"]),
            "threshold": settings.retry_exhausted_threshold,
        },
    }


def rate_findings(
    rows: Iterable[dict[str, Any]],
    names: dict[UUID, str],
    settings: AlertSettings,
    start: dt.datetime,
    end: dt.datetime,
) -> tuple[list[Finding], dict[IncidentKey, dict[str, Any]]]:
    """Breached rate alerts, and the figures of every restaurant looked at (for resolve notices)."""
    findings: list[Finding] = []
    observed: dict[IncidentKey, dict[str, Any]] = {}
    for row in rows:
        rid = row["restaurant_id"]
        figures = rate_figures(row, settings, start, end)
        for kind, values in figures.items():
            observed[IncidentKey(rid, kind)] = values
        requests, conflicts = int(row["requests"]), int(row["conflicts"])
        if conflict_rate_breached(
            requests, conflicts, settings.conflict_rate_threshold, settings.conflict_min_requests
        ):
            key = IncidentKey(rid, AlertKind.CONFLICT_RATE)
            findings.append(Finding(key, names.get(rid, ""), figures[AlertKind.CONFLICT_RATE]))
        if retry_exhaustion_breached(int(row["retry_exhausted"]), settings.retry_exhausted_threshold):
            key = IncidentKey(rid, AlertKind.RETRY_EXHAUSTION)
            findings.append(Finding(key, names.get(rid, ""), figures[AlertKind.RETRY_EXHAUSTION]))
    return findings, observed


def cleared_figures(alert: OpenAlert, observed: dict[IncidentKey, dict[str, Any]]) -> dict[str, Any]:
    """Figures for a resolve notice: the current ones when known, else the last seen."""
    if alert.key in observed:
        return observed[alert.key]
    if alert.key.grouped:
        # None of its slots is below its bookings any more.
        return {**alert.figures, "slotCount": 0, "coversOver": 0, "confirmedCovers": 0, "bookings": 0, "slots": []}
    if alert.key.kind in SLOT_ALERTS:
        # Not among the slots holding confirmed bookings: nothing is booked there any more.
        return {**alert.figures, "confirmedCovers": 0, "bookings": 0, "bookingIds": []}
    return {**alert.figures, "requests": 0, "conflicts": 0, "conflictRate": 0.0, "retryExhausted": 0}


def plan(
    findings: Sequence[Finding],
    open_alerts: Sequence[OpenAlert],
    *,
    now: dt.datetime,
    cooldown: dt.timedelta,
    observed: dict[IncidentKey, dict[str, Any]] | None = None,
    cooldowns: Mapping[AlertKind, dt.timedelta] | None = None,
) -> list[Transition]:
    """The state machine: what happens to each incident at ``now``. An open incident reminds
    once its kind's cooldown (``cooldowns``, else ``cooldown``) has passed since its last notice.

    A grouped incident whose slots change (more, fewer) is updated in place: it notifies again
    only as a reminder once the cooldown has passed, never because it grew."""
    current = {a.key: a for a in open_alerts}
    transitions: list[Transition] = []
    seen: dict[IncidentKey, Finding] = {}
    for f in sorted(findings, key=lambda f: f.key.order):
        if f.key in seen:
            continue
        seen[f.key] = f
        alert = current.get(f.key)
        if alert is None:
            transitions.append(Transition(Action.OPEN, f.key, f.restaurant_name, f.figures, now, members=f.members))
            continue
        wait = (cooldowns or {}).get(f.key.kind, cooldown)
        action = Action.REMIND if now - alert.last_notified_at >= wait else Action.UPDATE
        transitions.append(
            Transition(action, f.key, f.restaurant_name, f.figures, alert.opened_at, alert.id, f.members)
        )
    closing = [
        _closing(a, seen.values(), observed or {})
        for a in sorted(open_alerts, key=lambda a: a.key.order)
        if a.key not in seen  # still found: not closing
    ]
    return _count_superseded(transitions, closing) + closing


def _closing(alert: OpenAlert, findings: Iterable[Finding], observed: dict[IncidentKey, dict[str, Any]]) -> Transition:
    """An open incident no finding holds: resolved, or, a per-slot below-bookings incident from
    before 008 whose slot a grouped finding now names, superseded by it (no notice: the group's
    own notice tells)."""
    if alert.key.legacy:
        slot = alert.key.slot
        for f in findings:
            if f.key.grouped and f.key.restaurant_id == alert.key.restaurant_id and slot in f.members:
                figures = {**alert.figures, "supersededBy": f.key.incident}
                return Transition(
                    Action.SUPERSEDE, alert.key, alert.restaurant_name, figures, alert.opened_at, alert.id
                )
    figures = cleared_figures(alert, observed)
    return Transition(
        Action.RESOLVE, alert.key, alert.restaurant_name, figures, alert.opened_at, alert.id, alert.members
    )


def _count_superseded(transitions: list[Transition], closing: Sequence[Transition]) -> list[Transition]:
    """A group that opens in place of per-slot incidents says how many it replaces."""
    replaced: dict[tuple[UUID, str], int] = {}
    for t in closing:
        if t.action is Action.SUPERSEDE:
            group = (t.key.restaurant_id, str(t.figures["supersededBy"]))
            replaced[group] = replaced.get(group, 0) + 1
    return [
        replace(t, figures={**t.figures, "replacesIncidents": replaced[(t.key.restaurant_id, t.key.incident)]})
        if t.action is Action.OPEN and (t.key.restaurant_id, t.key.incident) in replaced
        else t
        for t in transitions
    ]
