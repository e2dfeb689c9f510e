"""The alert decisions, without a database or a network: thresholds at their edges, the
incident state machine (open, quiet, reminder, resolve), settings."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

import pytest

from capacity.alerts import AlertRunSummary, Delivery, DeliveryStatus, notice_for
from capacity.changes import CapacityChange
from capacity.incidents import (
    Action,
    AlertKind,
    Finding,
    IncidentKey,
    NoticeType,
    OpenAlert,
    cleared_figures,
    conflict_rate_breached,
    plan,
    rate_findings,
    retry_exhaustion_breached,
    slot_findings,
)
from capacity.reconcile import SlotState
from capacity.scheduled_settings import AlertSettings
from capacity.settings import SettingsError

A = UUID("11111111-2222-4333-8444-555555555555")
B = UUID("99999999-8888-4777-8666-555555555555")
NOW = dt.datetime(2030, 6, 14, 19, 30, tzinfo=dt.UTC)
COOLDOWN = dt.timedelta(minutes=60)
SETTINGS = AlertSettings.from_env({"ENVIRONMENT": "test", "RUNBOOK_URL": "https://runbooks.example/capacity"})


class TestConflictRateThreshold:
    @pytest.mark.parametrize(
        ("requests", "conflicts", "fires"),
        [
            (40, 2, False),  # exactly 5 %
            (40, 3, True),  # 7.5 %
            (1000, 50, False),  # exactly 5 %
            (1000, 51, True),  # just above
            (50, 2, False),  # 4 %
            (20, 2, True),  # 10 % at exactly the minimum volume
            (19, 10, False),  # below the minimum volume, however bad
            (0, 0, False),  # no requests: no alert, no division
        ],
    )
    def test_strictly_above_the_threshold_with_the_minimum_volume(self, requests, conflicts, fires):
        assert conflict_rate_breached(requests, conflicts, 0.05, 20) is fires

    @pytest.mark.parametrize(("threshold", "conflicts"), [(0.07, 7), (0.1, 10), (0.3, 30), (0.15, 15)])
    def test_exact_equality_never_fires_whatever_the_float(self, threshold, conflicts):
        assert conflict_rate_breached(100, conflicts, threshold, 1) is False
        assert conflict_rate_breached(100, conflicts + 1, threshold, 1) is True

    def test_zero_requests_with_no_minimum(self):
        assert conflict_rate_breached(0, 0, 0.05, 1) is False


class TestRetryExhaustionThreshold:
    @pytest.mark.parametrize(("count", "fires"), [(0, False), (5, False), (6, True)])
    def test_more_than_the_threshold(self, count, fires):
        assert retry_exhaustion_breached(count, 5) is fires


def counters(requests: int, conflicts: int = 0, retry_exhausted: int = 0, rid: UUID = A) -> dict[str, Any]:
    return {"restaurant_id": rid, "requests": requests, "conflicts": conflicts, "retry_exhausted": retry_exhausted}


class TestRateFindings:
    def test_each_restaurant_on_its_own(self):
        rows = [counters(40, 4, rid=A), counters(40, 1, retry_exhausted=9, rid=B)]
        findings, observed = rate_findings(rows, {A: "Alpha", B: "Beta"}, SETTINGS, NOW - dt.timedelta(hours=1), NOW)
        assert [(f.key.restaurant_id, f.key.kind, f.restaurant_name) for f in findings] == [
            (A, AlertKind.CONFLICT_RATE, "Alpha"),
            (B, AlertKind.RETRY_EXHAUSTION, "Beta"),
        ]
        assert findings[0].figures == {
            "requests": 40,
            "conflicts": 4,
            "conflictRate": 0.1,
            "threshold": 0.05,
            "minRequests": 20,
            "windowStart": "2030-06-14T18:30:00Z",
            "windowEnd": "2030-06-14T19:30:00Z",
            "includesLoadTest": False,
        }
        assert findings[0].severity.value == "warning"
        assert set(observed) == {
            IncidentKey(r, k) for r in (A, B) for k in (AlertKind.CONFLICT_RATE, AlertKind.RETRY_EXHAUSTION)
        }

    def test_a_restaurant_with_only_cancellations_has_no_rate_and_no_error(self):
        findings, observed = rate_findings([counters(0)], {}, SETTINGS, NOW, NOW)
        assert findings == []
        assert observed[IncidentKey(A, AlertKind.CONFLICT_RATE)]["conflictRate"] == 0.0


class TestSlotFindings:
    @staticmethod
    def state(time: str, max_covers: int | None, covers: int, accepted: int | None) -> SlotState:
        return SlotState(A, dt.date(2030, 6, 14), dt.time.fromisoformat(time), max_covers, accepted, covers, 3)

    def test_overbooked_is_over_the_capacity_the_bookings_were_accepted_under(self):
        state = self.state
        states = [
            state("18:00", 20, 20, 20),
            state("19:00", 20, 24, 20),
            state("20:00", None, 500, None),
            state("21:00", 0, 2, 0),
            state("21:15", 30, 24, 20),  # raised since: the guard never allowed 24
        ]
        findings = slot_findings(states, {A: {"name": "Alpha", "timezone": "Europe/London"}})
        assert [
            (f.key.kind, f.key.incident, f.figures["confirmedCovers"], f.figures["acceptedMaxCovers"]) for f in findings
        ] == [
            (AlertKind.OVERBOOKING, "2030-06-14 19:00", 24, 20),
            (AlertKind.OVERBOOKING, "2030-06-14 21:00", 2, 0),
            (AlertKind.OVERBOOKING, "2030-06-14 21:15", 24, 20),
        ]
        assert {f.severity.value for f in findings} == {"critical"}
        assert findings[0].figures["command"] == f"capctl slot show {A} 2030-06-14 19:00"
        assert findings[0].figures["timezone"] == "Europe/London"

    def test_a_capacity_lowered_below_accepted_bookings_is_a_warning_not_an_overbooking(self):
        findings = slot_findings([self.state("19:00", 10, 40, 40)], {A: {"name": "Alpha", "timezone": "UTC"}})
        assert [(f.key.kind, f.key.incident, f.severity.value, f.figures["slotCount"]) for f in findings] == [
            (AlertKind.CAPACITY_BELOW_BOOKINGS, "no recorded change", "warning", 1)
        ]
        assert findings[0].figures["slots"][0]["maxCovers"] == 10


SLOT = (dt.date(2030, 6, 14), dt.time(19, 0))


def finding(
    kind: AlertKind = AlertKind.OVERBOOKING, slot: tuple[dt.date, dt.time] = SLOT, rid: UUID = A, **figures: Any
) -> Finding:
    return Finding(IncidentKey(rid, kind, slot), "Alpha", {"confirmedCovers": 24, "maxCovers": 20, **figures})


def open_alert(key: IncidentKey, notified_ago: dt.timedelta, alert_id: int = 7) -> OpenAlert:
    return OpenAlert(
        alert_id,
        key,
        "Alpha",
        NOW - dt.timedelta(hours=3),
        NOW - notified_ago,
        {"confirmedCovers": 25, "maxCovers": 20, "bookings": 6, "date": "2030-06-14", "time": "19:00"},
    )


class TestStateMachine:
    def test_a_new_condition_opens_an_incident(self):
        [t] = plan([finding()], [], now=NOW, cooldown=COOLDOWN)
        assert (t.action, t.alert_id, t.opened_at, t.notice_type.value) == (Action.OPEN, None, NOW, "opened")

    def test_no_repeat_inside_the_cooldown(self):
        f = finding()
        [t] = plan([f], [open_alert(f.key, dt.timedelta(minutes=59))], now=NOW, cooldown=COOLDOWN)
        assert (t.action, t.alert_id, t.notice_type) == (Action.UPDATE, 7, None)
        assert t.figures["confirmedCovers"] == 24  # figures refreshed

    def test_a_reminder_once_the_cooldown_has_passed(self):
        f = finding()
        for ago in (dt.timedelta(minutes=60), dt.timedelta(hours=5)):
            [t] = plan([f], [open_alert(f.key, ago)], now=NOW, cooldown=COOLDOWN)
            assert (t.action, t.notice_type.value) == (Action.REMIND, "reminder")
            assert t.opened_at == NOW - dt.timedelta(hours=3)

    def test_a_kind_with_its_own_cooldown_reminds_after_that(self):
        f = finding()
        day = {f.key.kind: dt.timedelta(hours=24)}
        for ago, action in ((dt.timedelta(hours=5), Action.UPDATE), (dt.timedelta(hours=24), Action.REMIND)):
            [t] = plan([f], [open_alert(f.key, ago)], now=NOW, cooldown=COOLDOWN, cooldowns=day)
            assert t.action == action, ago

    def test_a_cleared_condition_resolves(self):
        key = IncidentKey(A, AlertKind.OVERBOOKING, SLOT)
        observed = {key: {"confirmedCovers": 20, "maxCovers": 20, "bookings": 5}}
        [t] = plan([], [open_alert(key, dt.timedelta(minutes=5))], now=NOW, cooldown=COOLDOWN, observed=observed)
        assert (t.action, t.alert_id, t.notice_type.value) == (Action.RESOLVE, 7, "resolved")
        assert t.figures == observed[key]

    def test_incidents_are_per_restaurant_and_per_slot(self):
        open_a = open_alert(IncidentKey(A, AlertKind.OVERBOOKING, SLOT), dt.timedelta(minutes=5))
        transitions = plan(
            [finding(rid=B), finding(slot=(SLOT[0], dt.time(20, 0))), finding(), finding()],
            [open_a],
            now=NOW,
            cooldown=COOLDOWN,
        )
        assert sorted((t.key.restaurant_id, t.key.incident, t.action) for t in transitions) == [
            (A, "2030-06-14 19:00", Action.UPDATE),
            (A, "2030-06-14 20:00", Action.OPEN),
            (B, "2030-06-14 19:00", Action.OPEN),
        ]

    def test_cleared_figures_without_a_current_observation(self):
        slot = open_alert(IncidentKey(A, AlertKind.OVERBOOKING, SLOT), dt.timedelta(0))
        assert cleared_figures(slot, {}) | {} == {**slot.figures, "confirmedCovers": 0, "bookings": 0, "bookingIds": []}
        rate = OpenAlert(
            8,
            IncidentKey(A, AlertKind.CONFLICT_RATE),
            "Alpha",
            NOW,
            NOW,
            {"requests": 40, "conflicts": 8, "conflictRate": 0.2, "threshold": 0.05},
        )
        assert cleared_figures(rate, {}) == {
            "requests": 0,
            "conflicts": 0,
            "conflictRate": 0.0,
            "threshold": 0.05,
            "retryExhausted": 0,
        }

    def test_notices_carry_the_incident_and_no_more(self):
        [opened] = plan([finding()], [], now=NOW, cooldown=COOLDOWN)
        notice = notice_for(opened, SETTINGS, NOW)
        assert notice.as_json() == {
            "alert_type": "overbooking",
            "notice": "opened",
            "severity": "critical",
            "restaurant_id": str(A),
            "restaurant_name": "Alpha",
            "incident_key": "2030-06-14 19:00",
            "figures": {"confirmedCovers": 24, "maxCovers": 20},
            "opened_at": "2030-06-14T19:30:00Z",
            "at": "2030-06-14T19:30:00Z",
            "environment": "test",
            "runbook_url": "https://runbooks.example/capacity#overbooking",
            "dashboard_url": None,
            "resolved_at": None,
        }
        [resolved] = plan([], [open_alert(opened.key, dt.timedelta(0))], now=NOW, cooldown=COOLDOWN)
        assert notice_for(resolved, SETTINGS, NOW).resolved_at == "2030-06-14T19:30:00Z"


class TestSummary:
    def test_counts(self):
        [opened] = plan([finding()], [], now=NOW, cooldown=COOLDOWN)
        summary = AlertRunSummary(
            checked_at=NOW,
            dry_run=False,
            channels=["sns"],
            transitions=[opened],
            deliveries=[
                Delivery("sns", "overbooking", str(A), "", "opened", DeliveryStatus.SENT),
                Delivery(
                    "webhook", "overbooking", str(A), "", "opened", DeliveryStatus.FAILED, "webhook answered HTTP 500"
                ),
            ],
        )
        data = summary.as_json()
        assert {
            k: data[k] for k in ("opened", "resolved", "reminders", "overbookDetected", "sent", "deliveryFailures")
        } == {"opened": 1, "resolved": 0, "reminders": 0, "overbookDetected": 1, "sent": 1, "deliveryFailures": 1}
        assert data["transitions"][0]["severity"] == "critical"
        assert data["deliveries"][1]["error"] == "webhook answered HTTP 500"


class TestSettings:
    @pytest.mark.parametrize(
        "arn",
        [
            "arn:aws:sns:eu-west-1:123456789012:capacity-alerts",
            "arn:aws-us-gov:sns:us-gov-west-1:123456789012:alerts.fifo",
        ],
    )
    def test_topic_arn_accepted(self, arn):
        assert AlertSettings.from_env({"ALERT_TOPIC_ARN": arn}).alert_topic_arn == arn

    @pytest.mark.parametrize(
        "arn", ["capacity-alerts", "arn:aws:sqs:eu-west-1:123456789012:q", "arn:aws:sns:eu-west-1:123:alerts"]
    )
    def test_topic_arn_refused_with_the_variable_named(self, arn):
        with pytest.raises(SettingsError, match=r"invalid setting ALERT_TOPIC_ARN: .*SNS topic ARN"):
            AlertSettings.from_env({"ALERT_TOPIC_ARN": arn})

    def test_defaults_alert_above_5_percent_over_20_requests_and_remind_hourly(self):
        s = AlertSettings.from_env({})
        assert (s.conflict_rate_threshold, s.conflict_min_requests, s.alert_cooldown_minutes) == (0.05, 20, 60)
        assert (s.alert_topic_arn, s.alert_webhook_url, s.include_load_test) == (None, None, False)


# -- one incident per capacity change -----------------------------------------------------------

BELOW = AlertKind.CAPACITY_BELOW_BOOKINGS
ALPHA = {A: {"name": "Alpha", "timezone": "Europe/London"}}


def below(day: int, covers: int = 12, max_covers: int = 10, time: str = "19:00") -> SlotState:
    return SlotState(A, dt.date(2030, 6, day), dt.time.fromisoformat(time), max_covers, 20, covers, 3)


def capacity_change(change_id: int, actor: str = "alice") -> CapacityChange:
    row = {"weekday": 5, "start_time": "17:00:00", "end_time": "22:00:00"}
    return CapacityChange(
        change_id, A, NOW, actor, "weekly_rule.update", {**row, "max_covers": 20}, {**row, "max_covers": 10}, "refit"
    )


def slot_of(state: SlotState) -> tuple[UUID, dt.date, dt.time]:
    return state.restaurant_id, state.date, state.time


class TestGrouping:
    def test_slots_of_one_change_are_one_finding_with_the_worst_named_first(self):
        states = [below(d, covers=12 + (d == 21) * 5) for d in (7, 14, 21, 28)] + [below(8, time="20:00")]
        changes = {slot_of(s): capacity_change(4) for s in states[:4]} | {slot_of(states[4]): capacity_change(5)}
        findings = slot_findings(states, ALPHA, changes)
        assert [(f.key.incident, f.figures["slotCount"], len(f.members)) for f in findings] == [
            ("change 4", 4, 4),
            ("change 5", 1, 1),
        ]
        figures = findings[0].figures
        assert (figures["coversOver"], figures["bookings"], figures["firstDate"], figures["lastDate"]) == (
            13,
            12,
            "2030-06-07",
            "2030-06-28",
        )
        assert [(s["date"], s["coversOver"]) for s in figures["slots"]] == [
            ("2030-06-21", 7),
            ("2030-06-07", 2),
            ("2030-06-14", 2),
            ("2030-06-28", 2),
        ]
        assert figures["slots"][0]["command"] == f"capctl slot show {A} 2030-06-21 19:00"
        assert (figures["change"]["actor"], figures["command"], figures["timezone"]) == (
            "alice",
            f"capctl verify --restaurant {A} --change 4",
            "Europe/London",
        )

    def test_at_most_five_slots_are_named(self):
        states = [below(d) for d in range(1, 13)]
        [f] = slot_findings(states, ALPHA, {slot_of(s): capacity_change(4) for s in states})
        assert (f.figures["slotCount"], len(f.figures["slots"]), len(f.members)) == (12, 5, 12)

    def test_slots_without_a_recorded_change_are_the_restaurants_one_incident(self):
        findings = slot_findings([below(7), below(8, time="20:00")], ALPHA, {})
        assert [(f.key, f.key.incident, f.figures["change"]) for f in findings] == [
            (IncidentKey(A, BELOW), "no recorded change", None)
        ]

    def test_a_slot_an_open_incident_names_stays_with_it_whatever_changed_since(self):
        held = OpenAlert(
            9,
            IncidentKey(A, BELOW, change_id=4),
            "Alpha",
            NOW - dt.timedelta(hours=2),
            NOW - dt.timedelta(minutes=5),  # inside the cooldown
            {"change": {"actor": "alice"}, "openedWithSlots": 12},
            frozenset({(dt.date(2030, 6, 7), dt.time(19, 0))}),
        )
        later = {slot_of(below(7)): capacity_change(6, "carol"), slot_of(below(14)): capacity_change(4)}
        [f] = slot_findings([below(7), below(14)], ALPHA, later, [held])
        assert (f.key, f.figures["change"], f.figures["slotCount"], f.figures["openedWithSlots"]) == (
            held.key,
            {"actor": "alice"},
            2,
            12,
        )
        [t] = plan([f], [held], now=NOW, cooldown=COOLDOWN)
        assert (t.action, t.alert_id, t.notice_type, len(t.members)) == (Action.UPDATE, 9, None, 2)

    def test_all_freed_resolves_once_with_nothing_below(self):
        group = OpenAlert(
            9,
            IncidentKey(A, BELOW, change_id=4),
            "Alpha",
            NOW,
            NOW,
            {"slotCount": 1, "openedWithSlots": 12, "coversOver": 2, "slots": [{"date": "2030-06-07"}]},
            frozenset({(dt.date(2030, 6, 7), dt.time(19, 0))}),
        )
        [t] = plan([], [group], now=NOW, cooldown=COOLDOWN)
        assert (t.action, t.notice_type.value) == (Action.RESOLVE, "resolved")
        assert (t.figures["slotCount"], t.figures["openedWithSlots"], t.figures["slots"]) == (0, 12, [])
        assert group.slots == [(dt.date(2030, 6, 7), dt.time(19, 0))]

    def test_per_slot_warnings_from_before_008_are_superseded_by_their_group_or_resolved(self):
        def legacy(alert_id: int, day: int) -> OpenAlert:
            key = IncidentKey(A, BELOW, (dt.date(2030, 6, day), dt.time(19, 0)))
            return OpenAlert(alert_id, key, "Alpha", NOW, NOW, {"maxCovers": 10})

        still_below = [below(7), below(14)]
        [group] = slot_findings(still_below, ALPHA, {slot_of(s): capacity_change(4) for s in still_below})
        transitions = plan([group], [legacy(1, 7), legacy(2, 14), legacy(3, 21)], now=NOW, cooldown=COOLDOWN)
        assert [(t.action, t.key.incident, t.notice_type) for t in transitions] == [
            (Action.OPEN, "change 4", NoticeType.OPENED),
            (Action.SUPERSEDE, "2030-06-07 19:00", None),
            (Action.SUPERSEDE, "2030-06-14 19:00", None),
            (Action.RESOLVE, "2030-06-21 19:00", NoticeType.RESOLVED),
        ]
        assert transitions[0].figures["replacesIncidents"] == 2
        assert transitions[1].figures == {"maxCovers": 10, "supersededBy": "change 4"}
        assert transitions[0].key.legacy is False and transitions[1].key.legacy is True

    def test_keys_are_labelled_and_ordered_without_parsing(self):
        keys = [
            IncidentKey(A, BELOW, change_id=12),
            IncidentKey(A, AlertKind.CONFLICT_RATE),
            IncidentKey(A, BELOW),
            IncidentKey(A, AlertKind.OVERBOOKING, SLOT),
        ]
        assert [k.incident for k in sorted(keys, key=lambda k: k.order)] == [
            "no recorded change",
            "change 12",
            "",
            "2030-06-14 19:00",
        ]
        assert [k.grouped for k in keys] == [True, False, True, False]
