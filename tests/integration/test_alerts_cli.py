"""`capctl check-alerts`: the alert check run once, locally; real deliveries to moto's SNS and a
webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from capctl import cli
from tests.alerting import overbook, slot_date
from tests.command_line import on_database, one_line_error
from tests.support import RESTAURANT_ID

ALERT_ENV = ("ALERT_TOPIC_ARN", "ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_SECRET_ARN", "ALERTS_INCLUDE_LOAD_TEST")


@pytest.fixture
def on_db(seeded_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return on_database(monkeypatch, seeded_db, *ALERT_ENV)


def test_dry_run_prints_what_would_be_sent(on_db, conn, topic, capsys, monkeypatch):
    monkeypatch.setenv("ALERT_TOPIC_ARN", topic.topic_arn)
    overbook(conn, date=slot_date())
    assert cli.main(["check-alerts", "--dry-run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dryRun"] and summary["opened"] == 1
    assert [(d["channel"], d["alert"], d["restaurantId"], d["status"]) for d in summary["deliveries"]] == [
        ("sns", "overbooking", RESTAURANT_ID, "would-send")
    ]
    assert topic.messages() == []
    assert conn.execute("SELECT count(*) AS n FROM alert_state").fetchone()["n"] == 0


def test_real_run_delivers_and_prints_each_delivery(on_db, conn, topic, webhook, capsys, monkeypatch):
    monkeypatch.setenv("ALERT_TOPIC_ARN", topic.topic_arn)
    monkeypatch.setenv("ALERT_WEBHOOK_URL", webhook.url)
    date = slot_date()
    booking_ids = overbook(conn, date=date)
    assert cli.main(["check-alerts"]) == 0
    out = capsys.readouterr().out
    slot = f"{date.isoformat()} 19:00"
    assert f"  open     overbooking {slot} restaurant {RESTAURANT_ID}" in out
    assert f"  sns      opened    overbooking {slot} restaurant {RESTAURANT_ID}: sent" in out
    assert f"  webhook  opened    overbooking {slot} restaurant {RESTAURANT_ID}: sent" in out
    assert len(topic.messages()) == 1 and len(webhook.messages()) == 1

    webhook.status = 500
    conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = %s", (booking_ids[0],))
    assert cli.main(["check-alerts"]) == 0  # a failed delivery is reported, not an error
    out = capsys.readouterr().out
    assert "resolved 1" in out
    assert "webhook  resolved  overbooking" in out and ": failed (webhook answered HTTP 500)" in out


def test_no_channels_is_said_plainly(on_db, capsys):
    assert cli.main(["check-alerts"]) == 0
    out = capsys.readouterr().out
    assert "channels: none configured" in out and "opened 0, reminders 0, resolved 0" in out


def test_bad_setting_is_a_one_line_error(on_db, capsys, monkeypatch):
    monkeypatch.setenv("CONFLICT_RATE_THRESHOLD", "1.5")
    assert one_line_error(capsys, "check-alerts").startswith("capctl: error: invalid setting CONFLICT_RATE_THRESHOLD")


def test_another_run_in_progress(on_db, db_url, capsys):
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(7347203)")
        assert cli.main(["check-alerts"]) == 0
    assert "another alert check is running" in capsys.readouterr().out
