"""Notice wording and the two channels, without a network: SNS through botocore's Stubber, the
webhook through a stand-in for urlopen."""

from __future__ import annotations

import json
import urllib.error
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from capacity import notifiers
from capacity.notifiers import (
    DeliveryError,
    Notice,
    SnsNotifier,
    WebhookNotifier,
    body,
    notifiers_from_settings,
    subject,
    title,
    webhook_payload,
)
from capacity.scheduled_settings import AlertSettings
from tests.alerting import notice
from tests.support import RESTAURANT_ID as RID

TOPIC = "arn:aws:sns:eu-west-1:123456789012:capacity-alerts"


class TestWording:
    def test_subject_names_severity_slot_restaurant_and_environment(self):
        assert subject(notice()) == "[CRITICAL] Overbooked slot 2030-06-14 19:00 - Test Trattoria (prod)"
        assert subject(notice(notice="reminder")).startswith("[CRITICAL, still open] Overbooked slot")
        assert subject(notice(notice="resolved")).startswith("[RESOLVED] Overbooked slot")

    def test_subject_is_ascii_one_line_and_at_most_100_characters(self):
        name = "Café Ümlaut\nEstablishment " * 10
        text = subject(notice(restaurant_name=name))
        assert len(text) == 100 and text.endswith("...")
        assert text.isascii() and "\n" not in text
        assert "Cafe Umlaut Establishment" in text

    def test_body_is_readable(self):
        text = body(notice(dashboard_url="https://console.example/dash?r={restaurantId}"))
        assert text.splitlines() == [
            "CRITICAL: Overbooked slot 2030-06-14 19:00",
            "",
            f"Restaurant: Test Trattoria ({RID})",
            "Slot: 2030-06-14 19:00 Europe/London (the restaurant's local time)",
            "Confirmed covers: 24, accepted under a capacity of 20 (4 over), in 6 bookings",
            "Capacity in force now: 20",
            "The guard never lets a slot pass the capacity it checks: a booking got in around it (plain SQL, a bug). "
            "Stop new bookings, then move guests.",
            "Bookings: b1, b2, b3 (+3 more)",
            f"Next: capctl slot show {RID} 2030-06-14 19:00",
            "Opened: 2030-06-14T18:05:00Z",
            "Environment: prod",
            "Alert: overbooking, severity critical",
            "",
            f"Dashboard: https://console.example/dash?r={RID}",
            "Runbook: https://runbooks.example/capacity#overbooking",
        ]

    def test_resolve_and_reminder_bodies(self):
        resolved = body(
            notice(
                notice="resolved",
                resolved_at="2030-06-14T19:00:00Z",
                figures={"maxCovers": 20, "confirmedCovers": 20, "bookings": 5, "bookingIds": ["b1"], "command": "cmd"},
            )
        )
        assert resolved.startswith("RESOLVED: Overbooked slot 2030-06-14 19:00 has cleared.")
        assert "Resolved: 2030-06-14T19:00:00Z" in resolved and "Dashboard" not in resolved
        # plain words, the figures now, no raw JSON
        assert "Confirmed covers now: 20 (capacity 20): the slot is within its capacity" in resolved
        assert "{" not in resolved and "Bookings:" not in resolved
        reminder = body(notice(notice="reminder"))
        assert reminder.startswith("CRITICAL (still open since 2030-06-14T18:05:00Z): Overbooked slot")

    def test_a_lowered_capacity_names_the_change_and_the_guests_to_move(self):
        change = {
            "changedAt": "2030-06-10T09:30:00Z",
            "actor": "alice",
            "summary": "override 2030-06-14 18:00-20:00: max covers 40 → 10",
            "reason": "kitchen refit",
        }
        text = body(
            notice(
                alert_type="capacity_below_bookings",
                severity="warning",
                figures={
                    "timezone": "Europe/London",
                    "maxCovers": 10,
                    "acceptedMaxCovers": 40,
                    "confirmedCovers": 16,
                    "bookings": 4,
                    "bookingIds": ["b1", "b2", "b3", "b4"],
                    "command": "capctl slot show R 2030-06-14 19:00",
                    "change": change,
                },
            )
        )
        lines = text.splitlines()
        assert lines[0] == "WARNING: Capacity lowered below bookings 2030-06-14 19:00"
        assert "Capacity now: 10, below 16 covers confirmed in 4 bookings (accepted under 40)" in lines
        assert (
            "Nothing is broken: the capacity was lowered after these bookings were accepted. Guests to move: 6 covers."
            in lines
        )
        assert (
            "Changed: 2030-06-10 09:30 UTC by alice: override 2030-06-14 18:00-20:00: max covers 40 → 10 "
            "(reason: kitchen refit)" in lines
        )
        assert "Bookings: b1, b2, b3, b4" in lines and "Next: capctl slot show R 2030-06-14 19:00" in lines

    def test_rate_alert_bodies(self):
        window = {"windowStart": "2030-06-14T17:05:00Z", "windowEnd": "2030-06-14T18:05:00Z"}
        conflict = body(
            notice(
                alert_type="conflict_rate",
                severity="warning",
                incident_key="",
                figures={
                    "requests": 40,
                    "conflicts": 4,
                    "conflictRate": 0.1,
                    "threshold": 0.05,
                    "minRequests": 20,
                    "includesLoadTest": False,
                    **window,
                },
            )
        )
        assert "Conflict rate: 10.0% (4 of 40 requests met a conflict)" in conflict
        assert "Threshold: more than 5.0% with at least 20 requests" in conflict
        assert "Window: 2030-06-14T17:05:00Z to 2030-06-14T18:05:00Z (live traffic only)" in conflict
        assert "Slot:" not in conflict
        retries = notice(
            alert_type="retry_exhaustion",
            severity="warning",
            incident_key="",
            figures={"requests": 90, "retryExhausted": 7, "threshold": 5, "includesLoadTest": True, **window},
        )
        assert subject(retries) == "[WARNING] Booking retries exhausted: 7 in the last hour - Test Trattoria (prod)"
        assert "Requests that exhausted their retries: 7 of 90" in body(retries)
        assert "(live and load-test traffic)" in body(retries)

    def test_a_rate_under_one_percent_keeps_two_decimals(self):
        figures = {"requests": 2661, "conflicts": 4, "conflictRate": 4 / 2661, "threshold": 0.0005, "minRequests": 20}
        low = notice(alert_type="conflict_rate", severity="warning", incident_key="", figures=figures)
        assert subject(low) == "[WARNING] Booking conflict rate 0.15% - Test Trattoria (prod)"
        assert "Threshold: more than 0.05% with at least 20 requests" in body(low)

    def test_webhook_payload_is_slack_compatible(self):
        payload = webhook_payload(notice(restaurant_name="X" * 300))
        assert payload["text"].startswith("[CRITICAL] Overbooked slot")
        header, section = payload["blocks"]
        assert header["type"] == "header" and header["text"]["type"] == "plain_text"
        assert len(header["text"]["text"]) <= 150
        assert section["text"]["type"] == "mrkdwn" and "Confirmed covers: 24" in section["text"]["text"]

    def test_notice_round_trips_through_its_stored_json(self):
        n = notice()
        stored = json.loads(json.dumps(n.as_json()))
        assert Notice.from_json({**stored, "unknown": 1}) == n


