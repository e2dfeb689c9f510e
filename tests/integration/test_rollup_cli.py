"""`capctl rollup`: the roll-up run once, locally, against DATABASE_URL."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from capctl import cli
from tests.alerting import insert_event
from tests.command_line import on_database, one_line_error
from tests.support import RESTAURANT_ID


@pytest.fixture
def on_db(seeded_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return on_database(monkeypatch, seeded_db, "ROLLUP_HOURS")


def test_rollup_json(on_db, conn, capsys):
    insert_event(conn, "booking.success", at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1), count=2)
    assert cli.main(["rollup", "--hours", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["hours"] == 1
    assert summary["live"]["changed"] == summary["live"]["rows"] >= 1
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    stored = conn.execute(
        "SELECT sum(requests) AS n FROM capacity_metrics_hourly WHERE restaurant_id = %s AND hour >= %s",
        (RESTAURANT_ID, hour - dt.timedelta(hours=1)),
    ).fetchone()
    assert stored["n"] == 2


def test_rollup_text(on_db, capsys, monkeypatch):
    monkeypatch.setenv("ROLLUP_HOURS", "2")
    assert cli.main(["rollup"]) == 0
    out = capsys.readouterr().out
    assert "(2 whole hours + the current one)" in out
    assert "live:" in out and "synthetic:" in out and "purged 0 expired idempotency keys" in out
    assert "current hour so far (live)" in out and "load tests" not in out  # none ran


@pytest.mark.parametrize("hours", ["0", "x", "745"])
def test_bad_hours_is_a_usage_error(on_db, capsys, hours):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["rollup", "--hours", hours])
    assert exit_info.value.code == 2
    assert "argument --hours" in capsys.readouterr().err


def test_bad_setting_is_a_one_line_error(on_db, capsys, monkeypatch):
    monkeypatch.setenv("ROLLUP_HOURS", "lots")
    assert one_line_error(capsys, "rollup").startswith("capctl: error: invalid setting ROLLUP_HOURS")


def test_right_after_a_run_the_current_hour_is_shown(on_db, conn, capsys):
    # A load test just ran: its requests are in the current, partial hour only.
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    insert_event(conn, "booking.success", at=hour, count=3, source="load-test")
    insert_event(conn, "booking.retry_exhausted", at=hour, attempts=4, source="load-test")
    insert_event(conn, "booking.success", at=hour, count=2)
    assert cli.main(["rollup", "--hours", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    if summary["currentHour"]["hour"] != hour.strftime("%Y-%m-%dT%H:%M:%SZ"):
        pytest.skip("the hour turned during the test")
    # existing fields are kept; the current hour and the load-test figures are added
    assert summary["lastHour"]["hour"] == (hour - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    current = summary["currentHour"]
    assert current["hour"] == hour.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (current["requests"], current["successRate"]) == (2, 1.0)
    synthetic = summary["currentHourSynthetic"]
    assert (synthetic["requests"], synthetic["successes"], synthetic["conflictRate"]) == (4, 3, 0.25)
    assert summary["lastHourSynthetic"]["requests"] == 0

    assert cli.main(["rollup", "--hours", "1"]) == 0
    out = capsys.readouterr().out
    assert "current hour so far (live) " + current["hour"] + ": 2 requests, success 100.0%" in out
    assert "current hour so far (load tests) " + current["hour"] + ": 4 requests, success 75.0%, conflicts 25.0%" in out
    assert "last complete hour (live) " + summary["lastHour"]["hour"] + ": no requests" in out
    assert " 0 requests" not in out
