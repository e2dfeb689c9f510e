"""Pages opened in a real browser: Debian's Chromium, driven by Playwright through its
executable path (Playwright's own browser download is never used).

``open_page(path, name)`` loads a local file or a 127.0.0.1 URL, lets its scripts run, and
returns what a person and a test need: console errors, every request that left the page,
the drawn charts (``data-chart`` name → plotted points) and a screenshot kept under
``reports/test-output/screenshots/<name>.png``. Without a browser these tests are skipped, and
the session says so in one line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "reports" / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageResult:
    url: str
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    charts: dict[str, int] = field(default_factory=dict)  # data-chart name -> data-points (-1: not a uPlot chart)
    screenshot: Path | None = None
    page: Any = None  # the live Playwright page, for further questions within the test


def _local(url: str) -> bool:
    return url.startswith(("file:", "data:", "about:", "http://127.0.0.1", "http://localhost"))


# Per module, not per session: Playwright's sync API keeps an event loop running in this thread
# while it is started, and later tests that call asyncio.run() (tests/e2e) must not meet it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium on PATH: browser tests not run (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., PageResult]]:
    contexts: list[Any] = []

    def open_(target: str | Path, name: str, *, width: int = 1400, wait_ms: int = 300) -> PageResult:
        url = target if isinstance(target, str) else target.resolve().as_uri()
        context = browser.new_context(viewport={"width": width, "height": 900})
        contexts.append(context)
        page = context.new_page()
        result = PageResult(url=url, page=page)
        page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: result.console_errors.append(str(e)))
        page.on("request", lambda r: None if _local(r.url) else result.external_requests.append(r.url))
        page.goto(url)
        page.wait_for_load_state("load")
        page.wait_for_timeout(wait_ms)
        result.charts = page.eval_on_selector_all(
            "[data-chart]",
            "els => Object.fromEntries(els.map(e => [e.dataset.chart, Number(e.dataset.points ?? -1)]))",
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        result.screenshot = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(result.screenshot), full_page=True)
        return result

    yield open_
    for context in contexts:
        context.close()
