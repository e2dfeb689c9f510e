"""The alert check: evaluate every restaurant, move each incident through its states, deliver.

Per restaurant, three alerts:
  * overbooking (critical): a slot whose confirmed covers, summed from ``bookings``, exceed the
    capacity in force; one incident per slot; all traffic counts (capacity is shared);
  * conflict rate (warning): requests that met a conflict / all requests over the last hour is
    strictly above the threshold, with at least the minimum volume;
  * retry exhaustion (warning): more than the threshold of requests ran out of retries in the
    last hour.
Load-test traffic is left out of the rate alerts unless ALERTS_INCLUDE_LOAD_TEST.

An incident notifies once when it opens, again only as a reminder once the cooldown has passed,
and once more when it clears. Each notice is queued per channel in ``alert_deliveries`` in the
same transaction as the state change, then sent; a row becomes 'sent' only when its channel
accepted it, and unsent rows are retried by later runs (up to ``RETRY_HORIZON``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.types.json import Jsonb

from capacity.changes import CapacityChange, change_behind
from capacity.db import DictConnection
from capacity.figures import COUNTERS_SQL, SYNTHETIC_SQL
from capacity.notifiers import AlertKind, Channel, DeliveryError, Notice, NoticeType, Notifier
from capacity.outcomes import EventType
from capacity.reconcile import SlotState, slot_states
from capacity.settings import AlertSettings

RATE_WINDOW = dt.timedelta(hours=1)
RETRY_HORIZON = dt.timedelta(hours=24)  # an unsent notice older than this is not worth sending
_ALERTS_LOCK_ID = 7_347_203
RECONCILE_SOURCE = "reconcile"


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
class Transition:
    action: Action
    key: IncidentKey
    restaurant_name: str
    figures: dict[str, Any]
    opened_at: dt.datetime
    alert_id: int | None = None  # None until an opened incident is stored

    @property
    def notice_type(self) -> NoticeType | None:
        return {
            Action.OPEN: NoticeType.OPENED,
            Action.REMIND: NoticeType.REMINDER,
            Action.RESOLVE: NoticeType.RESOLVED,
        }.get(self.action)

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "alert": self.key.kind.value,
            "restaurantId": str(self.key.restaurant_id),
            "restaurantName": self.restaurant_name,
            "incident": self.key.incident,
            "severity": SEVERITY[self.key.kind].value,
            "figures": self.figures,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    alert: str
    restaurant_id: str
    notice: str
    status: str  # sent | failed | deferred | expired | no-channel | would-send | would-retry
    incident: str = ""
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "alert": self.alert,
            "restaurantId": self.restaurant_id,
            "incident": self.incident,
            "notice": self.notice,
            "status": self.status,
            "error": self.error,
        }


@dataclass
class AlertRunSummary:
    checked_at: dt.datetime
    dry_run: bool
    channels: list[str]
    restaurants: int = 0
    slots_checked: int = 0
    skipped: bool = False  # another run held the lock
    transitions: list[Transition] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    def count(self, action: Action, kind: AlertKind | None = None) -> int:
        return sum(1 for t in self.transitions if t.action is action and (kind is None or t.key.kind is kind))

    @property
    def opened(self) -> int:
        return self.count(Action.OPEN)

    @property
    def resolved(self) -> int:
        return self.count(Action.RESOLVE)

    @property
    def reminders(self) -> int:
        return self.count(Action.REMIND)

    @property
    def overbook_detected(self) -> int:
        return self.count(Action.OPEN, AlertKind.OVERBOOKING)

    @property
    def delivery_failures(self) -> int:
        return sum(1 for d in self.deliveries if d.status == "failed")

    @property
    def sent(self) -> int:
        return sum(1 for d in self.deliveries if d.status == "sent")

    def as_json(self) -> dict[str, Any]:
        return {
            "checkedAt": _iso(self.checked_at),
            "dryRun": self.dry_run,
            "skipped": self.skipped,
            "channels": self.channels,
            "restaurants": self.restaurants,
            "slotsChecked": self.slots_checked,
            "opened": self.opened,
            "reminders": self.reminders,
            "resolved": self.resolved,
            "overbookDetected": self.overbook_detected,
            "sent": self.sent,
            "deliveryFailures": self.delivery_failures,
            "transitions": [t.as_json() for t in self.transitions],
            "deliveries": [d.as_json() for d in self.deliveries],
        }


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
        "windowStart": _iso(start),
        "windowEnd": _iso(end),
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


def notice_for(transition: Transition, settings: AlertSettings, now: dt.datetime) -> Notice:
    notice_type = transition.notice_type
    assert notice_type is not None
    return Notice(
        alert_type=transition.key.kind.value,
        notice=notice_type.value,
        severity=SEVERITY[transition.key.kind].value,
        restaurant_id=str(transition.key.restaurant_id),
        restaurant_name=transition.restaurant_name,
        incident_key=transition.key.incident,
        figures=transition.figures,
        opened_at=_iso(transition.opened_at),
        at=_iso(now),
        environment=settings.environment,
        runbook_url=runbook_link(settings.runbook_url, transition.key.kind),
        dashboard_url=settings.dashboard_url,
        resolved_at=_iso(now) if notice_type is NoticeType.RESOLVED else None,
    )


def runbook_link(base: str | None, kind: AlertKind) -> str:
    """The runbook section of this kind of alert: absolute when RUNBOOK_URL is set."""
    anchor = kind.value.replace("_", "-")
    if base is None:
        return f"docs/capacity/runbook.md#{anchor} in the capacity engine repository (set RUNBOOK_URL for a link)"
    return f"{base}#{anchor}"


# -- SQL -------------------------------------------------------------------------------------

_RESTAURANTS = "SELECT id, name, timezone FROM restaurants ORDER BY id"

_RATES = f"""
SELECT e.restaurant_id, {COUNTERS_SQL}
  FROM observability_events e
 WHERE e.occurred_at > %(start)s AND e.occurred_at <= %(end)s
   -- events outlive a deleted restaurant; an incident needs a restaurant to belong to
   AND EXISTS (SELECT 1 FROM restaurants r WHERE r.id = e.restaurant_id)
   AND (%(include_load_test)s OR NOT {SYNTHETIC_SQL})
 GROUP BY e.restaurant_id
 ORDER BY e.restaurant_id
