"""The dashboard in headless Chromium: the --out file and the live --port page draw every chart
from a known database and EMF log, with no console error and no request leaving the page."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capctl import dashboard
from tests.integration.test_dashboard import seed_traffic, write_emf_log

CHARTS = ("success-rate", "utilization", "conflict-rate", "outcomes", "latency", "incidents")


@pytest.fixture
def traffic(seeded_db: str, conn: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    seed_traffic(conn)
    for name in ("CONFLICT_RATE_THRESHOLD", "RETRY_EXHAUSTED_THRESHOLD", "CONFLICT_MIN_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    return seeded_db


def assert_drawn(result: Any) -> None:
    assert result.console_errors == []
    assert result.external_requests == []
    for name in CHARTS:
        assert result.charts.get(name, 0) > 0, f"chart {name} has no data points: {result.charts}"
    # every panel of capctl.panels is on the page, drawn
    assert set(result.charts) == {p.name for p in dashboard.PANELS}
    assert result.screenshot is not None and result.screenshot.stat().st_size > 0


def test_snapshot_file(traffic, tmp_path, open_page):
    out = dashboard.write_snapshot(traffic, tmp_path / "dashboard.html", emf_logs=[write_emf_log(tmp_path / "s.log")])
    result = open_page(out, "dashboard-snapshot")
    assert_drawn(result)
    page = result.page
    assert page.locator("#incidents tr").count() == 1
    assert "conflict_rate" in page.locator("#incidents").inner_text()
    assert page.locator("#top-conflicts tr td").all_inner_texts()[1:] == ["4", "1", "1"]  # requests, conflicts, full
    # the conflict-rate alarm's threshold is drawn on its panel
    thresholds = page.evaluate(
        "JSON.parse(document.getElementById('chart-data').textContent)['conflict-rate'].thresholds"
    )
    assert thresholds[0]["value"] == 5.0


@pytest.fixture
def live_url(traffic: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = write_emf_log(tmp_path / "serve.log")
    server = dashboard.DashboardServer(0, traffic, dashboard.check_logs([log]), dashboard.View(), rollup=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", log
    server.shutdown()
    server.server_close()
    thread.join(5)


def wait_for(page: Any, expression: str, expected: Any) -> bool:
    """Poll ``expression`` (the page's CSP forbids eval, so no wait_for_function) until it is
    ``expected``; bounded by a few refresh periods."""
    for _ in range(dashboard.REFRESH_S * 16):
        if page.evaluate(expression) == expected:
            return True
        page.wait_for_timeout(250)
    return False


def test_live_page_refreshes_from_its_server(live_url, open_page, conn):
    url, log = live_url
    result = open_page(url, "dashboard-live")
    assert_drawn(result)
    page = result.page
    before = page.evaluate("window.capctlCharts.instances.outcomes.data[1].reduce((a, b) => a + (b || 0), 0)")
    assert before == 4
    # a request arrives in the log; the page's next fetch redraws the chart with it
    from tests.integration.test_dashboard import EARLIER, emf_line

    with log.open("a") as handle:
        handle.write(emf_line(EARLIER, BookingRequests=1, BookingSuccess=1, BookingLatency=5.0) + "\n")
    assert wait_for(page, "window.capctlCharts.instances.outcomes.data[1].reduce((a, b) => a + (b || 0), 0)", 5)
    # a control refetches at once, for the selected traffic class
    page.select_option("select[name=traffic]", "synthetic")
    assert wait_for(page, "document.getElementById('meta-traffic').textContent", "synthetic (load tests)")
    assert page.url.endswith("?restaurant=&traffic=synthetic&range=auto")
    assert result.console_errors == [] and result.external_requests == []
