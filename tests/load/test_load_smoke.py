"""The Artillery smoke scenario end to end: `capctl serve` on a seeded test database, `capctl load
--smoke` against it as an operator would run it, then the report and the database are checked.

Skipped only when Artillery is not installed (node_modules/.bin/artillery); `make test` installs it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import FUTURE_DATE, RESTAURANT_ID

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[2]
ARTILLERY = ROOT / "node_modules" / ".bin" / "artillery"
API_KEY = "smoke-test-key"
READY = re.compile(r"^serving \S+ on (?P<url>http://\S+) with \d+ instances?$")


def capctl_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAD_TEST_", "ALERT"))}
    env.update({"DATABASE_URL": db_url, "POWERTOOLS_TRACE_DISABLED": "1", "ENVIRONMENT": "test", **extra})
    return env


@pytest.fixture
def api(seeded_db: str, tmp_path: Path) -> Iterator[str]:
    """`capctl serve` (2 instances, an API key) on the seeded test database; its base URL."""
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "capctl.cli", "serve", "--port", "0", "--instances", "2", "--api-key", API_KEY,
         "--function-logs", "off"],
        stdout=subprocess.PIPE, stderr=log, text=True, env=capctl_env(seeded_db), start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        m = READY.match(line)
        assert m, f"capctl serve did not start: {line!r}; log: {(tmp_path / 'serve.log').read_text()[-2000:]}"
        yield m["url"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def run_load(db_url: str, base_url: str, report_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = capctl_env(
        db_url,
        LOAD_TEST_BASE_URL=base_url,
        LOAD_TEST_SERVICE_KEY=API_KEY,
        LOAD_TEST_RESTAURANT_ID=RESTAURANT_ID,
        LOAD_TEST_DATE=FUTURE_DATE,
    )
    return subprocess.run(
        [sys.executable, "-m", "capctl.cli", "load", "--smoke", "--report-dir", str(report_dir), *extra],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip


def only_report(report_dir: Path) -> dict[str, Any]:
    reports = list(report_dir.glob("*.json"))  # Artillery's raw output is under raw/
    assert len(reports) == 1, reports
    data: dict[str, Any] = json.loads(reports[0].read_text())
    assert reports[0].with_suffix(".html").exists()
    assert (report_dir / "raw" / f"{reports[0].stem}.artillery.json").exists()
    return data


@pytest.fixture(autouse=True)
def need_artillery() -> None:
    if not ARTILLERY.exists():
        pytest.skip("Artillery is not installed: run `make setup` (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)")


def test_smoke_scenario_passes_verification_and_cleans_up(api: str, seeded_db: str, conn: Any, tmp_path: Path) -> None:
    result = run_load(seeded_db, api, tmp_path / "reports", "--days", "2")

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = only_report(tmp_path / "reports")
    assert report["passed"] is True
    v = report["verification"]
    assert v["mode"] == "database"
    assert v["overCapacitySlots"] == []
    assert v["responses201"] > 0
    assert v["bookingsStored"] == v["responses201"]
    assert v["duplicateIdempotencyKeys"] == 0
    counters = report["artillery"]["aggregate"]["counters"]
    # The duplicates phase resent requests with their keys; every replay answered as before.
    assert counters["bookings.replayed"] > 0
    assert counters.get("bookings.replay_mismatch", 0) == 0
    assert report["events"]["booking.success"] == v["bookingsStored"]
    assert report["events"].keys() >= {"booking.retry_exhausted", "booking.overbook_prevented", "booking.conflict"}
    # Contention: the hot slots (20 covers) were asked for far more than they hold.
    hot = {h["time"] for h in v["hotSlots"]}
    hot_slots = [s for s in v["slots"] if s["date"] == FUTURE_DATE and s["time"] in hot]
    assert all(s["confirmedCovers"] <= s["maxCovers"] == 20 for s in hot_slots)
    assert counters["bookings.refused.capacity_exceeded"] > 0
    # Cleanup ran: nothing of the run is left, and the ledger gave every cover back.
    assert report["cleanup"]["bookings"] == v["bookingsStored"]
    left = conn.execute("SELECT count(*) AS n FROM bookings WHERE run_id = %s", (report["runId"],)).fetchone()
    assert left["n"] == 0
    assert conn.execute("SELECT coalesce(sum(booked_covers), 0) AS n FROM slot_usage").fetchone()["n"] == 0
    assert "PASSED" in result.stdout and "report" in result.stdout


def test_a_rejected_service_key_is_a_one_line_error(api: str, seeded_db: str, tmp_path: Path) -> None:
    env_key = "not-the-key"
    result = subprocess.run(
        [sys.executable, "-m", "capctl.cli", "load", "--smoke", "--report-dir", str(tmp_path)],
        env=capctl_env(seeded_db, LOAD_TEST_BASE_URL=api, LOAD_TEST_SERVICE_KEY=env_key,
                       LOAD_TEST_RESTAURANT_ID=RESTAURANT_ID, LOAD_TEST_DATE=FUTURE_DATE),
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr == "capctl: error: the API refused LOAD_TEST_SERVICE_KEY (403 forbidden)\n"
    assert not list(tmp_path.glob("*.json"))


def processes_mentioning(text: str) -> list[str]:
    """Pids of the processes whose command line holds ``text`` (read from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # it exited meanwhile
            continue
    return found


def test_demo_runs_with_faults_on_its_own_database_and_stops_what_it_started(
    seeded_db: str, conn: Any, tmp_path: Path
) -> None:
    """`capctl demo` (its default: db-crash, instance-kill and db-stall) passes on a fresh embedded
    PostgreSQL of its own; the database DATABASE_URL names is left untouched."""
    reports_dir = tmp_path / "reports"
    result = subprocess.run(
        [sys.executable, "-m", "capctl.cli", "demo", "--smoke", "--report-dir", str(reports_dir)],
        env=capctl_env(seeded_db, CAPCTL_HOME=str(tmp_path / "capctl")),
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip

    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    assert "load test PASSED" in out
    assert "== 6/6 delivered alerts" in out
    report = only_report(reports_dir)
    assert report["passed"] is True
    # Every fault was injected, healed, and bookings were answered again after it.
    assert [f["kind"] for f in report["faults"]] == ["db-crash", "instance-kill", "db-stall"]
    assert all(f["endedAt"] and f["recoveredAfterMs"] is not None for f in report["faults"])
    assert report["verification"]["acknowledgedLost"] == 0
    assert report["verification"]["cancellationsLost"] == 0
    # DATABASE_URL's database got nothing: no seed, no booking, no event.
    assert conn.execute("SELECT count(*) AS n FROM restaurants").fetchone()["n"] == 1  # the test seed alone
    assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM observability_events").fetchone()["n"] == 0
    # The demo's own database was stopped and removed; its logs, report and dashboard stay.
    home = re.search(r"fresh embedded PostgreSQL in (\S+) ", out)
    assert home, out
    assert not Path(home[1]).exists()
    assert "stopped the embedded PostgreSQL this demo started" in out
    # ... including the postmaster the db-crash fault started again by itself.
    assert processes_mentioning(home[1]) == [], "a postgres of the demo outlived it"
    logs = Path(re.search(r"^logs:\s+(\S+)$", out, re.MULTILINE)[1])  # type: ignore[index]
    assert logs.parent == reports_dir.resolve()
    assert "POST /bookings 201" in (logs / "serve.log").read_text()
    dashboard = Path(re.search(r"^dashboard: (\S+)$", out, re.MULTILINE)[1])  # type: ignore[index]
    assert dashboard.exists() and "data-chart" in dashboard.read_text()
    # Every server the demo started is stopped: its ports no longer answer.
    urls = re.findall(r"(?:moto server|webhook sink|^  ) ?(http://127\.0\.0\.1:\d+)", out, re.MULTILINE)
    assert len(urls) >= 3, out
    for url in urls:
        host, port = url.removeprefix("http://").split(":")
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
