"""The alert check on a real PostgreSQL, SNS faked by moto (read back through a subscribed SQS
queue) and a real HTTP webhook receiver on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest
from psycopg.rows import dict_row

from capacity.alerts import AlertChecker
from capacity.notifiers import DeliveryError, SnsNotifier, WebhookNotifier, notifiers_from_settings
from capacity.scheduled_settings import DEFAULT_RUNBOOK_URL, AlertSettings
from capctl import demo
from capctl.sns_inbox import SnsInbox
from tests.alerting import (
    GUEST,
    OTHER_ID,
    REGION,
    insert_booking,
    insert_event,
    notice,
    other_restaurant,
    overbook,
    slot_date,
)
from tests.support import RESTAURANT_ID


def traffic(
    conn: Any, *, requests: int, conflicts: int, restaurant_id: str = RESTAURANT_ID, source: str = "web"
) -> None:
    """``requests`` outcomes of which ``conflicts`` retried once before succeeding."""
    insert_event(conn, "booking.success", restaurant_id=restaurant_id, count=requests - conflicts, source=source)
    insert_event(conn, "booking.conflict", restaurant_id=restaurant_id, count=conflicts, source=source, attempts=2)
    insert_event(conn, "booking.success", restaurant_id=restaurant_id, count=conflicts, source=source, attempts=2)


def settings(**env: str) -> AlertSettings:
    return AlertSettings.from_env({"ENVIRONMENT": "test", **env})


def check(conn: Any, config: AlertSettings, *, now: dt.datetime | None = None, dry_run: bool = False) -> Any:
    clock: Callable[[], dt.datetime] = (lambda: now) if now else (lambda: dt.datetime.now(dt.UTC))
    return AlertChecker(config, notifiers_from_settings(config), now=clock).run(conn, dry_run=dry_run)


def alert_rows(conn: Any) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT restaurant_id::text, kind, incident_key, status, severity FROM alert_state ORDER BY id"
    ).fetchall()


def delivery_rows(conn: Any) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT notice, channel, status, attempts, sent_at IS NOT NULL AS has_sent_at FROM alert_deliveries ORDER BY id"
    ).fetchall()


def detected_events(conn: Any) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT restaurant_id::text, metadata FROM observability_events WHERE event_type = 'booking.overbook_detected'"
    ).fetchall()


# -- overbooking -------------------------------------------------------------------------------


class TestOverbooking:
    def test_one_alert_one_event_then_quiet_then_resolved(self, seeded_db, conn, topic):
        date = slot_date()
        booking_ids = overbook(conn, date=date)
        config = settings(ALERT_TOPIC_ARN=topic.topic_arn)

        first = check(conn, config)
        assert (first.opened, first.overbook_detected, first.sent, first.delivery_failures) == (1, 1, 1, 0)
        [message] = topic.messages()
        slot = f"{date.isoformat()} 19:00"
        assert message["subject"] == f"[CRITICAL] Overbooked slot {slot} - Test Trattoria (test)"
        assert message["attributes"] == {
            "severity": "critical",
            "restaurantId": RESTAURANT_ID,
            "alertType": "overbooking",
        }
        assert f"Restaurant: Test Trattoria ({RESTAURANT_ID})" in message["message"]
        assert (
            "Confirmed covers: 24, over the capacity of 20 (4 over) (no booking of it passed the guard), in 6 bookings"
            in message["message"]
        )
        assert f"Next: capctl slot show {RESTAURANT_ID} {slot}" in message["message"]
        assert f"Runbook: {DEFAULT_RUNBOOK_URL}#overbooking" in message["message"]  # absolute, clickable
        for personal in GUEST.values():
            assert personal not in message["message"] and personal not in message["subject"]
        [event] = detected_events(conn)
        assert event["restaurant_id"] == RESTAURANT_ID
        assert {k: event["metadata"][k] for k in ("date", "time", "maxCovers", "confirmedCovers", "source")} == {
            "date": date.isoformat(),
            "time": "19:00",
            "maxCovers": 20,
            "confirmedCovers": 24,
            "source": "reconcile",
        }
        assert alert_rows(conn) == [
            {
                "restaurant_id": RESTAURANT_ID,
                "kind": "overbooking",
                "incident_key": slot,
                "status": "open",
                "severity": "critical",
            }
        ]

        again = check(conn, config)
        assert (again.opened, again.sent, again.reminders) == (0, 0, 0)
        assert topic.messages() == []
        assert len(detected_events(conn)) == 1

        # Cancel the excess by SQL: 20 covers left, within capacity.
        conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = %s", (booking_ids[0],))
        cleared = check(conn, config)
        assert (cleared.resolved, cleared.sent) == (1, 1)
        [resolved] = topic.messages()
        assert resolved["subject"] == f"[RESOLVED] Overbooked slot {slot} - Test Trattoria (test)"
        assert "Confirmed covers now: 20 (capacity 20): the slot is within its capacity" in resolved["message"]
        assert [r["status"] for r in alert_rows(conn)] == ["resolved"]
        assert [(d["notice"], d["status"]) for d in delivery_rows(conn)] == [("opened", "sent"), ("resolved", "sent")]

        # Over capacity again later: a new incident, a new detection event.
        insert_booking(conn, date=date, party_size=4)
        assert check(conn, config).opened == 1
        assert len(topic.messages()) == 1
        assert len(detected_events(conn)) == 2

    def test_load_test_bookings_count_towards_overbooking(self, seeded_db, conn, topic):
        date = slot_date(3)
        for _ in range(6):
            insert_booking(conn, date=date, time="18:00", source="load-test")
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        assert [(t.key.kind.value, t.key.incident) for t in summary.transitions] == [
            ("overbooking", f"{date.isoformat()} 18:00")
        ]

    def test_slots_outside_the_reconcile_window_are_not_checked(self, seeded_db, conn, topic):
        overbook(conn, date=slot_date(61))
        overbook(conn, date=slot_date(-2))
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn, RECONCILE_FUTURE_DAYS="60"))
        assert summary.transitions == [] and topic.messages() == []

    def test_by_default_every_future_slot_is_checked(self, seeded_db, conn, topic):
        overbook(conn, date=slot_date(400))
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        assert [(t.action.value, t.key.kind.value) for t in summary.transitions] == [("open", "overbooking")]

    def test_an_open_incident_that_left_the_window_is_still_followed(self, seeded_db, conn, topic):
        date = slot_date(0)
        ids = overbook(conn, date=date)
        config = settings(ALERT_TOPIC_ARN=topic.topic_arn)
        assert check(conn, config).opened == 1
        # Two days later the slot is outside today - RECONCILE_PAST_DAYS, yet still over capacity.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
        assert check(conn, config, now=later).resolved == 0
        conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = ANY(%s::uuid[])", (ids[:3],))
        assert check(conn, config, now=later).resolved == 1
        subjects = [m["subject"] for m in topic.messages()]
        assert subjects[0].startswith("[CRITICAL]") and subjects[-1].startswith("[RESOLVED]")

    def test_all_bookings_cancelled_resolves_with_zero_covers(self, seeded_db, conn, topic):
        date = slot_date()
        ids = overbook(conn, date=date)
        config = settings(ALERT_TOPIC_ARN=topic.topic_arn)
        check(conn, config)
        conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = ANY(%s::uuid[])", (ids,))
        assert check(conn, config).resolved == 1
        resolved = topic.messages()[-1]
        assert "Confirmed covers now: 0 (capacity 20): the slot is within its capacity" in resolved["message"]


# -- rates -------------------------------------------------------------------------------------


class TestRates:
    def test_conflict_rate_ten_percent_over_forty_requests_alerts(self, seeded_db, conn, topic):
        traffic(conn, requests=40, conflicts=4)
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        assert [(t.action.value, t.key.kind.value) for t in summary.transitions] == [("open", "conflict_rate")]
        [message] = topic.messages()
        assert message["subject"] == "[WARNING] Booking conflict rate 10.0% - Test Trattoria (test)"
        assert message["attributes"]["alertType"] == "conflict_rate"
        assert message["attributes"]["severity"] == "warning"
        assert "Conflict rate: 10.0% (4 of 40 requests met a conflict)" in message["message"]
        assert "Threshold: more than 5.0% with at least 20 requests" in message["message"]
        assert detected_events(conn) == []

    def test_events_of_a_deleted_restaurant_are_ignored(self, seeded_db, conn, topic):
        gone = "99999999-8888-4777-8666-555555555555"
        traffic(conn, requests=40, conflicts=20, restaurant_id=gone)  # events outlive their restaurant
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        assert summary.transitions == [] and topic.messages() == [] and alert_rows(conn) == []

    @pytest.mark.parametrize(("requests", "conflicts"), [(50, 2), (40, 2), (19, 10)])
    def test_four_percent_exactly_five_or_too_few_requests_do_not_alert(
        self, seeded_db, conn, topic, requests, conflicts
    ):
        traffic(conn, requests=requests, conflicts=conflicts)
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        assert summary.transitions == [] and topic.messages() == []
        assert alert_rows(conn) == []

    def test_lost_races_count_as_conflicts(self, seeded_db, conn, topic):
        insert_event(conn, "booking.success", count=36)
        insert_event(conn, "booking.capacity_exceeded", count=4, reason="full")
        insert_event(conn, "booking.overbook_prevented", count=3)
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        [t] = summary.transitions
        assert (t.key.kind.value, t.figures["conflicts"], t.figures["requests"]) == ("conflict_rate", 3, 40)

    def test_events_older_than_an_hour_do_not_count(self, seeded_db, conn, topic):
        old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=61)
        insert_event(conn, "booking.success", count=20, at=old, attempts=3)
        assert check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn)).transitions == []

    def test_retry_exhaustion_over_the_threshold_alerts(self, seeded_db, conn, topic):
        insert_event(conn, "booking.success", count=200)
        insert_event(conn, "booking.retry_exhausted", count=5, attempts=4)
        config = settings(ALERT_TOPIC_ARN=topic.topic_arn, RETRY_EXHAUSTED_THRESHOLD="5")
        assert check(conn, config).transitions == []  # 5 is not more than 5
        insert_event(conn, "booking.retry_exhausted", attempts=4)
        summary = check(conn, config)
        assert [t.key.kind.value for t in summary.transitions] == ["retry_exhaustion"]
        [message] = topic.messages()
        assert message["subject"] == ("[WARNING] Booking retries exhausted: 6 in the last hour - Test Trattoria (test)")
        assert "Requests that exhausted their retries: 6 of 206" in message["message"]

    def test_load_test_traffic_is_left_out_unless_asked(self, seeded_db, conn, topic):
        traffic(conn, requests=40, conflicts=10, source="load-test")
        assert check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn)).transitions == []
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn, ALERTS_INCLUDE_LOAD_TEST="true"))
        [t] = summary.transitions
        assert t.key.kind.value == "conflict_rate" and t.figures["includesLoadTest"] is True
        assert "(live and load-test traffic)" in topic.messages()[0]["message"]

    def test_cooldown_then_reminder_then_resolve(self, seeded_db, conn, topic):
        traffic(conn, requests=40, conflicts=8)  # ten minutes ago
        config = settings(ALERT_TOPIC_ARN=topic.topic_arn, ALERT_COOLDOWN_MINUTES="20")
        start = dt.datetime.now(dt.UTC)
        assert check(conn, config, now=start).opened == 1
        inside = check(conn, config, now=start + dt.timedelta(minutes=10))
        assert [t.action.value for t in inside.transitions] == ["update"] and inside.deliveries == []
        reminder = check(conn, config, now=start + dt.timedelta(minutes=25))
        assert [t.action.value for t in reminder.transitions] == ["remind"] and reminder.sent == 1
        quiet = check(conn, config, now=start + dt.timedelta(minutes=30))
        assert [t.action.value for t in quiet.transitions] == ["update"] and quiet.deliveries == []
        # Two hours on, the last hour holds no traffic: the incident clears.
        cleared = check(conn, config, now=start + dt.timedelta(hours=2))
        assert [t.action.value for t in cleared.transitions] == ["resolve"]
        assert [m["subject"] for m in topic.messages()] == [
            "[WARNING] Booking conflict rate 20.0% - Test Trattoria (test)",
            "[WARNING, still open] Booking conflict rate 20.0% - Test Trattoria (test)",
            "[RESOLVED] Booking conflict rate 0.0% - Test Trattoria (test)",
        ]
        assert [r["status"] for r in alert_rows(conn)] == ["resolved"]
        assert [d["notice"] for d in delivery_rows(conn)] == ["opened", "reminder", "resolved"]


# -- delivery ----------------------------------------------------------------------------------


class TestDelivery:
    def test_sns_failure_is_not_marked_sent_and_is_retried_after_the_fix(self, seeded_db, conn, topic):
        overbook(conn, date=slot_date())
        missing = topic.topic_arn.replace("capacity-alerts", "no-such-topic")
        broken = check(conn, settings(ALERT_TOPIC_ARN=missing))
        assert (broken.opened, broken.sent, broken.delivery_failures) == (1, 0, 1)
        assert broken.deliveries[0].error == "SNS publish failed: NotFound"
        assert delivery_rows(conn) == [
            {"notice": "opened", "channel": "sns", "status": "failed", "attempts": 1, "has_sent_at": False}
        ]
        still = check(conn, settings(ALERT_TOPIC_ARN=missing))
        assert still.delivery_failures == 1 and delivery_rows(conn)[0]["attempts"] == 2
        assert topic.messages() == []

        fixed = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        assert (fixed.opened, fixed.sent, fixed.delivery_failures) == (0, 1, 0)
        [message] = topic.messages()
        assert message["subject"].startswith("[CRITICAL] Overbooked slot")
        assert delivery_rows(conn) == [
            {"notice": "opened", "channel": "sns", "status": "sent", "attempts": 3, "has_sent_at": True}
        ]

    def test_webhook_500_is_retried_next_run_and_sns_is_not_held_up(self, seeded_db, conn, topic, webhook):
        overbook(conn, date=slot_date())
        config = settings(ALERT_TOPIC_ARN=topic.topic_arn, ALERT_WEBHOOK_URL=webhook.url)
        webhook.status = 500
        first = check(conn, config)
        assert {(d.channel, d.status) for d in first.deliveries} == {("sns", "sent"), ("webhook", "failed")}
        assert [d.error for d in first.deliveries if d.channel == "webhook"] == ["webhook answered HTTP 500"]
        assert len(topic.messages()) == 1 and webhook.messages() == []

        webhook.status = 200
        second = check(conn, config)
        assert [(d.channel, d.status) for d in second.deliveries] == [("webhook", "sent")]
        [payload] = webhook.messages()
        assert payload["text"].startswith("[CRITICAL] Overbooked slot")
        assert payload["blocks"][0]["type"] == "header"
        assert (
            "Confirmed covers: 24, over the capacity of 20 (4 over) (no booking of it passed the guard)"
            in payload["blocks"][1]["text"]["text"]
        )
        for personal in GUEST.values():
            assert personal not in json.dumps(payload)
        assert topic.messages() == []  # SNS got it once, on the first run
        assert {(d["channel"], d["status"]) for d in delivery_rows(conn)} == {("sns", "sent"), ("webhook", "sent")}

    def test_an_incident_opened_before_a_channel_existed_is_announced_to_it_once(self, seeded_db, conn, topic, webhook):
        date = slot_date()
        overbook(conn, date=date)
        assert check(conn, settings()).opened == 1  # no channel configured yet

        with_sns = settings(ALERT_TOPIC_ARN=topic.topic_arn)
        first = check(conn, with_sns)
        assert first.opened == 0 and [(d.channel, d.notice, d.status) for d in first.deliveries] == [
            ("sns", "opened", "sent")
        ]
        [message] = topic.messages()
        assert message["subject"] == f"[CRITICAL] Overbooked slot {date.isoformat()} 19:00 - Test Trattoria (test)"
        assert check(conn, with_sns).deliveries == [] and topic.messages() == []

        with_both = settings(ALERT_TOPIC_ARN=topic.topic_arn, ALERT_WEBHOOK_URL=webhook.url)
        added = check(conn, with_both)
        assert [(d.channel, d.notice, d.status) for d in added.deliveries] == [("webhook", "opened", "sent")]
        [payload] = webhook.messages()
        assert payload["text"].startswith("[CRITICAL] Overbooked slot")
        assert topic.messages() == []  # SNS already knew
        assert check(conn, with_both).deliveries == []
        assert [(d["notice"], d["channel"]) for d in delivery_rows(conn)] == [("opened", "sns"), ("opened", "webhook")]

    def test_a_failing_webhook_defers_the_rest_of_its_notices_to_the_next_run(self, seeded_db, conn, webhook):
        date = slot_date()
        overbook(conn, date=date, time="18:00")
        overbook(conn, date=date, time="19:00")
        config = settings(ALERT_WEBHOOK_URL=webhook.url)
        webhook.status = 503
        summary = check(conn, config)
        assert [d.status for d in summary.deliveries] == ["failed", "deferred"]
        assert [d["status"] for d in delivery_rows(conn)] == ["failed", "pending"]
        webhook.status = 204
        assert [d.status for d in check(conn, config).deliveries] == ["sent", "sent"]

    def test_an_unexpected_channel_error_fails_that_channel_only(self, seeded_db, conn, topic, webhook, monkeypatch):
        def broken(self: Any, notice: Any) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(WebhookNotifier, "send", broken)
        overbook(conn, date=slot_date())
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn, ALERT_WEBHOOK_URL=webhook.url))
        assert {(d.channel, d.status, d.error) for d in summary.deliveries} == {
            ("sns", "sent", None),
            ("webhook", "failed", "unexpected RuntimeError"),
        }
        assert len(topic.messages()) == 1

    def test_connection_refused_is_a_failed_delivery(self, seeded_db, conn):
        overbook(conn, date=slot_date())
        summary = check(conn, settings(ALERT_WEBHOOK_URL="http://127.0.0.1:9/hook"))
        assert summary.deliveries[0].status == "failed"
        assert summary.deliveries[0].error == "webhook unreachable (ConnectionRefusedError)"

    def test_notices_of_a_channel_no_longer_configured_wait_and_expire(self, seeded_db, conn, topic):
        overbook(conn, date=slot_date())
        missing = topic.topic_arn.replace("capacity-alerts", "gone")
        check(conn, settings(ALERT_TOPIC_ARN=missing))
        waiting = check(conn, settings())
        assert [d.status for d in waiting.deliveries] == ["no-channel"]
        day_later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
        expired = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn), now=day_later)
        assert "expired" in [d.status for d in expired.deliveries]
        assert delivery_rows(conn)[0]["status"] == "expired"
        assert all(not m["subject"].startswith("[CRITICAL] Overbooked") for m in topic.messages())

    def test_sns_client_is_created_lazily_in_the_topic_region(self, topic):
        notifier = SnsNotifier(topic.topic_arn)
        assert notifier._client is None
        assert notifier.client().meta.region_name == REGION

    def test_webhook_url_from_a_secret(self, seeded_db, conn, topic, webhook):
        sm = boto3.client("secretsmanager", region_name=REGION)
        plain = sm.create_secret(Name="alerts/webhook", SecretString=webhook.url)["ARN"]
        as_json = sm.create_secret(Name="alerts/webhook-json", SecretString=json.dumps({"url": webhook.url}))["ARN"]
        overbook(conn, date=slot_date())
        [notifier] = notifiers_from_settings(settings(ALERT_WEBHOOK_SECRET_ARN=plain))
        assert isinstance(notifier, WebhookNotifier) and notifier.url() == webhook.url
        [notifier] = notifiers_from_settings(settings(ALERT_WEBHOOK_SECRET_ARN=as_json))
        assert notifier.url() == webhook.url
        summary = check(conn, settings(ALERT_WEBHOOK_SECRET_ARN=as_json))
        assert [d.status for d in summary.deliveries] == ["sent"] and len(webhook.messages()) == 1

    def test_a_missing_webhook_secret_is_a_failed_delivery(self, seeded_db, conn, topic):
        overbook(conn, date=slot_date())
        arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:missing-AbCdEf"
        summary = check(conn, settings(ALERT_WEBHOOK_SECRET_ARN=arn))
        assert summary.deliveries[0].status == "failed"
        assert summary.deliveries[0].error.startswith("webhook URL unavailable")


# -- tenants, dry run, overlap -------------------------------------------------------------------


class TestRun:
    @pytest.fixture
    def two_restaurants(self, seeded_db, seed):
        seed(
            other_restaurant(
                "America/New_York",
                {"weekdays": [1, 2, 3, 4, 5, 6, 7], "start": "17:00", "end": "22:00", "maxCovers": 20},
            )
        )

    def test_an_incident_in_one_restaurant_never_alerts_for_another(self, two_restaurants, conn, topic):
        overbook(conn, date=slot_date())
        traffic(conn, requests=40, conflicts=10)
        insert_booking(conn, restaurant_id=OTHER_ID, date=slot_date(), party_size=20)  # full, not over
        traffic(conn, requests=40, conflicts=1, restaurant_id=OTHER_ID)
        check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        messages = topic.messages()
        assert len(messages) == 2
        assert {m["attributes"]["restaurantId"] for m in messages} == {RESTAURANT_ID}
        assert all("Osteria" not in m["message"] for m in messages)
        assert {r["restaurant_id"] for r in alert_rows(conn)} == {RESTAURANT_ID}

        # The same slot overbooked in the other restaurant is its own incident.
        overbook(conn, restaurant_id=OTHER_ID, date=slot_date(), time="20:00")
        summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
        assert [
            (t.action.value, str(t.key.restaurant_id)) for t in summary.transitions if t.action.value != "update"
        ] == [("open", OTHER_ID)]
        [message] = topic.messages()
        assert message["attributes"]["restaurantId"] == OTHER_ID
        assert "Osteria Due" in message["subject"]

    def test_dry_run_changes_nothing_and_sends_nothing(self, seeded_db, conn, topic):
        overbook(conn, date=slot_date())
        config = settings(ALERT_TOPIC_ARN=topic.topic_arn)
        summary = check(conn, config, dry_run=True)
        assert summary.dry_run and summary.opened == 1
        assert [(d.channel, d.notice, d.status) for d in summary.deliveries] == [("sns", "opened", "would-send")]
        assert alert_rows(conn) == [] and delivery_rows(conn) == [] and detected_events(conn) == []
        assert topic.messages() == []
        # Unsent notices are listed as retries.
        check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn.replace("capacity-alerts", "gone")))
        preview = check(conn, config, dry_run=True)
        assert [(d.notice, d.status) for d in preview.deliveries] == [("opened", "would-retry")]
        assert delivery_rows(conn)[0]["status"] == "failed"

    def test_a_run_overlapping_another_steps_aside(self, seeded_db, conn, db_url, topic):
        overbook(conn, date=slot_date())
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(7347203)")
            summary = check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn))
            assert summary.skipped and summary.transitions == []
            # Released here, not by closing: a closed session's backend may hold it a moment longer.
            other.execute("SELECT pg_advisory_unlock(7347203)")
        assert alert_rows(conn) == [] and topic.messages() == []
        assert check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn)).opened == 1

    def test_a_restaurant_with_an_unknown_time_zone_is_still_checked(self, seeded_db, conn, topic):
        conn.execute("UPDATE restaurants SET timezone = 'Mars/Olympus'")
        overbook(conn, date=slot_date())
        assert check(conn, settings(ALERT_TOPIC_ARN=topic.topic_arn)).opened == 1

    def test_a_connection_lost_mid_run_surfaces_its_own_error(self, seeded_db, conn, db_url, monkeypatch):
        overbook(conn, date=slot_date())
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as doomed:
            pid = doomed.info.backend_pid
            real_run = AlertChecker._run

            def lose_connection(self: AlertChecker, *args: Any) -> None:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                real_run(self, *args)

            monkeypatch.setattr(AlertChecker, "_run", lose_connection)
            # The termination itself (57P01), not a later error from the clean-up.
            with pytest.raises(psycopg.errors.AdminShutdown):
                AlertChecker(settings(), []).run(doomed)
        monkeypatch.undo()
        # The lock went with the session: the next run is not blocked.
        assert check(conn, settings()).opened == 1

    def test_no_channels_still_tracks_incidents(self, seeded_db, conn):
        overbook(conn, date=slot_date())
        summary = check(conn, settings())
        assert summary.channels == [] and summary.opened == 1 and summary.deliveries == []
        assert [r["status"] for r in alert_rows(conn)] == ["open"]

    def test_no_restaurants(self, db_url, conn):
        summary = check(conn, settings())
        assert summary.as_json()["restaurants"] == 0 and summary.transitions == []


# -- the channels' local stand-ins (capctl.sns_inbox, capctl.webhook_sink) ----------------------


class TestStandIns:
    def test_the_inbox_reads_back_from_a_moto_server_as_the_demo_runs_it(self, tmp_path, monkeypatch):
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        port = demo.free_port()
        server = demo.Process(
            "moto_server",
            [demo.moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)],
            dict(os.environ),
            tmp_path / "moto.log",
        )
        try:
            endpoint = f"http://127.0.0.1:{port}"
            demo.wait_http(f"{endpoint}/moto-api/", 30, ok=(200, 404))
            inbox = SnsInbox(endpoint, region="us-east-1", topic_name="capacity-alerts-demo")
            SnsNotifier(inbox.topic_arn, client=inbox.sns).send(notice())
            [message] = inbox.messages()
            assert message["subject"] == "[CRITICAL] Overbooked slot 2030-06-14 19:00 - Test Trattoria (prod)"
            assert "Confirmed covers: 24, accepted under a capacity of 20 (4 over)" in message["message"]
            assert message["attributes"] == {
                "severity": "critical",
                "restaurantId": RESTAURANT_ID,
                "alertType": "overbooking",
            }
            assert inbox.messages() == []  # each notice is read once
        finally:
            server.stop()

    def test_the_webhook_sink_answers_its_status_and_keeps_only_what_it_accepted(self, webhook):
        webhook.status = 500
        with pytest.raises(DeliveryError, match="HTTP 500"):
            WebhookNotifier(webhook.url).send(notice())
        assert webhook.messages() == []
        webhook.status = 204
        WebhookNotifier(webhook.url).send(notice(environment="test"))
        [body] = webhook.messages()
        assert body["text"].startswith("[CRITICAL] Overbooked slot 2030-06-14 19:00 - Test Trattoria (test)\n")
