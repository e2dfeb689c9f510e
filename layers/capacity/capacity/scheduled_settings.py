"""Settings of the scheduled functions (check_alerts, rollup_metrics), apart from the booking
function's: a pydantic model costs its schema at import, and the booking function's cold start
should build only the settings it reads (``capacity.settings``).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from capacity.settings import DatabaseSettings

_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")

DEFAULT_RUNBOOK_URL = "https://github.com/capacity-engine/capacity-engine/blob/main/docs/capacity/runbook.md"


class AlertSettings(DatabaseSettings):
    alert_topic_arn: str | None = Field(default=None, alias="ALERT_TOPIC_ARN")
    alert_webhook_url: str | None = Field(default=None, alias="ALERT_WEBHOOK_URL")
    alert_webhook_secret_arn: str | None = Field(default=None, alias="ALERT_WEBHOOK_SECRET_ARN")
    conflict_rate_threshold: float = Field(default=0.05, gt=0, le=1, alias="CONFLICT_RATE_THRESHOLD")
    conflict_min_requests: int = Field(default=20, ge=1, alias="CONFLICT_MIN_REQUESTS")
    retry_exhausted_threshold: int = Field(default=5, ge=1, alias="RETRY_EXHAUSTED_THRESHOLD")
    alert_cooldown_minutes: int = Field(default=60, ge=1, alias="ALERT_COOLDOWN_MINUTES")
    # A capacity lowered below bookings is a planning task (guests to move before their date),
    # not a live fault: its reminder comes once a day, not every hour.
    below_bookings_reminder_hours: int = Field(default=24, ge=1, le=24 * 14, alias="BELOW_BOOKINGS_REMINDER_HOURS")
    dashboard_url: str | None = Field(default=None, alias="DASHBOARD_URL")
    # The runbook page's absolute URL; each alert kind links to its own anchor on it. The default
    # is the runbook in this project's repository, as docs/problems.md is PROBLEM_TYPE_BASE's.
    runbook_url: str = Field(default=DEFAULT_RUNBOOK_URL, alias="RUNBOOK_URL")
    include_load_test: bool = Field(default=False, alias="ALERTS_INCLUDE_LOAD_TEST")
    reconcile_past_days: int = Field(default=1, ge=0, le=30, alias="RECONCILE_PAST_DAYS")
    # "Any overbooked slot": by default every future slot with bookings (ten years ahead).
    reconcile_future_days: int = Field(default=3660, ge=0, le=3660, alias="RECONCILE_FUTURE_DAYS")

    @field_validator("alert_topic_arn")
    @classmethod
    def _topic_arn(cls, value: str | None) -> str | None:
        # Checked at cold start rather than failing at the first publish.
        if value is not None and not _TOPIC_ARN.fullmatch(value):
            raise ValueError("must be an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("runbook_url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        # It is clicked from an email at 3 am: a relative path would lead nowhere.
        if not value.startswith(("https://", "http://", "file:///")):
            raise ValueError("must be an absolute URL (https://...) of the runbook page")
        return value.split("#", 1)[0]


class RollupSettings(DatabaseSettings):
    rollup_hours: int = Field(default=3, ge=1, le=24 * 31, alias="ROLLUP_HOURS")