"""

_OPEN_ALERTS = """
SELECT a.id, a.restaurant_id, a.kind, a.incident_key, a.opened_at, a.last_notified_at, a.figures, r.name
  FROM alert_state a JOIN restaurants r ON r.id = a.restaurant_id
 WHERE a.status = 'open'
 ORDER BY a.id
"""

_INSERT_ALERT = """
INSERT INTO alert_state (restaurant_id, kind, incident_key, severity, status, opened_at, last_seen_at,
                         last_notified_at, figures)
VALUES (%(restaurant_id)s, %(kind)s, %(incident)s, %(severity)s, 'open', %(now)s, %(now)s, %(now)s, %(figures)s)
RETURNING id
"""

_REMIND_ALERT = """
UPDATE alert_state SET last_seen_at = %(now)s, last_notified_at = %(now)s, figures = %(figures)s
 WHERE id = %(id)s AND status = 'open'
"""

_UPDATE_ALERT = """
UPDATE alert_state SET last_seen_at = %(now)s, figures = %(figures)s WHERE id = %(id)s AND status = 'open'
"""

_RESOLVE_ALERT = """
UPDATE alert_state SET status = 'resolved', resolved_at = %(now)s, figures = %(figures)s
 WHERE id = %(id)s AND status = 'open'
"""

_QUEUE = """
INSERT INTO alert_deliveries (alert_id, notice, channel, status, message, created_at)
VALUES (%(alert_id)s, %(notice)s, %(channel)s, 'pending', %(message)s, %(now)s)
"""

# An incident opened while a channel was not configured (or before it was added) is announced
# to that channel by the next run that still sees it: once, as an 'opened' notice.
_QUEUE_UNANNOUNCED = """
INSERT INTO alert_deliveries (alert_id, notice, channel, status, message, created_at)
SELECT %(alert_id)s, 'opened', %(channel)s, 'pending', %(message)s, %(now)s
 WHERE NOT EXISTS (SELECT 1 FROM alert_deliveries WHERE alert_id = %(alert_id)s AND channel = %(channel)s)
