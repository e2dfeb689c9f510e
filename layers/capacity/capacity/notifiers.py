"""Alert notices and the channels that deliver them (SNS, a Slack-compatible webhook).

A ``Notice`` is plain data, stored with its delivery row so that a retry sends the same words.
Every channel implements ``Notifier.send``: it returns when the channel accepted the notice and
raises ``DeliveryError`` otherwise. Notices carry restaurant, slot and figures only, never a
guest's personal data.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

from capacity.changes import change_line
from capacity.db import SECRET_MAX_AGE_S
from capacity.figures import percent_text
from capacity.incidents import AlertKind, NoticeType
from capacity.rules import clock
from capacity.scheduled_settings import AlertSettings

SUBJECT_MAX = 100  # SNS Subject limit (ASCII, no line breaks)
SLACK_HEADER_MAX = 150
WEBHOOK_TIMEOUT_S = 5.0


class Channel(StrEnum):
    SNS = "sns"
    WEBHOOK = "webhook"


class DeliveryError(Exception):
    """The channel did not accept the notice. The message is short and holds no secret."""


@dataclass(frozen=True, slots=True)
class Notice:
    alert_type: str  # AlertKind
    notice: str  # NoticeType
    severity: str  # critical | warning
    restaurant_id: str
    restaurant_name: str
    incident_key: str  # its label: the slot for overbooking, 'change N' for a grouped one, '' for the rates
    figures: dict[str, Any]
    opened_at: str  # ISO 8601 UTC
    at: str  # when this notice was raised
    environment: str
    runbook_url: str
    dashboard_url: str | None = None
    resolved_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Notice:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Notifier(Protocol):
    @property
    def channel(self) -> Channel: ...

    def send(self, notice: Notice) -> None: ...


# -- wording ---------------------------------------------------------------------------------


def title(notice: Notice, *, brief: bool = False) -> str:
    """What the notice is about, in a few words; ``brief`` leaves out what a subject line can
    spare (the rule a grouped notice names, which its body gives)."""
    f = notice.figures
    if notice.alert_type == AlertKind.OVERBOOKING:
        return f"Overbooked slot {notice.incident_key}"
    if grouped(notice):
        scope = "" if brief else f" ({rule_span(f.get('change')) or 'no recorded change'})"
        if notice.notice == NoticeType.RESOLVED:
            return f"Capacity lowered below bookings{scope}"
        return f"Capacity lowered below bookings in {_plural(int(f.get('slotCount', 0)), 'slot')}{scope}"
    if notice.alert_type == AlertKind.CAPACITY_BELOW_BOOKINGS:
        return f"Capacity lowered below bookings {notice.incident_key}"
    if notice.alert_type == AlertKind.CONFLICT_RATE:
        return f"Booking conflict rate {percent_text(f.get('conflictRate', 0))}"
    return f"Booking retries exhausted: {f.get('retryExhausted', 0)} in the last hour"


def _label(notice: Notice) -> str:
    if notice.notice == NoticeType.RESOLVED:
        return "RESOLVED"
    if notice.notice == NoticeType.REMINDER:
        return f"{notice.severity.upper()}, still open"
    return notice.severity.upper()


def _ascii(text: str) -> str:
    """SNS subjects must be printable ASCII: fold accents, drop the rest, one line."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join("".join(ch if ch.isprintable() else " " for ch in folded).split())


def subject(notice: Notice) -> str:
    """One ASCII line of at most 100 characters; the restaurant's name is kept before the rule a
    grouped notice names."""
    for words in (title(notice), title(notice, brief=True)):
        text = _ascii(f"[{_label(notice)}] {words} - {notice.restaurant_name} ({notice.environment})")
        if len(text) <= SUBJECT_MAX:
            return text
    return text[: SUBJECT_MAX - 3].rstrip() + "..."


def dashboard_link(notice: Notice) -> str | None:
    # A configured URL may carry {restaurantId} to open the tenant's own view.
    if not notice.dashboard_url:
        return None
    return notice.dashboard_url.replace("{restaurantId}", notice.restaurant_id)


def _covers(value: Any) -> str:
    return "unlimited" if value is None else str(value)


