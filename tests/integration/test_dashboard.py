"""`capctl dashboard`: the figures it draws from a known database and EMF log, its two modes, and
its refusals. The page in a real browser: tests/browser/test_dashboard_page.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capctl import cli, dashboard
from capctl.errors import UserError
from tests.alerting import insert_event
from tests.support import RESTAURANT_ID

NOW = dt.datetime.now(dt.UTC)
EARLIER = NOW - dt.timedelta(minutes=3)
SYNTHETIC = {"source": "load-test"}


def seed_traffic(conn: Any) -> None:
    """Live: 12 requests, 9 successes, 3 of them met a conflict; synthetic: 5 successes;
    reconciliation found one overbooked slot; one incident open, one resolved."""
    insert_event(conn, "booking.success", at=EARLIER, count=8)
    insert_event(conn, "booking.success", at=EARLIER, attempts=2)  # retried once: a conflict
    insert_event(conn, "booking.conflict", at=EARLIER)
    insert_event(conn, "booking.capacity_exceeded", at=EARLIER)
    insert_event(conn, "booking.capacity_exceeded", at=EARLIER, reason="closed")
    insert_event(conn, "booking.overbook_prevented", at=EARLIER)  # lost a race: a conflict
    insert_event(conn, "booking.retry_exhausted", at=EARLIER, attempts=4)  # a conflict
    insert_event(conn, "booking.success", at=EARLIER, count=5, **SYNTHETIC)
    insert_event(conn, "booking.overbook_detected", at=EARLIER)
    for kind, severity, status, resolved in (
        ("conflict_rate", "warning", "open", None),
        ("overbooking", "critical", "resolved", NOW - dt.timedelta(minutes=1)),
    ):
        conn.execute(
            "INSERT INTO alert_state (restaurant_id, kind, incident_key, severity, status, opened_at, last_seen_at, "
            "last_notified_at, resolved_at, figures) VALUES (%s, %s, '', %s, %s, %s, %s, %s, %s, %s)",
            (
                RESTAURANT_ID,
                kind,
                severity,
                status,
                EARLIER,
                NOW,
                EARLIER,
                resolved,
                json.dumps({"conflictRate": 0.25, "requests": 12}),
            ),
        )


def emf_line(at: dt.datetime, environment: str = "test", **metrics: float) -> str:
    """An EMF record as Powertools prints it (one JSON line, values as lists)."""
    blob: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(at.timestamp() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": "CapacityEngineTest",
                    "Dimensions": [["environment", "service"]],
                    "Metrics": [{"Name": name, "Unit": "Count"} for name in metrics],
                }
            ],
        },
        "environment": environment,
        "service": "capacity-engine",
        "restaurantId": RESTAURANT_ID,
        **{name: [value] for name, value in metrics.items()},
    }
    return json.dumps(blob)


def write_emf_log(path: Path) -> Path:
    """Four live requests (3 successes, one conflicted), latencies 10..40 ms; one synthetic;
    the other lines a serve log holds (access lines, Powertools logs, two records on one line,
    a record cut short)."""
    lines = ["capctl serve: POST /bookings 201 12.0ms instance=1 request=abc", '{"level":"INFO","message":"x"}']
    for i, latency in enumerate((10.0, 20.0, 30.0, 40.0)):
        success = 1.0 if i < 3 else 0.0
        lines.append(
            emf_line(
                EARLIER,
                BookingRequests=1,
                BookingSuccess=success,
                BookingCapacityExceeded=1 - success,
                BookingLatency=latency,
                BookingConflicts=1.0 if i == 0 else 0.0,
                BookingRequestsConflicted=1.0 if i == 0 else 0.0,
                BookingOverbookPrevented=0,
                SlotUtilization=25.0 * (i + 1),
            )
        )
    # instances writing to one log at once can put two records on one line
    lines[-1] += emf_line(EARLIER, environment="test-load-test", BookingRequests=1, BookingSuccess=1)
    lines.append(emf_line(EARLIER, BookingRequests=1)[:40])  # cut by a concurrent write
    path.write_text("\n".join(lines) + "\n")
    return path


def series(chart: dict[str, Any], label_start: str) -> list[Any]:
    """The values of the series labelled ``label_start`` (or the one label starting with it)."""
    exact = [s["values"] for s in chart["series"] if s["label"] == label_start]
    [found] = exact or [s["values"] for s in chart["series"] if s["label"].startswith(label_start)]
    return found


def values(chart: dict[str, Any], label_start: str) -> list[Any]:
    return [v for v in series(chart, label_start) if v is not None]


@pytest.fixture
def traffic(seeded_db: str, conn: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    seed_traffic(conn)
    monkeypatch.setenv("DATABASE_URL", seeded_db)
    for name in ("CONFLICT_RATE_THRESHOLD", "RETRY_EXHAUSTED_THRESHOLD", "CONFLICT_MIN_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    return seeded_db


def collect(url: str, view: dashboard.View, logs: list[Path] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    from capctl import database

    with database.connection(url) as conn:
        return dashboard.page_data(dashboard.collect(conn, view, dashboard.check_logs(logs)))


def test_from_events_alone_the_figures_are_capacity_figures(traffic, conn):
    data = collect(traffic, dashboard.View())
    assert data["meta"]["synthetic"] is False  # live has data, so live is the default
    charts = data["charts"]
    assert sum(values(charts["outcomes"], "BookingRequests")) == 12
    assert sum(values(charts["outcomes"], "BookingSuccess")) == 9
    assert sum(values(charts["outcomes"], "BookingCapacityExceeded")) == 2
    assert sum(values(charts["outcomes"], "BookingSlotClosed")) == 1
    assert values(charts["success-rate"], "Success rate %") == [75.0]
    assert values(charts["conflict-rate"], "conflict rate %") == [25.0]
    # the hour's figure comes from the roll-up, which the dashboard ran first
    assert set(values(charts["conflict-rate"], "hour's conflict rate")) == {25.0}
    stored = conn.execute("SELECT sum(requests) AS n, sum(conflicts) AS c FROM capacity_metrics_hourly").fetchone()
    assert (stored["n"], stored["c"]) == (12, 3)
    assert sum(values(charts["conflicts"], "conflicts")) == 2  # one retried failure, one lost race
    assert sum(values(charts["retries"], "retry exhausted")) == 1
    assert sum(values(charts["overbooking"], "detected")) == 1
    assert sum(values(charts["incidents"], "opened")) == 2 and sum(values(charts["incidents"], "resolved")) == 1
    assert series(charts["incidents"], "open incidents")[-1] == 1
    assert sum(values(charts["rollup"], "requests rolled up")) == 12
    assert values(charts["latency"], "p99") == []  # latency is only in the EMF records
    assert [i["kind"] for i in data["incidents"]] == ["conflict_rate"]
    [top] = data["topConflicts"]
    assert (top["requests"], top["conflicts"], top["full"]) == (12, 2, 2) and RESTAURANT_ID in top["restaurant"]
    [threshold] = charts["conflict-rate"]["thresholds"]
    assert threshold["value"] == 5.0  # CONFLICT_RATE_THRESHOLD's default, x 100
    assert charts["retries"]["thresholds"][0]["value"] == 5.0
    assert charts["overbooking"]["thresholds"][0]["value"] == 0.0
    cards = {c["label"]: c for c in data["summary"]}
    assert cards["booking requests"]["value"] == "12" and cards["conflict rate"]["tone"] == "bad"
    assert cards["open incidents"]["value"] == "1"
    assert data["meta"]["currentHour"] is not None or data["meta"]["lastCompleteHour"] is not None


def test_emf_records_feed_the_booking_panels(traffic, tmp_path):
    log = write_emf_log(tmp_path / "serve.log")
    data = collect(traffic, dashboard.View(), [log])
    charts = data["charts"]
    assert data["meta"]["bookingSource"].startswith("4 EMF records")
    assert sum(values(charts["outcomes"], "BookingRequests")) == 4
    assert values(charts["success-rate"], "Success rate %") == [75.0]
    assert values(charts["latency"], "p50") == [20.0] and values(charts["latency"], "p99") == [40.0]
    assert values(charts["utilization"], "slot utilization at booking (avg)") == [62.5]
    assert values(charts["utilization"], "slot utilization at booking (max)") == [100.0]
    assert values(charts["conflict-rate"], "conflict rate %") == [25.0]
    [top] = data["topConflicts"]
    assert (top["requests"], top["conflicts"], top["full"]) == (4, 1, 1)
    # reconciliation and alerts still come from the database
    assert sum(values(charts["overbooking"], "detected")) == 1


def test_traffic_class_and_restaurant_are_selectable(traffic, tmp_path):
    log = write_emf_log(tmp_path / "serve.log")
    synthetic = collect(traffic, dashboard.View(synthetic=True), [log])
    assert synthetic["meta"]["rollupTable"] == "capacity_metrics_hourly_synthetic"
    assert sum(values(synthetic["charts"]["outcomes"], "BookingRequests")) == 1  # its one EMF record
    from_events = collect(traffic, dashboard.View(synthetic=True))
    assert sum(values(from_events["charts"]["outcomes"], "BookingSuccess")) == 5
    assert sum(values(from_events["charts"]["rollup"], "requests rolled up")) == 5
    with pytest.raises(UserError, match="no restaurant"):
        collect(traffic, dashboard.View(restaurant_id=dashboard.parse_restaurant(RESTAURANT_ID.replace("1", "9"))))
    one = collect(traffic, dashboard.View(restaurant_id=dashboard.parse_restaurant(RESTAURANT_ID)))
    assert one["meta"]["restaurantId"] == RESTAURANT_ID
    assert sum(values(one["charts"]["outcomes"], "BookingRequests")) == 12


def test_only_load_test_traffic_defaults_to_synthetic(seeded_db, conn, monkeypatch):
    insert_event(conn, "booking.success", at=EARLIER, count=3, **SYNTHETIC)
    data = collect(seeded_db, dashboard.View())
    assert data["meta"]["synthetic"] is True
    assert sum(values(data["charts"]["outcomes"], "BookingSuccess")) == 3


def test_write_snapshot_is_one_self_contained_file(traffic, tmp_path):
    out = dashboard.write_snapshot(
        traffic,
        tmp_path / "dash" / "d.html",
        emf_logs=[write_emf_log(tmp_path / "serve.log")],
        since=NOW - dt.timedelta(hours=1),
    )
    html = out.read_text()
    for name in ("success-rate", "utilization", "conflict-rate", "outcomes", "latency", "incidents"):
        assert f'data-chart="{name}"' in html
    assert "<link" not in html and " src=" not in html  # everything inline (the browser test watches requests)
    assert "connect-src" not in html  # a snapshot fetches nothing
    embedded = json.loads(html.split('id="chart-data">', 1)[1].split("</script>", 1)[0])
    assert sum(values(embedded["outcomes"], "BookingRequests")) == 4


def test_cli_out(traffic, tmp_path, capsys):
    out = tmp_path / "d.html"
    assert cli.main(["dashboard", "--out", str(out), "--traffic", "synthetic", "--since", "2h"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert "synthetic (load tests)" in out.read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "x.html", "--since", "tomorrow"], "--since: not a duration"),
        (["--out", "x.html", "--since", "2999-01-01T00:00:00"], "is not in the past"),
        (["--out", "x.html", "--since", "99999d"], "at most 31 days back"),
        (["--out", "x.html", "--since", "999999999999999999999d"], "at most 31 days back"),
        (["--out", "x.html", "--restaurant", "nope"], "--restaurant: not a restaurant id"),
        (["--out", "x.html", "--emf-log", "/nonexistent/serve.log"], "--emf-log: no such file"),
        (["--port", "0", "--host", "0.0.0.0"], "127.0.0.1 only"),
        (["--out", "x.html", "--restaurant", "99999999-2222-4333-8444-555555555555"], "no restaurant"),
    ],
)
def test_bad_input_is_one_line(traffic, capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dashboard", *argv]) != 0
    err = capsys.readouterr().err
    assert err.startswith("capctl: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.html").exists()


def test_port_and_out_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dashboard", "--port", "0", "--out", "x.html"])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.fixture
def live_server(traffic: str, tmp_path: Path) -> Iterator[str]:
    log = write_emf_log(tmp_path / "serve.log")
    server = dashboard.DashboardServer(0, traffic, dashboard.check_logs([log]), dashboard.View(), rollup=True)
    assert server.server_address[0] == "127.0.0.1"  # bound to loopback only, never 0.0.0.0
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def get(url: str, host: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_live_server_answers_its_page_and_data(live_server, tmp_path):
    status, kind, body = get(live_server + "/data.json")
    assert status == 200 and kind == "application/json"
    data = json.loads(body)
    assert sum(values(data["charts"]["outcomes"], "BookingRequests")) == 4
    status, kind, body = get(live_server + "/data.json?traffic=synthetic&range=1h")
    assert status == 200 and json.loads(body)["meta"]["synthetic"] is True
    status, kind, body = get(live_server + "/")
    assert status == 200 and kind.startswith("text/html") and b"connect-src 'self'" in body
    status, _, body = get(live_server + "/data.json?restaurant=nope")
    assert status == 400 and "not a restaurant id" in json.loads(body)["error"]
    status, _, _ = get(live_server + "/data.json", host="evil.example:80")
    assert status == 403  # another site's page cannot read the dashboard by rebinding a name
    assert get(live_server + "/nothing")[0] == 404


def test_live_server_says_a_database_failure_in_one_line(live_server, traffic):
    """The database refusing mid-session: 503 with the error's first line, not a traceback on the
    operator's terminal and a dropped connection."""
    with psycopg.connect(traffic, autocommit=True) as admin:
        admin.execute("ALTER TABLE observability_events RENAME TO observability_events_away")
        try:
            status, kind, body = get(live_server + "/data.json")
        finally:
            admin.execute("ALTER TABLE observability_events_away RENAME TO observability_events")
    assert (status, kind) == (503, "application/json")
    assert json.loads(body)["error"].startswith('database: relation "observability_events" does not exist')
    assert get(live_server + "/data.json")[0] == 200  # and answers again once it is back