class TestSns:
    def client(self) -> Any:
        return boto3.client("sns", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")

    def test_publish_carries_subject_body_and_attributes(self):
        client = self.client()
        n = notice()
        with Stubber(client) as stub:
            stub.add_response(
                "publish",
                {"MessageId": "m-1"},
                {
                    "TopicArn": TOPIC,
                    "Subject": subject(n),
                    "Message": body(n),
                    "MessageAttributes": {
                        "severity": {"DataType": "String", "StringValue": "critical"},
                        "restaurantId": {"DataType": "String", "StringValue": RID},
                        "alertType": {"DataType": "String", "StringValue": "overbooking"},
                    },
                },
            )
            SnsNotifier(TOPIC, client).send(n)
            stub.assert_no_pending_responses()

    def test_a_refused_publish_is_a_delivery_error(self):
        client = self.client()
        with Stubber(client) as stub:
            stub.add_client_error("publish", service_error_code="AuthorizationError", http_status_code=403)
            with pytest.raises(DeliveryError, match=r"^SNS publish failed: AuthorizationError$"):
                SnsNotifier(TOPIC, client).send(notice())

    def test_an_unreachable_endpoint_is_a_delivery_error(self):
        class Unreachable:
            def publish(self, **kwargs: Any) -> None:
                raise EndpointConnectionError(endpoint_url="https://sns.invalid")

        with pytest.raises(DeliveryError, match=r"^SNS publish failed: EndpointConnectionError$"):
            SnsNotifier(TOPIC, Unreachable()).send(notice())

    def test_region_comes_from_the_topic(self):
        assert notifiers._arn_region(TOPIC) == "eu-west-1"
        assert notifiers._arn_region("not-an-arn") is None


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


class Receiver:
    """Stands in for urlopen: records each request, answers ``status`` or raises ``error``."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, float]] = []
        self.status = 200
        self.error: BaseException | None = None

    def urlopen(self, request: Any, timeout: float) -> FakeResponse:
        self.requests.append((request, timeout))
        if self.error is not None:
            raise self.error
        return FakeResponse(self.status)


class TestWebhook:
    @pytest.fixture
    def sent(self, monkeypatch: pytest.MonkeyPatch) -> Receiver:
        receiver = Receiver()
        monkeypatch.setattr(notifiers.urllib.request, "urlopen", receiver.urlopen)
        return receiver

    def test_2xx_is_delivered_with_a_json_post(self, sent):
        WebhookNotifier("https://hooks.example/T/B/secret").send(notice())
        [(request, timeout)] = sent.requests
        assert (request.get_method(), request.full_url, timeout) == ("POST", "https://hooks.example/T/B/secret", 5.0)
        assert request.get_header("Content-type") == "application/json; charset=utf-8"
        assert json.loads(request.data)["text"].startswith("[CRITICAL] Overbooked slot")

    @pytest.mark.parametrize(
        ("error", "message"),
        [
            (urllib.error.HTTPError("u", 500, "boom", {}, None), "webhook answered HTTP 500"),  # type: ignore[arg-type]
            (TimeoutError(), "webhook timed out"),
            (urllib.error.URLError(TimeoutError()), "webhook timed out"),
            (urllib.error.URLError(ConnectionRefusedError()), "webhook unreachable (ConnectionRefusedError)"),
        ],
    )
    def test_failures_never_quote_the_url(self, sent, error, message):
        sent.error = error
        with pytest.raises(DeliveryError) as info:
            WebhookNotifier("https://hooks.example/T/B/secret").send(notice())
        assert str(info.value) == message and "secret" not in str(info.value)

    def test_a_non_2xx_answer_is_a_failure(self, sent):
        sent.status = 304
        with pytest.raises(DeliveryError, match="HTTP 304"):
            WebhookNotifier("https://hooks.example/x").send(notice())

    def test_the_url_must_be_http(self, sent):
        with pytest.raises(DeliveryError, match="not http"):
            WebhookNotifier(lambda: "file:///etc/passwd").send(notice())
        assert sent.requests == []  # nothing was opened

    def test_a_url_that_cannot_be_resolved_is_a_failure(self):
        def missing() -> str:
            raise KeyError("url")

        with pytest.raises(DeliveryError, match="webhook URL unavailable: KeyError"):
            WebhookNotifier(missing).send(notice())


class TestChannelsFromSettings:
    def test_none_configured(self):
        assert notifiers_from_settings(AlertSettings.from_env({})) == []

    def test_both(self):
        found = notifiers_from_settings(
            AlertSettings.from_env({"ALERT_TOPIC_ARN": TOPIC, "ALERT_WEBHOOK_URL": "https://hooks.example/x"})
        )
        assert [n.channel.value for n in found] == ["sns", "webhook"]
        assert found[0].topic_arn == TOPIC and found[1].url() == "https://hooks.example/x"

    def test_webhook_url_given_wins_over_its_secret(self):
        [found] = notifiers_from_settings(
            AlertSettings.from_env(
                {"ALERT_WEBHOOK_URL": "https://hooks.example/x", "ALERT_WEBHOOK_SECRET_ARN": "arn:secret"}
            )
        )
        assert found.url() == "https://hooks.example/x"


class TestReviewFindings:
    def test_slack_control_sequences_in_a_reason_stay_text(self):
        change = {
            "changedAt": "2030-06-10T09:30:00Z",
            "actor": "<!channel>",
            "summary": "s",
            "reason": "<https://evil|x>",
        }
        payload = webhook_payload(
            notice(alert_type="capacity_below_bookings", severity="warning", figures={"maxCovers": 1, "change": change})
        )
        section = payload["blocks"][1]["text"]["text"]
        assert "<!channel>" not in section and "&lt;!channel&gt;" in section and "&lt;https://evil|x&gt;" in section

    def test_a_resolve_that_leaves_the_slot_above_its_capacity_says_so(self):
        resolved = body(notice(notice="resolved", figures={"maxCovers": 0, "confirmedCovers": 18, "bookings": 4}))
        assert "Confirmed covers now: 18 (capacity 0): still above the capacity in force" in resolved
        assert "within its capacity" not in resolved


# -- one notice per capacity change ------------------------------------------------------------

WEEKLY = {"weekday": 5, "start_time": "17:00:00", "end_time": "22:00:00"}


def change(kind: str, before: dict[str, Any] | None, after: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
    return {
        "changedAt": "2030-06-10T09:30:12.5Z",
        "actor": "alice",
        "kind": kind,
        "before": before,
        "after": after,
        "reason": "kitchen refit",
        "summary": "s",
        **more,
    }


def group_notice(**figures: Any) -> Notice:
    values: dict[str, Any] = {
        "change": change("weekly_rule.update", {**WEEKLY, "max_covers": 40}, {**WEEKLY, "max_covers": 30}),
        "timezone": "Europe/London",
        "slotCount": 1,
        "openedWithSlots": 1,
        "coversOver": 6,
        "confirmedCovers": 36,
        "bookings": 9,
        "firstDate": "2030-06-14",
        "lastDate": "2030-06-14",
        "slots": [
            {
                "date": "2030-06-14",
                "time": "19:00",
                "maxCovers": 30,
                "confirmedCovers": 36,
                "coversOver": 6,
                "bookings": 9,
                "command": "capctl slot show R 2030-06-14 19:00",
            }
        ],
        "command": "capctl verify",
        **figures,
    }
    return notice(alert_type="capacity_below_bookings", severity="warning", incident_key="change 4", figures=values)


class TestOneNoticePerChange:
    def test_one_slot_reads_in_the_singular_and_names_its_command(self):
        n = group_notice()
        assert (
            subject(n)
            == "[WARNING] Capacity lowered below bookings in 1 slot (Fridays 17:00-22:00) - Test Trattoria (prod)"
        )
        lines = body(n).splitlines()
        assert lines[3] == (
            "What happened: On 2030-06-10 at 09:30 UTC alice lowered the weekly rule for Fridays 17:00-22:00 from 40 "
            "to 30 covers (reason: kitchen refit). 1 booked slot now holds more confirmed covers than its capacity."
        )
        assert lines[4].startswith(
            "How bad: 1 slot from 2030-06-14 to 2030-06-14, 6 covers over capacity, in 9 bookings."
        )
        assert (
            "  2030-06-14 19:00: 36 covers in 9 bookings, capacity now 30 (6 over): capctl slot show R 2030-06-14 19:00"
            in lines
        )
        assert not any(line.startswith("  and ") for line in lines) and "This replaces" not in body(n)
        assert "Next: capctl verify" in lines

    def test_a_reminder_says_still_open_with_the_count_now(self):
        n = group_notice(slotCount=3, slots=[], firstDate="2030-06-07", lastDate="2030-06-21")
        reminder = Notice.from_json({**n.as_json(), "notice": "reminder"})
        # the rule fits beside a short name; beside a longer one it gives way, the name stays whole
        short = Notice.from_json({**reminder.as_json(), "restaurant_name": "Roma"})
        assert (
            subject(short)
            == "[WARNING, still open] Capacity lowered below bookings in 3 slots (Fridays 17:00-22:00) - Roma (prod)"
        )
        assert (
            subject(reminder)
            == "[WARNING, still open] Capacity lowered below bookings in 3 slots - Test Trattoria (prod)"
        )
        assert "  and 3 more: capctl verify lists them all" in body(reminder)

    @pytest.mark.parametrize(
        ("kind", "before", "after", "words", "span"),
        [
            (
                "override.insert",
                None,
                {"override_date": "2030-06-14", "start_time": "19:00:00", "end_time": "19:15:00", "max_covers": 4},
                "added an override for 2030-06-14 19:00-19:15 of 4 covers",
                "2030-06-14 19:00-19:15",
            ),
            (
                "override.insert",
                None,
                {"override_date": "2030-06-25", "max_covers": 1},
                "added an override for 2030-06-25 (whole day) of 1 cover",
                "2030-06-25 (whole day)",
            ),
            (
                "weekly_rule.insert",
                None,
                {**WEEKLY, "weekday": 1, "max_covers": 5},
                "added a weekly rule for Mondays 17:00-22:00 of 5 covers",
                "Mondays 17:00-22:00",
            ),
            (
                "weekly_rule.delete",
                {**WEEKLY, "max_covers": 40},
                None,
                "removed the weekly rule for Fridays 17:00-22:00, which allowed 40 covers",
                "Fridays 17:00-22:00",
            ),
            (
                "weekly_rule.update",
                {**WEEKLY, "max_covers": 40},
                {**WEEKLY, "max_covers": 0},
                "closed the weekly rule for Fridays 17:00-22:00 (0 covers, was 40 covers)",
                "Fridays 17:00-22:00",
            ),
            (
                "weekly_rule.update",
                {**WEEKLY, "max_covers": None},
                {**WEEKLY, "max_covers": 30},
                "lowered the weekly rule for Fridays 17:00-22:00 from no limit to 30 covers",
                "Fridays 17:00-22:00",
            ),
            (
                "weekly_rule.update",
                {**WEEKLY, "max_covers": 10},
                {**WEEKLY, "max_covers": 12},
                "changed the weekly rule for Fridays 17:00-22:00 from 10 to 12 covers",
                "Fridays 17:00-22:00",
            ),
            (
                "restaurant.update",
                {"slot_minutes": 15},
                {"slot_minutes": 30},
                "changed the slot grid (s)",
                "the slot grid",
            ),
        ],
    )
    def test_each_kind_of_change_in_words(self, kind, before, after, words, span):
        n = group_notice(change=change(kind, before, after))
        assert f"What happened: On 2030-06-10 at 09:30 UTC alice {words} (reason: kitchen refit)." in body(n)
        assert title(n).endswith(f"({span})")

    def test_no_recorded_change_and_no_reason_are_said_plainly(self):
        unexplained = body(group_notice(change=None))
        assert (
            "What happened: No recorded change explains it (the rule changed before the capacity history existed)."
            in unexplained
        )
        assert subject(group_notice(change=None)).startswith(
            "[WARNING] Capacity lowered below bookings in 1 slot (no recorded change)"
        )
        odd = change(
            "weekly_rule.update",
            {**WEEKLY, "max_covers": 40},
            {**WEEKLY, "max_covers": 30},
            reason="",
            changedAt="yesterday",
        )
        assert (
            "On yesterday alice lowered the weekly rule for Fridays 17:00-22:00 from 40 to 30 covers. 1 booked"
            in body(group_notice(change=odd))
        )

    def test_the_resolve_notice_says_every_slot_is_back_and_nothing_to_do(self):
        n = group_notice(slotCount=0, slots=[], openedWithSlots=12)
        resolved = Notice.from_json({**n.as_json(), "notice": "resolved", "resolved_at": "2030-06-20T10:00:00Z"})
        assert (
            subject(resolved)
            == "[RESOLVED] Capacity lowered below bookings (Fridays 17:00-22:00) - Test Trattoria (prod)"
        )
        lines = body(resolved).splitlines()
        assert lines[0] == "RESOLVED: Capacity lowered below bookings (Fridays 17:00-22:00) has cleared."
        assert lines[4] == (
            "Now: every slot of it is back within its capacity (12 slots when it opened): guests moved or cancelled, "
            "the capacity restored, or the slot's time has passed. Nothing to do."
        )
        assert "Most covers to move" not in body(resolved) and "Resolved: 2030-06-20T10:00:00Z" in lines

    def test_a_group_that_replaces_per_slot_warnings_says_so(self):
        text = body(group_notice(replacesIncidents=1))
        assert "This replaces 1 earlier per-slot warning of these slots, closed without a notice." in text
