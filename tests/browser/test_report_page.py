"""The load-test report opened in Chromium: it draws every chart from the data in the page,
with no console error and no request leaving the page, and its tooltips answer the mouse."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.unit.test_report import write_with_history

UPLOT_CHARTS = (
    "latency",
    "latency-histogram",
    "throughput",
    "vusers",
    "statuses",
    "conflict-rate",
    "capacity-slots",
    "trend",
)


def test_report_page_draws_every_chart_offline(open_page: Callable[..., Any], tmp_path: Path) -> None:
    html_path = write_with_history(tmp_path / "load-tests")

    result = open_page(html_path, "load-test-report")

    assert result.console_errors == []
    assert result.external_requests == []
    for name in UPLOT_CHARTS:
        assert result.charts.get(name, 0) > 0, f"{name} has no data points: {result.charts}"
    assert result.charts["capacity-heatmap"] == 96  # one cell per reconciled slot
    # uPlot drew a canvas for each chart, and the checks come before any chart.
    canvases = result.page.eval_on_selector_all("[data-chart] canvas", "els => els.length")
    assert canvases == len(UPLOT_CHARTS)
    assert result.page.eval_on_selector("h2", "e => e.textContent") == "Checks"
    assert result.screenshot is not None and result.screenshot.stat().st_size > 0


def test_latency_tooltip_names_the_endpoints_under_the_cursor(open_page: Callable[..., Any], tmp_path: Path) -> None:
    html_path = write_with_history(tmp_path / "load-tests")
    result = open_page(html_path, "load-test-report-tooltip")
    page = result.page

    chart = page.locator('[data-chart="latency"] .u-over')
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tooltip = page.locator('[data-chart="latency"] .chart-tooltip')

    tooltip.wait_for(state="visible")
    text = tooltip.inner_text()
    assert "booking p95:" in text and "all requests p99:" in text
    assert text.splitlines()[0].endswith("UTC")  # the report's times are UTC, whatever the viewer's zone
    page.screenshot(path=str(result.screenshot.with_name("load-test-report-tooltip.png")), full_page=False)


def test_zoom_by_drag_narrows_the_latency_chart(open_page: Callable[..., Any], tmp_path: Path) -> None:
    result = open_page(write_with_history(tmp_path / "load-tests"), "load-test-report-zoom")
    page = result.page
    before = page.evaluate("() => { const s = window.capctlCharts.instances.latency.scales.x; return s.max - s.min; }")

    chart = page.locator('[data-chart="latency"] .u-over')
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()

    after = page.evaluate("() => { const s = window.capctlCharts.instances.latency.scales.x; return s.max - s.min; }")
    assert 0 < after < before / 2