def _slot_lines(notice: Notice) -> list[str]:
    f = notice.figures
    zone = f" {f['timezone']}" if f.get("timezone") else ""
    covers, accepted, now = f.get("confirmedCovers", 0), f.get("acceptedMaxCovers"), f.get("maxCovers")
    lines = [f"Slot: {notice.incident_key}{zone} (the restaurant's local time)"]
    resolved = notice.notice == NoticeType.RESOLVED
    if notice.alert_type == AlertKind.OVERBOOKING and not resolved:
        over = f" ({covers - accepted} over)" if isinstance(accepted, int) else ""
        lines += [
            f"Confirmed covers: {covers}, "
            + (
                f"accepted under a capacity of {_covers(accepted)}{over}, "
                if f.get("acceptedByGuard", True)
                else f"over the capacity of {_covers(accepted)}{over} (no booking of it passed the guard), "
            )
            + f"in {f.get('bookings', 0)} bookings",
            f"Capacity in force now: {_covers(now)}",
            "The guard never lets a slot pass the capacity it checks: a booking got in around it "
            "(plain SQL, a bug). Stop new bookings, then move guests.",
        ]
    elif notice.alert_type == AlertKind.CAPACITY_BELOW_BOOKINGS and not resolved:
        lines += [
            f"Capacity now: {_covers(now)}, below {covers} covers confirmed in {f.get('bookings', 0)} bookings "
            f"(accepted under {_covers(accepted)})",
            "Nothing is broken: the capacity was lowered after these bookings were accepted. Guests to move: "
            f"{covers - now if isinstance(now, int) else 0} covers.",
        ]
        if f.get("change"):
            lines.append(f"Changed: {change_line(f['change'])}")
    else:
        state = (
            "the slot is within its capacity"
            if now is None or covers <= now
            else "still above the capacity in force, which a capacity-below-bookings warning follows"
        )
        lines.append(f"Confirmed covers now: {covers} (capacity {_covers(now)}): {state}")
    ids = f.get("bookingIds") or []
    if ids and not resolved:
        more = f" (+{f['bookings'] - len(ids)} more)" if f.get("bookings", 0) > len(ids) else ""
        lines.append(f"Bookings: {', '.join(ids)}{more}")
    if f.get("command"):
        lines.append(f"Next: {f['command']}")
    return lines


# -- a capacity change's slots below their bookings (one notice per change) --------------------

_WEEKDAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")


def grouped(notice: Notice) -> bool:
    """One notice for every slot a capacity change put below its bookings (a per-slot one queued
    before migration 008 has no ``slotCount`` and reads as before)."""
    return notice.alert_type == AlertKind.CAPACITY_BELOW_BOOKINGS and "slotCount" in notice.figures


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _span(row: dict[str, Any]) -> str:
    if not row.get("start_time") or not row.get("end_time"):
        return ""
    return f" {clock(row['start_time']).strftime('%H:%M')}-{clock(row['end_time']).strftime('%H:%M')}"


def rule_span(change: dict[str, Any] | None) -> str | None:
    """What a change touched, in a few words: 'Fridays 17:00-22:00', '2030-12-24 (whole day)'."""
    if not change:
        return None
    row = change.get("after") or change.get("before") or {}
    kind = str(change.get("kind", ""))
    if kind.startswith("weekly_rule.") and isinstance(row.get("weekday"), int) and 1 <= row["weekday"] <= 7:
        return _WEEKDAYS[row["weekday"] - 1] + _span(row)
    if kind.startswith("override."):
        return f"{row.get('override_date')}{_span(row) or ' (whole day)'}"
    return "the slot grid"


def _cap(row: dict[str, Any] | None) -> str:
    value = (row or {}).get("max_covers")
    return "no limit" if value is None else _plural(int(value), "cover")


def change_words(change: dict[str, Any]) -> str:
    """A change as a sentence: 'On 2030-06-10 at 09:30 UTC alice lowered the weekly rule for
    Fridays 17:00-22:00 from 40 to 30 covers (reason: kitchen refit).'"""
    kind = str(change.get("kind", ""))
    before, after = change.get("before"), change.get("after")
    noun = f"{'override' if kind.startswith('override.') else 'weekly rule'} for {rule_span(change)}"
    if kind.startswith("restaurant."):
        how = f"changed the slot grid ({change.get('summary')})"
    elif before is None:
        how = (
            f"added an {noun} of {_cap(after)}" if kind.startswith("override.") else f"added a {noun} of {_cap(after)}"
        )
    elif after is None:
        how = f"removed the {noun}, which allowed {_cap(before)}"
    elif after.get("max_covers") == 0:
        how = f"closed the {noun} (0 covers, was {_cap(before)})"
    else:
        lower = before.get("max_covers") is None or (after.get("max_covers") or 0) < before["max_covers"]
        start = "no limit" if before.get("max_covers") is None else before["max_covers"]
        how = f"{'lowered' if lower else 'changed'} the {noun} from {start} to {_cap(after)}"
    reason = f" (reason: {change['reason']})" if change.get("reason") else ""
    return f"On {_when(change.get('changedAt'))} {change.get('actor')} {how}{reason}."


