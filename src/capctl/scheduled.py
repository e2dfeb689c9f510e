"""`capctl rollup` and `capctl check-alerts`: the scheduled functions' logic, run once, locally.

Same code as the Lambda functions (``capacity.rollup``, ``capacity.alerts``), same settings from
the environment, against DATABASE_URL or the embedded PostgreSQL of `capctl db up`. With
ALERT_TOPIC_ARN and AWS_ENDPOINT_URL_SNS (a local moto server) and ALERT_WEBHOOK_URL set, notices
are really delivered.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic.alias_generators import to_camel

from capacity.alerts import AlertChecker, AlertRunSummary
from capacity.db import DictConnection
from capacity.figures import percent_text
from capacity.notifiers import notifiers_from_settings
from capacity.rollup import HOUR, LIVE_TABLE, SYNTHETIC_TABLE, HourTotals, RollupSummary, hour_totals, run_rollup
from capacity.scheduled_settings import AlertSettings, RollupSettings
from capacity.settings import SettingsError
from capctl import database
from capctl.errors import UserError
from capctl.text import plural

MAX_HOURS = 24 * 31


class RollupReport(BaseModel):
    """The roll-up's summary, and the hours a person asks about right after a run: the current,
    partial hour as well as the last complete one, for live and for load-test traffic."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, frozen=True)

    summary: RollupSummary
    current_hour: HourTotals
    current_hour_synthetic: HourTotals
    last_hour_synthetic: HourTotals

    @model_serializer(mode="wrap")
    def _summary_members_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # `rollup --json` is the roll-up's own summary (as the Lambda returns it) with the hours
        # added after its members, not nested under "summary".
        data: dict[str, Any] = handler(self)
        summary: dict[str, Any] = data.pop("summary")
        return {**summary, **data}

    def dumps(self) -> str:
        """The JSON `capctl rollup --json` prints (json's number formatting, as before)."""
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2)


def rollup_report(conn: DictConnection, summary: RollupSummary) -> RollupReport:
    current = summary.window_end - HOUR  # the window ends with the current hour
    return RollupReport(
        summary=summary,
        current_hour=hour_totals(conn, current, LIVE_TABLE),
        current_hour_synthetic=hour_totals(conn, current, SYNTHETIC_TABLE),
        last_hour_synthetic=hour_totals(conn, summary.last_hour.hour, SYNTHETIC_TABLE),
    )


def _hours(value: str) -> int:
    try:
        hours = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of hours: {value!r}") from None
    if not 1 <= hours <= MAX_HOURS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_HOURS}")
    return hours


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "rollup":
        parser.add_argument(
            "--hours",
            type=_hours,
            default=None,
            help="whole hours before the current one to re-aggregate (default: ROLLUP_HOURS, 3)",
        )
    else:
        parser.add_argument(
            "--dry-run", action="store_true", help="evaluate and print; deliver nothing, change nothing"
        )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace, command: str) -> int:
    if command == "rollup":
        return _rollup(args)
    return _check_alerts(args)


def _rollup(args: argparse.Namespace) -> int:
    try:
        settings = RollupSettings.from_env()
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    hours = args.hours or settings.rollup_hours
    with database.connection() as conn:
        report = rollup_report(conn, run_rollup(conn, hours=hours))
    if args.json:
        print(report.dumps())
    else:
        print(format_rollup(report))
    return 0


def _check_alerts(args: argparse.Namespace) -> int:
    try:
        settings = AlertSettings.from_env()
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    checker = AlertChecker(settings, notifiers_from_settings(settings))
    with database.connection() as conn:
        summary = checker.run(conn, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(summary.as_json(), indent=2))
    else:
        print(format_alerts(summary))
    return 0


def _hour_line(title: str, totals: HourTotals) -> str:
    t = totals.as_json()
    if not totals.requests and not totals.capacity_covers:
        return f"  {title} {t['hour']}: no requests"
    requests = f"{totals.requests} requests" if totals.requests else "no requests"
    return (
        f"  {title} {t['hour']}: {requests}, success {percent_text(t['successRate'])}, "
        f"conflicts {percent_text(t['conflictRate'])}, utilization {percent_text(t['utilization'])} "
        f"({t['coversBooked']}/{t['capacityCovers']} covers)"
    )


def format_rollup(report: RollupReport) -> str:
    summary = report.summary
    s = summary.as_json()
    lines = [
        f"rolled up {s['windowStart']} .. {s['windowEnd']} ({summary.hours} whole hours + the current one)",
        f"  live:      {s['live']['rows']} rows, {s['live']['changed']} changed, {s['live']['removed']} removed",
        f"  synthetic: {s['synthetic']['rows']} rows, {s['synthetic']['changed']} changed, "
        f"{s['synthetic']['removed']} removed",
        _hour_line("current hour so far (live)", report.current_hour),
        _hour_line("last complete hour (live)", summary.last_hour),
    ]
    # Load-test traffic only when there is some: right after `capctl load` it is all there is.
    if report.current_hour_synthetic.requests or report.last_hour_synthetic.requests:
        lines.append(_hour_line("current hour so far (load tests)", report.current_hour_synthetic))
        lines.append(_hour_line("last complete hour (load tests)", report.last_hour_synthetic))
    lines.append(f"  purged {s['purgedIdempotencyKeys']} expired idempotency keys")
    if summary.skipped_restaurants:
        lines.append(f"  skipped (unknown time zone): {', '.join(summary.skipped_restaurants)}")
    return "\n".join(lines)


def format_alerts(summary: AlertRunSummary) -> str:
    if summary.skipped:
        return "another alert check is running; nothing done"
    prefix = "dry run: " if summary.dry_run else ""
    channels = ", ".join(summary.channels) or "none configured (set ALERT_TOPIC_ARN / ALERT_WEBHOOK_URL)"
    lines = [
        f"{prefix}checked {plural(summary.restaurants, 'restaurant')}, {plural(summary.slots_checked, 'booked slot')}; "
        f"channels: {channels}",
        f"  opened {summary.opened}, reminders {summary.reminders}, resolved {summary.resolved}, "
        f"sent {summary.sent}, delivery failures {summary.delivery_failures}",
    ]
    for t in summary.transitions:
        incident = f" {t.key.incident}" if t.key.incident else ""
        if t.key.grouped:  # one incident for a capacity change: how many slots it holds now
            incident += f" ({plural(len(t.members), 'slot')})"
        lines.append(f"  {t.action.value:<8} {t.key.kind.value}{incident} restaurant {t.key.restaurant_id}")
    for d in summary.deliveries:
        incident = f" {d.incident}" if d.incident else ""
        error = f" ({d.error})" if d.error else ""
        lines.append(
            f"  {d.channel:<8} {d.notice:<9} {d.alert}{incident} restaurant {d.restaurant_id}: {d.status}{error}"
        )
    return "\n".join(lines)