def test_ctrl_c_stops_the_live_dashboard(traffic):
    env = {**os.environ, "DATABASE_URL": traffic}
    process = subprocess.Popen(
        [sys.executable, "-m", "capctl.cli", "dashboard", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("dashboard on http://127.0.0.1:"), line + (
            process.stderr.read() if process.stderr else ""
        )
        url = line.split()[2]
        assert get(url + "data.json")[0] == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "Traceback" not in (process.stderr.read() if process.stderr else "")
    finally:
        if process.poll() is None:
            process.kill()


def test_thresholds_are_the_alert_checks_settings(traffic, monkeypatch):
    monkeypatch.setenv("CONFLICT_RATE_THRESHOLD", "0.2")
    monkeypatch.setenv("RETRY_EXHAUSTED_THRESHOLD", "9")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "not-a-url")  # the check's business, not the dashboard's
    charts = collect(traffic, dashboard.View())["charts"]
    assert charts["conflict-rate"]["thresholds"][0]["value"] == 20.0
    assert charts["retries"]["thresholds"][0]["value"] == 9.0
    monkeypatch.setenv("CONFLICT_RATE_THRESHOLD", "2")
    with pytest.raises(UserError, match="invalid setting CONFLICT_RATE_THRESHOLD"):
        collect(traffic, dashboard.View())


def test_a_live_since_keeps_sliding(traffic):
    server = dashboard.DashboardServer(0, traffic, [], dashboard.View(), rollup=False, since="30m")
    try:
        data, _, query = server.page_json({})
        assert query == {"range": "30m"}
        shown = dt.datetime.fromisoformat(data["meta"]["generatedAt"]) - dt.datetime.fromisoformat(data["meta"]["from"])
        assert dt.timedelta(minutes=30) <= shown < dt.timedelta(minutes=31)
        assert server.page_json({"range": "1h"})[2] == {"range": "1h"}  # the page's control wins
    finally:
        server.server_close()


def test_the_emf_lines_capctl_serve_really_writes(seeded_db, tmp_path, monkeypatch):
    """Real handler output, not hand-written EMF: 20-cover slot, 12 parties of 2 (10 booked,
    2 refused) and 2 from a load test; the dashboard counts them as the handler emitted them."""
    from capctl.serve import LocalApi
    from tests.support import booking_body

    for name in ("CONFLICT_RATE_THRESHOLD", "RETRY_EXHAUSTED_THRESHOLD", "CONFLICT_MIN_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    log = tmp_path / "serve.log"
    env = {"POWERTOOLS_METRICS_NAMESPACE": "CapacityEngineTest", "ENVIRONMENT": "test"}
    statuses = []
    with LocalApi(database_url=seeded_db, instances=1, log_path=log, env=env) as api:
        for i in range(14):
            body = booking_body(time="19:00" if i < 12 else "20:00", source="load-test" if i >= 12 else "web")
            request = urllib.request.Request(
                api.base_url + "/bookings",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json", "Idempotency-Key": f"dash-{i}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
    assert statuses == [201] * 10 + [409] * 2 + [201] * 2
    live = collect(seeded_db, dashboard.View(synthetic=False), [log])
    assert live["meta"]["bookingSource"].startswith("12 EMF records")
    outcomes = live["charts"]["outcomes"]
    assert (sum(values(outcomes, "BookingSuccess")), sum(values(outcomes, "BookingCapacityExceeded"))) == (10, 2)
    assert max(values(live["charts"]["utilization"], "slot utilization at booking (max)")) == 100.0
    assert values(live["charts"]["latency"], "p99")  # the handler's own service times
    synthetic = collect(seeded_db, dashboard.View(synthetic=True), [log])
    assert sum(values(synthetic["charts"]["outcomes"], "BookingSuccess")) == 2
