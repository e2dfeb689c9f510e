"""Alert incidents: what an alert is about, and the state machine that moves each one.

Pure: no I/O. An incident is one condition of one restaurant — a slot's (overbooking: the
covers exceed the capacity they were accepted under; capacity below bookings: the capacity was
lowered after they were accepted) or the restaurant's last hour (conflict rate, retry
exhaustion). ``plan`` decides, from what holds now and what is open, which incidents open,
remind, stay quiet or resolve; ``alerts.AlertChecker`` stores and announces the result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, computed_field

from capacity.camel_json import CamelJson, iso_seconds
from capacity.changes import CapacityChange
from capacity.reconcile import SlotState
from capacity.settings import AlertSettings


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


SEVERITY = {
    AlertKind.OVERBOOKING: Severity.CRITICAL,
    AlertKind.CAPACITY_BELOW_BOOKINGS: Severity.WARNING,
    AlertKind.CONFLICT_RATE: Severity.WARNING,
    AlertKind.RETRY_EXHAUSTION: Severity.WARNING,
}


# Alerts about one slot (their incident is the slot); the others are per restaurant.
SLOT_ALERTS = frozenset({AlertKind.OVERBOOKING, AlertKind.CAPACITY_BELOW_BOOKINGS})
MAX_BOOKING_IDS = 20  # booking ids carried by a notice; `capctl slot show` lists them all


@dataclass(frozen=True, slots=True, order=True)
class IncidentKey:
    restaurant_id: UUID
    kind: AlertKind
    incident: str = ""  # the slot 'YYYY-MM-DD HH:MM' for the slot alerts, '' for the rate alerts

    @property
    def slot(self) -> tuple[dt.date, dt.time] | None:
        if self.kind not in SLOT_ALERTS:
            return None
        date, time = self.incident.split(" ")
        return dt.date.fromisoformat(date), dt.time.fromisoformat(time)


@dataclass(frozen=True, slots=True)
class Finding:
    """A condition that holds now."""

    key: IncidentKey
    restaurant_name: str
    figures: dict[str, Any]

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


@dataclass(frozen=True, slots=True)
class Transition(CamelJson):
    action: Action
    key: Annotated[IncidentKey, Field(exclude=True)]
    restaurant_name: str
    figures: dict[str, Any]
    opened_at: Annotated[dt.datetime, Field(exclude=True)]
    alert_id: Annotated[int | None, Field(exclude=True)] = None  # None until an opened incident is stored

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


def slot_findings(
    states: Iterable[SlotState],
    restaurants: dict[UUID, dict[str, Any]],
    changes: dict[tuple[UUID, dt.date, dt.time], CapacityChange | None] | None = None,
) -> list[Finding]:
    """An overbooked slot (critical) or a slot whose capacity was lowered below its bookings
    (warning), never both."""
    findings = []
    for s in states:
        kind = slot_alert_kind(s)
        if kind is None:
            continue
        restaurant = restaurants.get(s.restaurant_id, {})
        change = (changes or {}).get((s.restaurant_id, s.date, s.time))
        findings.append(
            Finding(
                IncidentKey(s.restaurant_id, kind, slot_key(s.date, s.time)),
                restaurant.get("name", ""),
                slot_figures(s, restaurant.get("timezone", ""), change),
            )
        )
    return findings


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
            "conflictRate": round(conflicts / requests, 6) if requests else 0.0,
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
) -> list[Transition]:
    """The state machine: what happens to each incident at ``now``."""
    current = {a.key: a for a in open_alerts}
    transitions: list[Transition] = []
    seen: set[IncidentKey] = set()
    for f in sorted(findings, key=lambda f: f.key):
        if f.key in seen:
            continue
        seen.add(f.key)
        alert = current.get(f.key)
        if alert is None:
            transitions.append(Transition(Action.OPEN, f.key, f.restaurant_name, f.figures, now))
            continue
        action = Action.REMIND if now - alert.last_notified_at >= cooldown else Action.UPDATE
        transitions.append(Transition(action, f.key, f.restaurant_name, f.figures, alert.opened_at, alert.id))
    for alert in sorted(open_alerts, key=lambda a: a.key):
        if alert.key not in seen:
            figures = cleared_figures(alert, observed or {})
            transitions.append(
                Transition(Action.RESOLVE, alert.key, alert.restaurant_name, figures, alert.opened_at, alert.id)
            )
    return transitions
