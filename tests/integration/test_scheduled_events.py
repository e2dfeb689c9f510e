"""The scheduled functions end to end: the EventBridge events of events/ through both Lambda
handlers, cold-started as Lambda would, on a real PostgreSQL with SNS faked by moto."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capacity.db import DatabaseUnavailable
from capacity.settings import SettingsError
from capctl.apigw import LambdaContext
from capctl.handlers import load_handler
from tests.alerting import GUEST, insert_event, overbook, slot_date
from tests.support import RESTAURANT_ID

EVENTS = Path(__file__).resolve().parents[2] / "events"


def scheduled_event(name: str, **detail: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / name).read_text())
    event["detail"].update(detail)
    return event


def emf_blobs(out: str) -> list[dict[str, Any]]:
    blobs = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blobs.append(json.loads(line))
    return blobs


def metric_values(blob: dict[str, Any]) -> dict[str, Any]:
    [directive] = blob["_aws"]["CloudWatchMetrics"]
    values = {m["Name"]: blob[m["Name"]] for m in directive["Metrics"]}
    # Powertools writes a metric added once as a one-element list.
    return {name: v[0] if isinstance(v, list) and len(v) == 1 else v for name, v in values.items()}


@pytest.fixture
def cold_start(handler_env: Any) -> Iterator[Any]:
    loaded: list[Any] = []

    def start(name: str, url: str, **env: str) -> Any:
        handler_env(url, **env)
        module = load_handler(name, fresh=True)
        loaded.append(module)
        return module

    yield start
    for module in loaded:
        module.db.close()


def test_the_event_files_are_eventbridge_scheduled_events():
    for name in ("rollup_metrics_scheduled.json", "check_alerts_scheduled.json"):
        event = json.loads((EVENTS / name).read_text())
        assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
        assert event["resources"][0].startswith("arn:aws:events:")
        assert event["detail"] == {}


class TestRollupHandler:
    def test_scheduled_event_rolls_up_and_emits_emf(self, seeded_db, conn, cold_start, capsys):
        current = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        previous = current - dt.timedelta(hours=1)
        # The same traffic in this hour and the last, so the last complete hour has it even if
        # the clock turns an hour before the handler runs.
        for hour in (previous, current):
            insert_event(conn, "booking.success", at=hour, count=3)
            insert_event(conn, "booking.success", at=hour, attempts=2)
        app = cold_start("rollup_metrics", seeded_db, ROLLUP_HOURS="2")
        capsys.readouterr()

        result = app.lambda_handler(
            scheduled_event("rollup_metrics_scheduled.json"), LambdaContext(function_name="RollupMetricsFunction")
        )

        assert result["hours"] == 2 and result["live"]["rows"] >= 1
        planted = conn.execute(
            "SELECT requests, successes, conflicts FROM capacity_metrics_hourly WHERE restaurant_id = %s AND hour = %s",
            (RESTAURANT_ID, previous),
        ).fetchone()
        assert planted == {"requests": 4, "successes": 4, "conflicts": 1}
        [blob] = emf_blobs(capsys.readouterr().out)
        assert blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CapacityEngineTest"
        assert [sorted(d) for d in blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"]] == [["environment", "service"]]
        assert (blob["service"], blob["environment"]) == ("capacity-engine", "test")
        values = metric_values(blob)
        # The figures of the last complete hour, whichever hour that was when the handler ran.
        assert values["RollupRequests"] == result["lastHour"]["requests"]
        assert values["RollupRows"] == result["live"]["changed"] + result["synthetic"]["changed"]
        assert result["lastHour"]["requests"] == 4
        assert (values["RollupSuccessRate"], values["RollupConflictRate"]) == (100.0, 25.0)
        # Utilization is a datapoint only for an hour with open slots of finite capacity.
        assert ("RollupUtilization" in values) == (result["lastHour"]["capacityCovers"] > 0)
        assert blob["hour"] == result["lastHour"]["hour"]

    def test_detail_hours_asks_for_a_longer_window(self, seeded_db, conn, cold_start):
        five_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
        insert_event(conn, "booking.success", at=five_hours_ago)
        app = cold_start("rollup_metrics", seeded_db)
        context = LambdaContext(function_name="RollupMetricsFunction")
        assert app.lambda_handler(scheduled_event("rollup_metrics_scheduled.json"), context)["hours"] == 3
        total = "SELECT coalesce(sum(requests), 0) AS n FROM capacity_metrics_hourly"
        assert conn.execute(total).fetchone()["n"] == 0
        result = app.lambda_handler(scheduled_event("rollup_metrics_scheduled.json", hours=8), context)
        assert result["hours"] == 8
        assert conn.execute(total).fetchone()["n"] == 1

    @pytest.mark.parametrize("hours", [0, "3", True, 10_000])
    def test_invalid_detail_hours_is_refused(self, seeded_db, cold_start, hours):
        app = cold_start("rollup_metrics", seeded_db)
        with pytest.raises(ValueError, match=r"detail\.hours must be an integer"):
            app.lambda_handler(
                scheduled_event("rollup_metrics_scheduled.json", hours=hours),
                LambdaContext(function_name="RollupMetricsFunction"),
            )

    def test_invalid_setting_stops_the_cold_start(self, seeded_db, handler_env):
        handler_env(seeded_db, ROLLUP_HOURS="0")
        with pytest.raises(SettingsError, match="invalid setting ROLLUP_HOURS"):
            load_handler("rollup_metrics", fresh=True)

    def test_unreachable_database_fails_the_invocation(self, cold_start, caplog):
        app = cold_start("rollup_metrics", "postgresql://postgres@127.0.0.1:9/postgres", DB_CONNECT_TIMEOUT_SECONDS="1")
        with pytest.raises(DatabaseUnavailable):
            app.lambda_handler(
                scheduled_event("rollup_metrics_scheduled.json"), LambdaContext(function_name="RollupMetricsFunction")
            )


class TestCheckAlertsHandler:
    def test_scheduled_event_alerts_once_per_incident(self, seeded_db, conn, cold_start, topic, webhook, capsys):
        date = slot_date()
        overbook(conn, date=date)
        app = cold_start(
            "check_alerts",
            seeded_db,
            ALERT_TOPIC_ARN=topic.topic_arn,
            ALERT_WEBHOOK_URL=webhook.url,
            DASHBOARD_URL="https://console.example/dash?restaurant={restaurantId}",
        )
        capsys.readouterr()
        context = LambdaContext(function_name="CheckAlertsFunction")

        result = app.lambda_handler(scheduled_event("check_alerts_scheduled.json"), context)

        assert (result["opened"], result["overbookDetected"], result["sent"], result["deliveryFailures"]) == (
            1,
            1,
            2,
            0,
        )
        assert sorted((d["channel"], d["status"]) for d in result["deliveries"]) == [
            ("sns", "sent"),
            ("webhook", "sent"),
        ]
        [message] = topic.messages()
        assert message["subject"] == f"[CRITICAL] Overbooked slot {date.isoformat()} 19:00 - Test Trattoria (test)"
        assert f"Dashboard: https://console.example/dash?restaurant={RESTAURANT_ID}" in message["message"]
        assert len(webhook.messages()) == 1
        out = capsys.readouterr().out
        for personal in GUEST.values():
            assert personal not in out
        [blob] = emf_blobs(out)
        assert [sorted(d) for d in blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"]] == [["environment", "service"]]
        assert metric_values(blob) == {
            "OverbookDetected": 1.0,
            "AlertsOpened": 1.0,
            "AlertsResolved": 0.0,
            "AlertDeliveryFailures": 0.0,
        }
        events = conn.execute(
            "SELECT count(*) AS n FROM observability_events WHERE event_type = 'booking.overbook_detected'"
        ).fetchone()
        assert events["n"] == 1

        again = app.lambda_handler(scheduled_event("check_alerts_scheduled.json"), context)
        assert (again["opened"], again["sent"]) == (0, 0)
        assert topic.messages() == [] and len(webhook.messages()) == 1
        assert metric_values(emf_blobs(capsys.readouterr().out)[0])["AlertsOpened"] == 0.0

    def test_dry_run_event_sends_nothing(self, seeded_db, conn, cold_start, topic, capsys):
        overbook(conn, date=slot_date())
        app = cold_start("check_alerts", seeded_db, ALERT_TOPIC_ARN=topic.topic_arn)
        result = app.lambda_handler(
            scheduled_event("check_alerts_scheduled.json", dryRun=True),
            LambdaContext(function_name="CheckAlertsFunction"),
        )
        assert result["dryRun"] and result["opened"] == 1
        assert [d["status"] for d in result["deliveries"]] == ["would-send"]
        assert topic.messages() == []
        assert conn.execute("SELECT count(*) AS n FROM alert_state").fetchone()["n"] == 0

    def test_failed_delivery_is_reported_in_metrics(self, seeded_db, conn, cold_start, topic, capsys):
        overbook(conn, date=slot_date())
        app = cold_start("check_alerts", seeded_db, ALERT_TOPIC_ARN=topic.topic_arn.replace("capacity-alerts", "nope"))
        capsys.readouterr()
        result = app.lambda_handler(
            scheduled_event("check_alerts_scheduled.json"), LambdaContext(function_name="CheckAlertsFunction")
        )
        assert result["deliveryFailures"] == 1
        assert metric_values(emf_blobs(capsys.readouterr().out)[0])["AlertDeliveryFailures"] == 1.0

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("CONFLICT_RATE_THRESHOLD", "lots"),
            ("ALERT_TOPIC_ARN", "alerts-topic"),
            ("ALERT_WEBHOOK_URL", "ftp://example.com"),
            ("ALERT_COOLDOWN_MINUTES", "0"),
        ],
    )
    def test_invalid_setting_stops_the_cold_start(self, seeded_db, handler_env, name, value):
        handler_env(seeded_db, **{name: value})
        with pytest.raises(SettingsError, match=f"invalid setting {name}"):
            load_handler("check_alerts", fresh=True)

    def test_unreachable_database_fails_the_invocation(self, cold_start):
        app = cold_start("check_alerts", "postgresql://postgres@127.0.0.1:9/postgres", DB_CONNECT_TIMEOUT_SECONDS="1")
        with pytest.raises(DatabaseUnavailable):
            app.lambda_handler(
                scheduled_event("check_alerts_scheduled.json"), LambdaContext(function_name="CheckAlertsFunction")
            )


@pytest.mark.parametrize(
    ("function", "event", "what"),
    [
        ("rollup_metrics", "rollup_metrics_scheduled.json", "roll-up"),
        ("check_alerts", "check_alerts_scheduled.json", "alert check"),
    ],
)
def test_a_run_that_fails_logs_type_and_sqlstate_only_and_the_next_reconnects(
    function, event, what, seeded_db, conn, cold_start, caplog
):
    app = cold_start(function, seeded_db)
    context = LambdaContext(function_name=function)
    conn.execute("ALTER TABLE observability_events RENAME TO observability_events_away")
    with pytest.raises(Exception, match="observability_events"):
        app.lambda_handler(scheduled_event(event), context)
    failed = [r for r in caplog.records if r.getMessage() == f"{what} failed"]
    assert [(r.levelname, r.errorType, r.sqlstate) for r in failed] == [("ERROR", "UndefinedTable", "42P01")]
    assert "observability_events" not in json.dumps(vars(failed[0]), default=str)  # no error text (it may quote a row)
    broken = app.db._conn
    assert broken is None  # dropped: the next invocation connects again
    conn.execute("ALTER TABLE observability_events_away RENAME TO observability_events")
    assert app.lambda_handler(scheduled_event(event), context) is not None
    assert app.db._conn is not None and not app.db._conn.closed
