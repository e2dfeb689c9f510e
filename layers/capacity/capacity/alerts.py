"""The alert check: evaluate every restaurant, move each incident through its states, deliver.

Per restaurant, four alerts (``incidents.AlertKind``):
  * overbooking (critical): a slot whose confirmed covers, summed from ``bookings``, exceed the
    capacity they were accepted under (a guard failure); one incident per slot; all traffic
    counts (capacity is shared);
  * capacity below bookings (warning): slots whose capacity was lowered after their bookings
    were accepted, below their covers; one incident per capacity change, however many slots it
    touched (a year of Fridays is one notice, not fifty); the notice names the change, how many
    slots, the worst few and the command that lists them all;
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.types.json import Jsonb
from pydantic import computed_field

from capacity import alert_store as store
from capacity.camel_json import CamelJson, UtcSeconds, iso_seconds
from capacity.changes import changes_behind
from capacity.db import DictConnection
from capacity.incidents import (
    SEVERITY,
    SLOT_ALERTS,
    Action,
    AlertKind,
    IncidentKey,
    NoticeType,
    OpenAlert,
    Transition,
    plan,
    rate_findings,
    slot_figures,
    slot_findings,
)
from capacity.notifiers import Channel, DeliveryError, Notice, Notifier
from capacity.outcomes import RECONCILE_SOURCE, EventType
from capacity.reconcile import SlotKey, SlotState, slot_states_of, slots_to_check
from capacity.scheduled_settings import AlertSettings

RATE_WINDOW = dt.timedelta(hours=1)
RETRY_HORIZON = dt.timedelta(hours=24)  # an unsent notice older than this is not worth sending
_ALERTS_LOCK_ID = 7_347_203


class DeliveryStatus(StrEnum):
    """What became of one notice on one channel in a run."""

    SENT = "sent"  # the channel accepted it
    FAILED = "failed"  # the channel refused it: retried by the next run
    DEFERRED = "deferred"  # the channel failed earlier in this run: tried by the next run
    EXPIRED = "expired"  # unsent for longer than RETRY_HORIZON: given up, never marked sent
    NO_CHANNEL = "no-channel"  # queued for a channel this run has no configuration for
    WOULD_SEND = "would-send"  # dry run: a new notice
    WOULD_RETRY = "would-retry"  # dry run: an unsent notice waiting


@dataclass(frozen=True, slots=True)
class Delivery(CamelJson):
    channel: str
    alert: str
    restaurant_id: str
    incident: str
    notice: str
    status: DeliveryStatus
    error: str | None = None

    @classmethod
    def of_row(cls, row: dict[str, Any], status: DeliveryStatus, error: str | None = None) -> Delivery:
        """A queued notice (an ``alert_deliveries`` row joined to its incident) and its fate."""
        return cls(
            channel=row["channel"],
            alert=row["kind"],
            restaurant_id=str(row["restaurant_id"]),
            notice=row["notice"],
            status=status,
            incident=row["incident_key"],
            error=error,
        )


@dataclass
class AlertRunSummary(CamelJson):
    checked_at: UtcSeconds
    dry_run: bool
    skipped: bool = False  # another run held the lock
    channels: list[str] = field(default_factory=list)
    restaurants: int = 0
    slots_checked: int = 0
    transitions: list[Transition] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    def count(self, action: Action, kind: AlertKind | None = None) -> int:
        return sum(1 for t in self.transitions if t.action is action and (kind is None or t.key.kind is kind))

    @computed_field
    @property
    def opened(self) -> int:
        return self.count(Action.OPEN)

    @computed_field
    @property
    def reminders(self) -> int:
        return self.count(Action.REMIND)

    @computed_field
    @property
    def resolved(self) -> int:
        return self.count(Action.RESOLVE)

    @computed_field
    @property
    def overbook_detected(self) -> int:
        return self.count(Action.OPEN, AlertKind.OVERBOOKING)

    @computed_field
    @property
    def sent(self) -> int:
        return sum(1 for d in self.deliveries if d.status is DeliveryStatus.SENT)

    @computed_field
    @property
    def delivery_failures(self) -> int:
        return sum(1 for d in self.deliveries if d.status is DeliveryStatus.FAILED)


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
        opened_at=iso_seconds(transition.opened_at),
        at=iso_seconds(now),
        environment=settings.environment,
        runbook_url=runbook_link(settings.runbook_url, transition.key.kind),
        dashboard_url=settings.dashboard_url,
        resolved_at=iso_seconds(now) if notice_type is NoticeType.RESOLVED else None,
    )


def runbook_link(base: str, kind: AlertKind) -> str:
    """The runbook section of this kind of alert: RUNBOOK_URL (absolute, defaulted) and its anchor."""
    return f"{base}#{kind.value.replace('_', '-')}"


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
        restaurants = conn.execute(store.RESTAURANTS).fetchall()
        by_id = {r["id"]: r for r in restaurants}
        names = {r["id"]: r["name"] for r in restaurants}
        summary.restaurants = len(restaurants)
        open_alerts = self._open_alerts(conn)

        summary.slots_checked, states = self._slot_states(conn, restaurants, open_alerts, now)
        # A slot below its bookings that has begun has no guests left to move: no warning for it.
        zones = {rid: r["timezone"] for rid, r in by_id.items()}
        states = [s for s in states if not (s.below_bookings and s.has_begun(zones.get(s.restaurant_id, "UTC"), now))]
        # The change behind each slot below its bookings, looked up only for slots no open group
        # holds yet (a held slot stays with its incident: ``incidents.below_bookings_findings``).
        held = {(a.key.restaurant_id, *slot) for a in open_alerts if a.key.grouped for slot in a.members}
        changes = changes_behind(
            conn, (s for s in states if s.below_bookings and (s.restaurant_id, s.date, s.time) not in held)
        )
        findings = slot_findings(states, by_id, changes, open_alerts)
        # The figures now of every slot a per-slot incident names (a resolve notice tells them);
        # not of every booked slot, which at 10,000 restaurants is most of a run.
        open_slots = {(a.key.restaurant_id, a.key.slot) for a in open_alerts if a.key.slot is not None}
        observed: dict[IncidentKey, dict[str, Any]] = {
            IncidentKey(s.restaurant_id, kind, (s.date, s.time)): slot_figures(
                s, by_id.get(s.restaurant_id, {}).get("timezone", "")
            )
            for s in states
            if (s.restaurant_id, (s.date, s.time)) in open_slots
            for kind in SLOT_ALERTS
        }
        observed.update({f.key: f.figures for f in findings})
        start = now - RATE_WINDOW
        rows = conn.execute(
            store.RATES, {"start": start, "end": now, "include_load_test": self.settings.include_load_test}
        ).fetchall()
        rates, rate_observed = rate_findings(rows, names, self.settings, start, now)
        findings += rates
        observed.update(rate_observed)

        cooldown = dt.timedelta(minutes=self.settings.alert_cooldown_minutes)
        below = dt.timedelta(hours=self.settings.below_bookings_reminder_hours)
        transitions = plan(
            findings,
            open_alerts,
            now=now,
            cooldown=cooldown,
            observed=observed,
            cooldowns={AlertKind.CAPACITY_BELOW_BOOKINGS: below},
        )
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
                key=IncidentKey(
                    r["restaurant_id"],
                    AlertKind(r["kind"]),
                    None if r["slot_date"] is None else (r["slot_date"], r["slot_time"]),
                    r["change_id"],
                ),
                restaurant_name=r["name"],
                opened_at=r["opened_at"],
                last_notified_at=r["last_notified_at"],
                figures=r["figures"],
                members=frozenset(store.members_of(r["slots"])),
            )
            for r in conn.execute(store.OPEN_ALERTS)
        ]

    def _slot_states(
        self,
        conn: DictConnection,
        restaurants: Sequence[dict[str, Any]],
        open_alerts: Sequence[OpenAlert],
        now: dt.datetime,
    ) -> tuple[int, list[SlotState]]:
        """How many slots hold confirmed bookings from each restaurant's local today - PAST to
        today + FUTURE days, plus the slots of open incidents wherever they are; and the states of
        those that may be flagged and of the open incidents' slots (not of every booked slot: at
        10,000 restaurants a year ahead that is millions)."""
        if not restaurants:
            return 0, []
        past = dt.timedelta(days=self.settings.reconcile_past_days)
        future = dt.timedelta(days=self.settings.reconcile_future_days)
        ranges: dict[UUID, tuple[dt.date, dt.date]] = {}
        for r in restaurants:
            try:
                today = now.astimezone(ZoneInfo(r["timezone"])).date()
            except (ZoneInfoNotFoundError, ValueError):
                today = now.date()
            ranges[r["id"]] = (today - past, today + future)

        def in_range(restaurant_id: UUID, date: dt.date) -> bool:
            return restaurant_id in ranges and ranges[restaurant_id][0] <= date <= ranges[restaurant_id][1]

        open_slots: list[SlotKey] = [(alert.key.restaurant_id, *slot) for alert in open_alerts for slot in alert.slots]
        checked = slots_to_check(conn, ranges)
        flagged = {(s.restaurant_id, s.date, s.time) for s in checked.states}
        followed = slot_states_of(conn, [k for k in open_slots if k not in flagged])
        # In range: by restaurant, date and time; an open incident's slot that left its range
        # after them, in the order the incidents opened.
        states = sorted(
            checked.states + [s for s in followed if in_range(s.restaurant_id, s.date)],
            key=lambda s: (s.restaurant_id, s.date, s.time),
        )
        outside = {(s.restaurant_id, s.date, s.time): s for s in followed if not in_range(s.restaurant_id, s.date)}
        states += [outside[k] for k in dict.fromkeys(open_slots) if k in outside]
        return checked.slots + len(outside), states

    def _apply(self, conn: DictConnection, transitions: list[Transition], now: dt.datetime) -> list[Transition]:
        """State changes, detection events and queued notices: all or nothing."""
        applied: list[Transition] = []
        with conn.transaction():
            for planned in transitions:
                t = planned
                params: dict[str, Any] = {
                    "now": now,
                    "figures": Jsonb(t.figures),
                    "id": t.alert_id,
                    "slots": Jsonb(store.members_json(t.members)),
                }
                if t.action is Action.OPEN:
                    row = conn.execute(store.INSERT_ALERT, {**params, **store.key_params(t.key)}).fetchone()
                    assert row is not None
                    t = replace(t, alert_id=row["id"])
                    if t.key.kind is AlertKind.OVERBOOKING:
                        self._record_detection(conn, t, now)
                elif t.action is Action.REMIND:
                    conn.execute(store.REMIND_ALERT, params)
                elif t.action is Action.UPDATE:
                    conn.execute(store.UPDATE_ALERT, params)
                    self._announce_to_new_channels(conn, t, now)
                else:  # resolved, or superseded by the group that now names its slot
                    conn.execute(store.RESOLVE_ALERT, params)
                if t.notice_type is not None:
                    message = Jsonb(notice_for(t, self.settings, now).as_json())
                    for channel in self.notifiers:
                        conn.execute(
                            store.QUEUE,
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
                store.QUEUE_UNANNOUNCED,
                {"alert_id": t.alert_id, "channel": channel.value, "message": message, "now": now},
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
            store.DETECTED_EVENT,
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
        for row in conn.execute(store.UNSENT).fetchall():
            status, error = self._send(conn, row, now, failed)
            results.append(Delivery.of_row(row, status, error))
        return results

    def _send(
        self, conn: DictConnection, row: dict[str, Any], now: dt.datetime, failed: set[str]
    ) -> tuple[DeliveryStatus, str | None]:
        """One queued notice: expire it, skip it, or send it and record what the channel said."""
        channel = row["channel"]
        if now - row["created_at"] > RETRY_HORIZON:
            conn.execute(store.MARK_EXPIRED, {"id": row["id"]})
            return DeliveryStatus.EXPIRED, None
        notifier = self.notifiers.get(Channel(channel))
        if notifier is None:
            return DeliveryStatus.NO_CHANNEL, None
        if channel in failed:
            return DeliveryStatus.DEFERRED, None
        try:
            notifier.send(Notice.from_json(row["message"]))
        except Exception as exc:
            # Anything unexpected is a failed delivery too: the other channel carries on.
            error = str(exc) if isinstance(exc, DeliveryError) else f"unexpected {type(exc).__name__}"
            failed.add(channel)
            conn.execute(store.MARK_FAILED, {"id": row["id"], "now": now, "error": error[:500]})
            return DeliveryStatus.FAILED, error
        conn.execute(store.MARK_SENT, {"id": row["id"], "now": now})
        return DeliveryStatus.SENT, None

    def _preview(self, conn: DictConnection, transitions: list[Transition]) -> list[Delivery]:
        """What a real run would send: the retries waiting, then the new notices."""
        waiting = [Delivery.of_row(row, DeliveryStatus.WOULD_RETRY) for row in conn.execute(store.UNSENT).fetchall()]
        new = [
            Delivery(
                channel=channel.value,
                alert=t.key.kind.value,
                restaurant_id=str(t.key.restaurant_id),
                notice=t.notice_type.value,
                status=DeliveryStatus.WOULD_SEND,
                incident=t.key.incident,
            )
            for t in transitions
            if t.notice_type is not None
            for channel in self.notifiers
        ]
        return waiting + new