"""

_DETECTED_EVENT = """
INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata)
VALUES (%(event_type)s, %(restaurant_id)s, %(now)s, %(metadata)s)
"""

_UNSENT = """
SELECT d.id, d.channel, d.notice, d.message, d.created_at, a.kind, a.restaurant_id, a.incident_key
  FROM alert_deliveries d JOIN alert_state a ON a.id = d.alert_id
 WHERE d.status IN ('pending', 'failed')
 ORDER BY d.created_at, d.id
"""

_MARK_SENT = """
UPDATE alert_deliveries SET status = 'sent', attempts = attempts + 1, last_attempt_at = %(now)s,
       sent_at = %(now)s, last_error = NULL
 WHERE id = %(id)s
"""

_MARK_FAILED = """
UPDATE alert_deliveries SET status = 'failed', attempts = attempts + 1, last_attempt_at = %(now)s,
       last_error = %(error)s
 WHERE id = %(id)s
"""

_MARK_EXPIRED = "UPDATE alert_deliveries SET status = 'expired' WHERE id = %(id)s"


# -- the run ---------------------------------------------------------------------------------


class AlertChecker:
    def __init__(
        self,
        settings: AlertSettings,
        notifiers: Sequence[Notifier],
        *,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.settings = settings
        self.notifiers = {n.channel: n for n in notifiers}
        self._now = now

    def run(self, conn: DictConnection, *, dry_run: bool = False) -> AlertRunSummary:
        now = self._now().astimezone(dt.UTC)
        summary = AlertRunSummary(checked_at=now, dry_run=dry_run, channels=[c.value for c in self.notifiers])
        # Overlapping runs would notify twice: the second one steps aside.
        got = conn.execute("SELECT pg_try_advisory_lock(%(id)s) AS got", {"id": _ALERTS_LOCK_ID}).fetchone()
        if not got or not got["got"]:
            summary.skipped = True
            return summary
        try:
            # Off the booking path: a month of slots may take longer than its statement timeout.
            conn.execute("SET statement_timeout = '60s'")
            self._run(conn, now, summary)
        finally:
            # A lost connection released the lock with its session; the run's own error is the
            # one worth raising.
            with contextlib.suppress(psycopg.Error):
                conn.execute("RESET statement_timeout")
                conn.execute("SELECT pg_advisory_unlock(%(id)s)", {"id": _ALERTS_LOCK_ID})
        return summary

    def _run(self, conn: DictConnection, now: dt.datetime, summary: AlertRunSummary) -> None:
        restaurants = conn.execute(_RESTAURANTS).fetchall()
        by_id = {r["id"]: r for r in restaurants}
        names = {r["id"]: r["name"] for r in restaurants}
        summary.restaurants = len(restaurants)
        open_alerts = self._open_alerts(conn)

        states = self._slot_states(conn, restaurants, open_alerts, now)
        summary.slots_checked = len(states)
        changes = {
            (s.restaurant_id, s.date, s.time): change_behind(conn, s.restaurant_id, s.date, s.time, s.last_booked_at)
            for s in states
            if s.below_bookings
        }
        findings = slot_findings(states, by_id, changes)
        # Every booked slot's figures now, under either slot alert: a resolve notice tells them.
        observed: dict[IncidentKey, dict[str, Any]] = {
            IncidentKey(s.restaurant_id, kind, slot_key(s.date, s.time)): slot_figures(
                s, by_id.get(s.restaurant_id, {}).get("timezone", "")
            )
            for s in states
            for kind in SLOT_ALERTS
        }
        observed.update({f.key: f.figures for f in findings})
        start = now - RATE_WINDOW
        rows = conn.execute(
            _RATES, {"start": start, "end": now, "include_load_test": self.settings.include_load_test}
        ).fetchall()
        rates, rate_observed = rate_findings(rows, names, self.settings, start, now)
        findings += rates
        observed.update(rate_observed)

        cooldown = dt.timedelta(minutes=self.settings.alert_cooldown_minutes)
        transitions = plan(findings, open_alerts, now=now, cooldown=cooldown, observed=observed)
        if summary.dry_run:
            summary.transitions = transitions
            summary.deliveries = self._preview(conn, transitions)
            return
        summary.transitions = self._apply(conn, transitions, now)
        summary.deliveries = self._deliver(conn, now)

    def _open_alerts(self, conn: DictConnection) -> list[OpenAlert]:
        return [
            OpenAlert(
                id=r["id"],
                key=IncidentKey(r["restaurant_id"], AlertKind(r["kind"]), r["incident_key"]),
                restaurant_name=r["name"],
                opened_at=r["opened_at"],
                last_notified_at=r["last_notified_at"],
                figures=r["figures"],
            )
            for r in conn.execute(_OPEN_ALERTS)
        ]

    def _slot_states(
        self,
        conn: DictConnection,
        restaurants: Sequence[dict[str, Any]],
        open_alerts: Sequence[OpenAlert],
        now: dt.datetime,
    ) -> list[SlotState]:
        """Slots holding confirmed bookings from each restaurant's local today - PAST to today +
        FUTURE days, and the slots of open overbooking incidents wherever they are."""
        if not restaurants:
            return []
        past = dt.timedelta(days=self.settings.reconcile_past_days)
        future = dt.timedelta(days=self.settings.reconcile_future_days)
        ranges: dict[UUID, tuple[dt.date, dt.date]] = {}
        for r in restaurants:
            try:
                today = now.astimezone(ZoneInfo(r["timezone"])).date()
            except (ZoneInfoNotFoundError, ValueError):
                today = now.date()
            ranges[r["id"]] = (today - past, today + future)
        date_from = min(lo for lo, _ in ranges.values())
        date_to = max(hi for _, hi in ranges.values())
        states = [
            s
            for s in slot_states(conn, date_from=date_from, date_to=date_to)
            if s.restaurant_id in ranges and ranges[s.restaurant_id][0] <= s.date <= ranges[s.restaurant_id][1]
        ]
        have = {(s.restaurant_id, s.date, s.time) for s in states}
        for alert in open_alerts:
            slot = alert.key.slot
            if slot is None:
                continue
            date, time = slot
            if (alert.key.restaurant_id, date, time) in have:
                continue
            have.add((alert.key.restaurant_id, date, time))
            found = slot_states(conn, restaurant_ids=[alert.key.restaurant_id], date_from=date, date_to=date)
            states += [s for s in found if s.time == time]
        return states

    def _apply(self, conn: DictConnection, transitions: list[Transition], now: dt.datetime) -> list[Transition]:
        """State changes, detection events and queued notices: all or nothing."""
        applied: list[Transition] = []
        with conn.transaction():
            for planned in transitions:
                t = planned
                params: dict[str, Any] = {"now": now, "figures": Jsonb(t.figures), "id": t.alert_id}
                if t.action is Action.OPEN:
                    row = conn.execute(
                        _INSERT_ALERT,
                        {
                            **params,
                            "restaurant_id": t.key.restaurant_id,
                            "kind": t.key.kind.value,
                            "incident": t.key.incident,
                            "severity": SEVERITY[t.key.kind].value,
                        },
                    ).fetchone()
                    assert row is not None
                    t = replace(t, alert_id=row["id"])
                    if t.key.kind is AlertKind.OVERBOOKING:
                        self._record_detection(conn, t, now)
                elif t.action is Action.REMIND:
                    conn.execute(_REMIND_ALERT, params)
                elif t.action is Action.UPDATE:
                    conn.execute(_UPDATE_ALERT, params)
                    self._announce_to_new_channels(conn, t, now)
                else:
                    conn.execute(_RESOLVE_ALERT, params)
                if t.notice_type is not None:
                    message = Jsonb(notice_for(t, self.settings, now).as_json())
                    for channel in self.notifiers:
                        conn.execute(
                            _QUEUE,
                            {
                                "alert_id": t.alert_id,
                                "notice": t.notice_type.value,
                                "channel": channel.value,
                                "message": message,
                                "now": now,
                            },
                        )
                applied.append(t)
        return applied

    def _announce_to_new_channels(self, conn: DictConnection, t: Transition, now: dt.datetime) -> None:
        message = Jsonb(notice_for(replace(t, action=Action.OPEN), self.settings, now).as_json())
        for channel in self.notifiers:
            conn.execute(
                _QUEUE_UNANNOUNCED, {"alert_id": t.alert_id, "channel": channel.value, "message": message, "now": now}
            )

    def _record_detection(self, conn: DictConnection, t: Transition, now: dt.datetime) -> None:
        f = t.figures
        metadata = {
            "restaurantId": str(t.key.restaurant_id),
            "date": f["date"],
            "time": f["time"],
            "attempts": 1,
            "source": RECONCILE_SOURCE,
            "maxCovers": f["maxCovers"],
            "acceptedMaxCovers": f.get("acceptedMaxCovers"),
            "confirmedCovers": f["confirmedCovers"],
            "bookings": f["bookings"],
            "alertId": t.alert_id,
        }
        conn.execute(
            _DETECTED_EVENT,
            {
                "event_type": EventType.OVERBOOK_DETECTED.value,
                "restaurant_id": t.key.restaurant_id,
                "now": now,
                "metadata": Jsonb(metadata),
            },
        )

    def _deliver(self, conn: DictConnection, now: dt.datetime) -> list[Delivery]:
        """Send every unsent notice, oldest first. A channel that fails is not tried again in this
        run (its other notices wait for the next one); the other channel carries on."""
        results: list[Delivery] = []
        failed: set[str] = set()
        for row in conn.execute(_UNSENT).fetchall():
            channel = row["channel"]
            result = Delivery(
                channel=channel,
                alert=row["kind"],
                restaurant_id=str(row["restaurant_id"]),
                notice=row["notice"],
                status="",
                incident=row["incident_key"],
            )
            if now - row["created_at"] > RETRY_HORIZON:
                conn.execute(_MARK_EXPIRED, {"id": row["id"]})
                results.append(replace(result, status="expired"))
                continue
            notifier = self.notifiers.get(Channel(channel))
            if notifier is None:
                results.append(replace(result, status="no-channel"))
                continue
            if channel in failed:
                results.append(replace(result, status="deferred"))
                continue
            try:
                notifier.send(Notice.from_json(row["message"]))
            except Exception as exc:
                # Anything unexpected is a failed delivery too: the other channel carries on.
                error = str(exc) if isinstance(exc, DeliveryError) else f"unexpected {type(exc).__name__}"
                failed.add(channel)
                conn.execute(_MARK_FAILED, {"id": row["id"], "now": now, "error": error[:500]})
                results.append(replace(result, status="failed", error=error))
                continue
            conn.execute(_MARK_SENT, {"id": row["id"], "now": now})
            results.append(replace(result, status="sent"))
        return results

    def _preview(self, conn: DictConnection, transitions: list[Transition]) -> list[Delivery]:
        """What a real run would send: the retries waiting, then the new notices."""
        waiting = [
            Delivery(
                channel=row["channel"],
                alert=row["kind"],
                restaurant_id=str(row["restaurant_id"]),
                notice=row["notice"],
                status="would-retry",
                incident=row["incident_key"],
            )
            for row in conn.execute(_UNSENT).fetchall()
        ]
        new = [
            Delivery(
                channel=channel.value,
                alert=t.key.kind.value,
                restaurant_id=str(t.key.restaurant_id),
                notice=t.notice_type.value,
                status="would-send",
                incident=t.key.incident,
            )
            for t in transitions
            if t.notice_type is not None
            for channel in self.notifiers
        ]
        return waiting + new


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
