"""HTML pages of the local tooling (the load-test report, the dashboard): Jinja2 templates with
autoescaping, and uPlot embedded in the page so a saved page opens offline and makes no network
request.

uPlot is the charting library k6's own web dashboard uses: ~50 kB, canvas-based, zoom by drag.
It is pinned in package.json and read from ``node_modules`` (``make setup`` installs it beside
Artillery). Templates live in ``capctl/templates``; ``charts.js`` there turns the JSON that a
page embeds into uPlot charts, so each page ships data, not drawing code.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from capctl.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
UPLOT_DIR = Path(os.environ.get("CAPCTL_UPLOT_DIR", ROOT / "node_modules" / "uplot" / "dist"))


@cache
def _asset(name: str) -> str:
    path = UPLOT_DIR / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run `make setup` (npm ci installs uPlot)") from None


def uplot_js() -> Markup:
    """uPlot's script, to inline in a <script> element."""
    return Markup(_asset("uPlot.iife.min.js"))  # noqa: S704 - a pinned library file, not user input


def uplot_css() -> Markup:
    return Markup(_asset("uPlot.min.css"))  # noqa: S704 - a pinned library file, not user input


def json_script(value: Any) -> Markup:
    """``value`` as JSON safe inside <script type="application/json"> (no ``</`` can close it)."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # noqa: S704 - escaped above


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("capctl", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(uplot_js=uplot_js, uplot_css=uplot_css)
    env.filters["json_script"] = json_script
    return env


def render(template: str, **context: Any) -> str:
    """Render ``capctl/templates/<template>`` with ``context``; values are autoescaped."""
    return environment().get_template(template).render(**context)