def _when(value: Any) -> str:
    try:
        return dt.datetime.fromisoformat(str(value)).astimezone(dt.UTC).strftime("%Y-%m-%d at %H:%M UTC")
    except ValueError:
        return str(value)


def _slot_line(slot: dict[str, Any]) -> str:
    return (
        f"  {slot.get('date')} {slot.get('time')}: {slot.get('confirmedCovers')} covers in "
        f"{_plural(int(slot.get('bookings', 0)), 'booking')}, capacity now {_covers(slot.get('maxCovers'))} "
        f"({slot.get('coversOver')} over): {slot.get('command')}"
    )


def _group_lines(notice: Notice) -> list[str]:
    f = notice.figures
    count = int(f.get("slotCount", 0))
    cause = (
        change_words(f["change"])
        if f.get("change")
        else "No recorded change explains it (the rule changed before the capacity history existed)."
    )
    if notice.notice == NoticeType.RESOLVED:
        opened = int(f.get("openedWithSlots", 0))
        return [
            f"What happened: {cause}",
            f"Now: every slot of it is back within its capacity ({_plural(opened, 'slot')} when it opened): "
            "guests moved or cancelled, the capacity restored, or the slot's time has passed. Nothing to do.",
        ]
    zone = f"{f['timezone']}, " if f.get("timezone") else ""
    slots = list(f.get("slots") or [])
    over, bookings = _plural(int(f.get("coversOver", 0)), "cover"), _plural(int(f.get("bookings", 0)), "booking")
    holds = (
        f"{'holds' if count == 1 else 'hold'} more confirmed covers than {'its' if count == 1 else 'their'} capacity"
    )
    lines = [
        f"What happened: {cause} {_plural(count, 'booked slot')} now {holds}.",
        f"How bad: {_plural(count, 'slot')} from {f.get('firstDate')} to {f.get('lastDate')}, {over} over "
        f"capacity, in {bookings}. Nothing is broken: each booking was accepted under the capacity of its "
        "time, and the lowered capacity already refuses new bookings of these slots.",
        f"Most covers to move (dates and times in {zone}the restaurant's local time):",
        *(_slot_line(slot) for slot in slots),
    ]
    if count > len(slots):
        lines.append(f"  and {count - len(slots)} more: {f.get('command')} lists them all")
    lines += [
        "What to do: if the change was a mistake, restore the capacity (capctl seed with the corrected file, "
        f"--actor your name); if it stands, move the guests above it, soonest slot first ({f.get('firstDate')}).",
        f"Next: {f.get('command')}",
    ]
    if f.get("replacesIncidents"):
        n = int(f["replacesIncidents"])
        lines.append(f"This replaces {_plural(n, 'earlier per-slot warning')} of these slots, closed without a notice.")
    return lines


def figure_lines(notice: Notice) -> list[str]:
    f = notice.figures
    if grouped(notice):
        return _group_lines(notice)
    if notice.alert_type in (AlertKind.OVERBOOKING, AlertKind.CAPACITY_BELOW_BOOKINGS):
        return _slot_lines(notice)
    window = f"Window: {f.get('windowStart')} to {f.get('windowEnd')}"
    traffic = "live and load-test traffic" if f.get("includesLoadTest") else "live traffic only"
    if notice.alert_type == AlertKind.CONFLICT_RATE:
        return [
            f"Conflict rate: {percent_text(f.get('conflictRate', 0))} "
            f"({f.get('conflicts', 0)} of {f.get('requests', 0)} requests met a conflict)",
            f"Threshold: more than {percent_text(f.get('threshold', 0))} with at least {f.get('minRequests')} requests",
            f"{window} ({traffic})",
            "Next: capctl check-alerts --dry-run (the figures now), and the dashboard's conflict-rate panel",
        ]
    return [
        f"Requests that exhausted their retries: {f.get('retryExhausted', 0)} of {f.get('requests', 0)}",
        f"Threshold: more than {f.get('threshold')} in the last hour",
        f"{window} ({traffic})",
        "Next: check the database (connections, locks, failover) and the BookingRetryExhausted metric",
    ]


