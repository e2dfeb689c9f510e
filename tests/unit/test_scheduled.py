"""`capctl rollup --json`: the report as a typed model prints what the hand-written dict printed
(tests/fixtures/rollup-report-golden.json, written by commit 5ac79f2's RollupReport.as_json
from the same figures)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from capacity.rollup import HourTotals, RollupSummary, TableResult
from capctl.scheduled import RollupReport, format_rollup

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "rollup-report-golden.json"
HOUR = dt.datetime(2030, 6, 14, 18, tzinfo=dt.UTC)


def totals(hour: dt.datetime, requests: int) -> HourTotals:
    successes, conflicts = (requests - 3, 1) if requests else (0, 0)
    return HourTotals(hour, 2, requests, successes, conflicts, 0, 3 * requests, 400)


def report() -> RollupReport:
    summary = RollupSummary(
        HOUR - dt.timedelta(hours=3),
        HOUR + dt.timedelta(hours=1),
        3,
        TableResult(12, 3, 1),
        TableResult(4, 4, 0),
        7,
        totals(HOUR - dt.timedelta(hours=1), 30),
        ["r-unknown-tz"],
    )
    return RollupReport(
        summary=summary,
        current_hour=totals(HOUR, 11),
        current_hour_synthetic=totals(HOUR, 0),
        last_hour_synthetic=totals(HOUR - dt.timedelta(hours=1), 250),
    )


def test_rollup_json_is_the_summary_then_the_hours_as_before() -> None:
    text = report().dumps()

    assert text + "\n" == GOLDEN.read_text()
    document = json.loads(text)
    assert list(document)[-3:] == ["currentHour", "currentHourSynthetic", "lastHourSynthetic"]
    assert "summary" not in document
    assert document["currentHour"]["conflictRate"] == round(1 / 11, 6)


def test_rollup_text_names_load_test_hours_only_when_there_were_some() -> None:
    text = format_rollup(report())

    assert "current hour so far (live) 2030-06-14T18:00:00Z: 11 requests" in text
    assert "last complete hour (load tests) 2030-06-14T17:00:00Z: 250 requests" in text
    assert "skipped (unknown time zone): r-unknown-tz" in text
