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

from capacity.alerts import AlertChecker, AlertRunSummary
from capacity.notifiers import notifiers_from_settings
from capacity.rollup import RollupSummary, run_rollup
from capacity.settings import AlertSettings, RollupSettings, SettingsError
from capctl import database
from capctl.errors import UserError

MAX_HOURS = 24 * 31


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
        summary = run_rollup(conn, hours=hours)
    if args.json:
        print(json.dumps(summary.as_json(), indent=2))
    else:
        print(format_rollup(summary))
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


def _rate(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_rollup(summary: RollupSummary) -> str:
    s = summary.as_json()
    last = s["lastHour"]
    lines = [
        f"rolled up {s['windowStart']} .. {s['windowEnd']} ({summary.hours} whole hours + the current one)",
        f"  live:      {s['live']['rows']} rows, {s['live']['changed']} changed, {s['live']['removed']} removed",
        f"  synthetic: {s['synthetic']['rows']} rows, {s['synthetic']['changed']} changed, "
        f"{s['synthetic']['removed']} removed",
        f"  last complete hour {last['hour']} (live): {last['requests']} requests, "
        f"success {_rate(last['successRate'])}, conflicts {_rate(last['conflictRate'])}, "
        f"utilization {_rate(last['utilization'])} ({last['coversBooked']}/{last['capacityCovers']} covers)",
        f"  purged {s['purgedIdempotencyKeys']} expired idempotency keys",
    ]
    if summary.skipped_restaurants:
        lines.append(f"  skipped (unknown time zone): {', '.join(summary.skipped_restaurants)}")
    return "\n".join(lines)


def format_alerts(summary: AlertRunSummary) -> str:
    if summary.skipped:
        return "another alert check is running; nothing done"
    prefix = "dry run: " if summary.dry_run else ""
    channels = ", ".join(summary.channels) or "none configured (set ALERT_TOPIC_ARN / ALERT_WEBHOOK_URL)"
    lines = [
        f"{prefix}checked {summary.restaurants} restaurants, {summary.slots_checked} booked slots; "
        f"channels: {channels}",
        f"  opened {summary.opened}, reminders {summary.reminders}, resolved {summary.resolved}, "
        f"sent {summary.sent}, delivery failures {summary.delivery_failures}",
    ]
    for t in summary.transitions:
        incident = f" {t.key.incident}" if t.key.incident else ""
        lines.append(f"  {t.action.value:<8} {t.key.kind.value}{incident} restaurant {t.key.restaurant_id}")
    for d in summary.deliveries:
        incident = f" {d.incident}" if d.incident else ""
        error = f" ({d.error})" if d.error else ""
        lines.append(
            f"  {d.channel:<8} {d.notice:<9} {d.alert}{incident} restaurant {d.restaurant_id}: {d.status}{error}"
        )
    return "\n".join(lines)