def body(notice: Notice) -> str:
    if notice.notice == NoticeType.RESOLVED:
        headline = f"RESOLVED: {title(notice)} has cleared."
    elif notice.notice == NoticeType.REMINDER:
        headline = f"{notice.severity.upper()} (still open since {notice.opened_at}): {title(notice)}"
    else:
        headline = f"{notice.severity.upper()}: {title(notice)}"
    lines = [
        headline,
        "",
        f"Restaurant: {notice.restaurant_name} ({notice.restaurant_id})",
        *figure_lines(notice),
        f"Opened: {notice.opened_at}",
    ]
    if notice.resolved_at:
        lines.append(f"Resolved: {notice.resolved_at}")
    lines += [f"Environment: {notice.environment}", f"Alert: {notice.alert_type}, severity {notice.severity}", ""]
    link = dashboard_link(notice)
    if link:
        lines.append(f"Dashboard: {link}")
    lines.append(f"Runbook: {notice.runbook_url}")
    return "\n".join(lines)


def _mrkdwn(text: str) -> str:
    """Slack's control characters escaped: a reason or a name like ``<!channel>`` stays text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_payload(notice: Notice) -> dict[str, Any]:
    """Slack-compatible: ``text`` for any receiver, ``blocks`` for Slack."""
    head = subject(notice)
    text = body(notice)
    return {
        "text": f"{head}\n{text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": head[:SLACK_HEADER_MAX]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(text)[:3000]}},
        ],
    }


# -- channels --------------------------------------------------------------------------------


def _arn_region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) >= 6 and parts[0] == "arn" and parts[3] else None


class SnsNotifier:
    """Publishes to the alert topic. The client is created on first use (boto3 off cold start)."""

    def __init__(self, topic_arn: str, client: Any | None = None) -> None:
        self.topic_arn = topic_arn
        self._client = client

    @property
    def channel(self) -> Channel:
        return Channel.SNS

    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Short timeouts and few retries: an unsent notice is retried by the next run anyway.
            config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
            self._client = boto3.client("sns", region_name=_arn_region(self.topic_arn), config=config)
        return self._client

    def send(self, notice: Notice) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().publish(
                TopicArn=self.topic_arn,
                Subject=subject(notice),
                Message=body(notice),
                MessageAttributes={
                    "severity": {"DataType": "String", "StringValue": notice.severity},
                    "restaurantId": {"DataType": "String", "StringValue": notice.restaurant_id},
                    "alertType": {"DataType": "String", "StringValue": notice.alert_type},
                },
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise DeliveryError(f"SNS publish failed: {code}") from None
        except BotoCoreError as exc:
            raise DeliveryError(f"SNS publish failed: {type(exc).__name__}") from None


class WebhookNotifier:
    """POSTs JSON to a Slack-compatible webhook; 2xx is delivered, anything else is a failure."""

    def __init__(self, url: Callable[[], str] | str, timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
        self._url = url
        self.timeout_s = timeout_s

    @property
    def channel(self) -> Channel:
        return Channel.WEBHOOK

    def url(self) -> str:
        return self._url if isinstance(self._url, str) else self._url()

    def send(self, notice: Notice) -> None:
        # The URL is a secret (it carries the token): no error message quotes it.
        try:
            url = self.url()
        except Exception as exc:
            raise DeliveryError(f"webhook URL unavailable: {type(exc).__name__}") from None
        if not url.startswith(("https://", "http://")):
            raise DeliveryError("webhook URL is not http(s)")
        data = json.dumps(webhook_payload(notice)).encode()
        request = urllib.request.Request(  # noqa: S310  # scheme checked above
            url, data=data, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook answered HTTP {exc.code}") from None
        except TimeoutError:
            raise DeliveryError("webhook timed out") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            kind = "timed out" if isinstance(reason, TimeoutError) else f"unreachable ({type(reason).__name__})"
            raise DeliveryError(f"webhook {kind}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook answered HTTP {status}")


def _secret_webhook_url(secret_arn: str) -> Callable[[], str]:
    def resolve() -> str:
        from aws_lambda_powertools.utilities import parameters

        value = parameters.get_secret(secret_arn, max_age=SECRET_MAX_AGE_S)
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.strip().startswith("{"):
            # A JSON secret holds the URL under "url".
            return str(json.loads(text)["url"])
        return text.strip()

    return resolve


def notifiers_from_settings(settings: AlertSettings) -> list[Notifier]:
    """The configured channels: SNS when ALERT_TOPIC_ARN is set, the webhook when its URL (or
    ALERT_WEBHOOK_SECRET_ARN) is."""
    found: list[Notifier] = []
    if settings.alert_topic_arn:
        found.append(SnsNotifier(settings.alert_topic_arn))
    if settings.alert_webhook_url:
        found.append(WebhookNotifier(settings.alert_webhook_url))
    elif settings.alert_webhook_secret_arn:
        found.append(WebhookNotifier(_secret_webhook_url(settings.alert_webhook_secret_arn)))
    return found
