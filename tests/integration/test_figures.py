"""One set of figures: the load-test report, the roll-up, the alert check and the handler's EMF
metric count the same conflict rate for the same events (capacity.figures)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from capacity import figures
from capacity.alerts import AlertChecker
from capacity.outcomes import LOAD_TEST_SOURCE, EventType
from capacity.rollup import SYNTHETIC_TABLE, run_rollup
from capacity.scheduled_settings import AlertSettings
from capctl import load, report
from tests.alerting import insert_event
from tests.support import FUTURE, RESTAURANT_ID

pytestmark = pytest.mark.integration

RUN = "run-figures"
NOW = dt.datetime.now(dt.UTC).replace(minute=30, second=0, microsecond=0)


def plant(conn: Any) -> None:
    """Twelve requests of one load-test run, five of which met a conflict, and their riders."""
    meta = {"source": LOAD_TEST_SOURCE, "runId": RUN}
    at = NOW - dt.timedelta(minutes=10)

    def event(kind: EventType, count: int = 1, **extra: Any) -> None:
        insert_event(conn, kind.value, at=at, count=count, **meta, **extra)

    event(EventType.SUCCESS, 6)
    event(EventType.CONFLICT, 2, attempts=2, attempt=1)  # two requests that retried once...
    event(EventType.SUCCESS, 2, attempts=2)  # ...and then booked
    event(EventType.CAPACITY_EXCEEDED, reason="full")  # a lost race on the first attempt
    event(EventType.OVERBOOK_PREVENTED)
    event(EventType.CONFLICT, 2, attempts=3)  # a lost race on the third attempt: counted once
    event(EventType.CAPACITY_EXCEEDED, attempts=3, reason="full")
    event(EventType.OVERBOOK_PREVENTED, attempts=3)
    event(EventType.RETRY_EXHAUSTED, attempts=4)  # ran out of retries
    event(EventType.CAPACITY_EXCEEDED, reason="closed")  # refused, no conflict


def test_report_rollup_and_alert_check_agree_on_the_conflict_rate(seeded_db: str, conn: Any) -> None:
    plant(conn)
    # the load-test report
    plan = load.Plan(run_id=RUN, restaurant_ids=[RESTAURANT_ID], dates=[FUTURE], days={}, hot=[])
    verification = load.verify_in_database(conn, plan, NOW - dt.timedelta(hours=1))
    built = report.make_report(
        run_id=RUN,
        started_at=NOW - dt.timedelta(minutes=15),
        finished_at=NOW,
        base_url="http://127.0.0.1:1",
        restaurant_ids=[RESTAURANT_ID],
        dates=[FUTURE.isoformat()],
        scenario="load/capacity-smoke.yml",
        artillery_output=None,
        artillery_exit_code=0,
        ensure_checks=[],
        verification=verification,
    ).as_json()
    from_report = built["verification"]["conflictRate"]
    # the hourly roll-up of the same (synthetic) traffic
    run_rollup(conn, hours=1, now=NOW)
    row = conn.execute(
        f"SELECT requests, conflicts, conflict_rate FROM {SYNTHETIC_TABLE} WHERE restaurant_id = %s",
        (RESTAURANT_ID,),
    ).fetchone()
    # the alert check, load-test traffic included
    config = AlertSettings.from_env(
        {"ENVIRONMENT": "test", "ALERTS_INCLUDE_LOAD_TEST": "true", "CONFLICT_MIN_REQUESTS": "10"}
    )
    summary = AlertChecker(config, [], now=lambda: NOW).run(conn, dry_run=True)
    [alert] = [t for t in summary.transitions if t.key.kind.value == "conflict_rate"] or [None]

    assert (row["requests"], row["conflicts"]) == (12, 5)
    assert from_report == pytest.approx(5 / 12) == pytest.approx(float(row["conflict_rate"]))
    assert figures.conflict_rate(row["conflicts"], row["requests"]) == pytest.approx(from_report)
    assert alert is not None and alert.figures["conflictRate"] == pytest.approx(from_report, abs=1e-6)


@pytest.mark.parametrize(
    ("attempts", "lost_race", "exhausted", "conflicted"),
    [(1, False, False, False), (2, False, False, True), (1, True, False, True), (4, False, True, True)],
)
def test_the_handlers_metric_counts_a_request_as_the_sql_does(
    conn: Any, attempts: int, lost_race: bool, exhausted: bool, conflicted: bool
) -> None:
    outcome = EventType.RETRY_EXHAUSTED if exhausted else EventType.SUCCESS
    insert_event(conn, outcome.value, attempts=attempts)
    if lost_race:
        insert_event(conn, EventType.OVERBOOK_PREVENTED.value, attempts=attempts)
    row = conn.execute(
        f"SELECT count(*) FILTER (WHERE {figures.CONFLICTED_SQL})::int AS n FROM observability_events e"
    ).fetchone()
    assert figures.request_conflicted(attempts=attempts, lost_race=lost_race, exhausted=exhausted) is conflicted
    assert row["n"] == int(conflicted)
