"""`capctl dashboard`: the CloudWatch dashboard's panels (``capctl.panels``), for the local stack.

Its data is what CloudWatch would receive: the EMF records the functions print (``capctl serve``
writes them to its stderr; name that log with ``--emf-log``) and the roll-up tables, the current
partial hour included (the roll-up is run first, as the scheduled function would). Without an EMF
log the booking panels count ``observability_events`` with ``capacity.figures``, the definition
the roll-up and the alert check use. Incidents come from ``alert_state``.

``--out FILE`` writes one self-contained HTML file; ``--port N`` serves the page on 127.0.0.1 and
the page redraws from ``/data.json`` every few seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

from capacity import figures
from capacity.camel_json import iso_seconds
from capacity.db import DictConnection
from capacity.figures import COUNTERS_SQL, SYNTHETIC_SQL, percent_text
from capacity.outcomes import MetricName
from capacity.rollup import LIVE_TABLE, SYNTHETIC_TABLE, run_rollup
from capacity.scheduled_settings import AlertSettings
from capacity.settings import SettingsError
from capctl import database, pages
from capctl.errors import UserError
from capctl.panels import PANELS, TABLES, Metric, Panel, Source, Threshold
from capctl.text import plural

HOST = "127.0.0.1"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
REFRESH_S = 5
DEFAULT_LOOKBACK = dt.timedelta(hours=12)  # the CloudWatch dashboard's "start": "-PT12H"
MAX_LOOKBACK = dt.timedelta(days=31)  # the roll-up's longest window
MIN_RANGE = dt.timedelta(minutes=2)
MAX_POINTS = 180  # per chart: the step grows with the time range
STEPS = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
ROLLUP_EVERY_S = 15  # live mode re-runs the roll-up at most this often
RANGE_CHOICES = ("auto", "15m", "1h", "3h", "12h", "24h", "7d")

# Booking-path metrics that observability_events can stand in for when there is no EMF log:
# metric -> counters of capacity.figures.COUNTERS_SQL whose sum it is.
EVENT_METRICS: dict[MetricName, tuple[str, ...]] = {
    MetricName.BOOKING_REQUESTS: ("requests",),
    MetricName.BOOKING_SUCCESS: ("successes",),
    MetricName.CAPACITY_EXCEEDED: ("capacity_exceeded",),
    MetricName.SLOT_CLOSED: ("slot_closed",),
    MetricName.RETRY_EXHAUSTED: ("retry_exhausted",),
    MetricName.OVERBOOK_PREVENTED: ("overbook_prevented",),
    # the handler counts every retried failure and every lost race
    MetricName.CONFLICTS: ("retried_failures", "overbook_prevented"),
    MetricName.CONFLICTED_REQUESTS: ("conflicts",),
    MetricName.BOOKING_CANCELLED: ("cancellations",),
}
# Metrics only create_booking emits: their records carry the traffic class and the restaurant.
BOOKING_METRICS = frozenset(EVENT_METRICS) | {
    MetricName.IDEMPOTENT_REPLAYS,
    MetricName.SERVICE_UNAVAILABLE,
    MetricName.BOOKING_LATENCY,
    MetricName.SLOT_UTILIZATION,
}
SYNTHETIC_ENVIRONMENT_SUFFIX = "-load-test"  # create_booking's environment dimension for load tests


# ---------------------------------------------------------------- what to show


@dataclass(frozen=True, slots=True)
class View:
    synthetic: bool | None = None  # None: whichever class has data in the range, live first
    restaurant_id: uuid.UUID | None = None
    since: dt.datetime | None = None  # None: from the first datum of the last 12 hours


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 instant (UTC when it has no offset)."""
    moment = now or dt.datetime.now(dt.UTC)
    match = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if match:
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        if seconds > MAX_LOOKBACK.total_seconds():  # said before any date arithmetic can overflow
            raise UserError(f"--since: at most {MAX_LOOKBACK.days} days back")
        since = moment - dt.timedelta(seconds=seconds)
    else:
        try:
            since = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise UserError(f"--since: not a duration (30m, 2h, 1d) or an ISO 8601 time: {value!r}") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    if since >= moment:
        raise UserError(f"--since: {value!r} is not in the past")
    if moment - since > MAX_LOOKBACK:
        raise UserError(f"--since: at most {MAX_LOOKBACK.days} days back")
    return since


def parse_restaurant(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise UserError(f"--restaurant: not a restaurant id (UUID): {value!r}") from None


# ---------------------------------------------------------------- EMF records


@dataclass(frozen=True, slots=True)
class EmfRecord:
    at: float  # epoch seconds
    environment: str
    restaurant_id: str | None
    values: dict[MetricName, tuple[float, ...]]

    @property
    def booking(self) -> bool:
        return any(m in BOOKING_METRICS for m in self.values)

    @property
    def synthetic(self) -> bool:
        return self.environment.endswith(SYNTHETIC_ENVIRONMENT_SUFFIX)


_KNOWN_METRICS = {m.value: m for m in MetricName}


_DECODER = json.JSONDecoder()
_EMF_START = '{"_aws"'


def parse_emf_line(line: str) -> list[EmfRecord]:
    """The EMF records of one log line: none for other log lines, and several when instances
    writing to one log at once put two records on a line; a record cut short is skipped."""
    records = []
    start = line.find(_EMF_START)
    while start >= 0:
        try:
            blob, end = _DECODER.raw_decode(line, start)
        except ValueError:
            end = start + 1
        else:
            record = _emf_record(blob)
            if record is not None:
                records.append(record)
        start = line.find(_EMF_START, end)
    return records


def _emf_record(blob: Any) -> EmfRecord | None:
    try:
        directives = blob["_aws"]["CloudWatchMetrics"]
        at = float(blob["_aws"]["Timestamp"]) / 1000
    except (ValueError, KeyError, TypeError):
        return None
    values: dict[MetricName, tuple[float, ...]] = {}
    for directive in directives if isinstance(directives, list) else ():
        for metric in directive.get("Metrics", ()) if isinstance(directive, dict) else ():
            name = _KNOWN_METRICS.get(metric.get("Name", "") if isinstance(metric, dict) else "")
            raw = blob.get(name.value) if name else None
            if name is None or raw is None:
                continue
            items = raw if isinstance(raw, list) else [raw]
            numbers = tuple(float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool))
            if numbers:
                values[name] = numbers
    if not values:
        return None
    restaurant = blob.get("restaurantId")
    return EmfRecord(
        at=at,
        environment=str(blob.get("environment", "")),
        restaurant_id=str(restaurant) if restaurant else None,
        values=values,
    )


@dataclass
class EmfLog:
    """A log file read incrementally: a live dashboard reads only what was appended."""

    path: Path
    offset: int = 0
    records: list[EmfRecord] = field(default_factory=list)

    def read(self) -> list[EmfRecord]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"--emf-log: no such file: {self.path}") from None
        if size < self.offset:  # truncated or replaced: start again
            self.offset, self.records = 0, []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(size - self.offset)
        complete = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += complete
        for raw in chunk[:complete].splitlines():
            self.records.extend(parse_emf_line(raw.decode("utf-8", errors="replace")))
        return self.records


def check_logs(paths: Iterable[Path]) -> list[EmfLog]:
    logs = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"--emf-log: no such file: {path}")
        logs.append(EmfLog(Path(path)))
    return logs


# ---------------------------------------------------------------- reading the database

_EVENT_COUNTERS = f"""
SELECT date_bin(make_interval(secs => %(step)s), e.occurred_at, %(origin)s) AS bucket,
       {SYNTHETIC_SQL} AS synthetic, {COUNTERS_SQL}
  FROM observability_events e
 WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
   AND (%(restaurant)s::uuid IS NULL OR e.restaurant_id = %(restaurant)s::uuid)
 GROUP BY 1, 2
"""  # noqa: S608 - capacity.figures' constants, no input

_RESTAURANT_COUNTERS = f"""
SELECT e.restaurant_id, {COUNTERS_SQL}
  FROM observability_events e
 WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s AND {SYNTHETIC_SQL} = %(synthetic)s
   AND (%(restaurant)s::uuid IS NULL OR e.restaurant_id = %(restaurant)s::uuid)
 GROUP BY 1
"""  # noqa: S608 - capacity.figures' constants, no input
TOP_CONFLICTS = 10  # as the CloudWatch widget's query: "| sort conflicts desc | limit 10"

_FIRST_DATUM = """
SELECT least(
         (SELECT min(occurred_at) FROM observability_events
           WHERE occurred_at >= %(start)s
             AND (%(restaurant)s::uuid IS NULL OR restaurant_id = %(restaurant)s::uuid)),
         (SELECT min(opened_at) FROM alert_state
           WHERE opened_at >= %(start)s
             AND (%(restaurant)s::uuid IS NULL OR restaurant_id = %(restaurant)s::uuid))) AS first
"""

_ROLLUP_HOURS = """
SELECT hour, count(*)::int AS rows, sum(requests)::int AS requests, sum(successes)::int AS successes,
       sum(conflicts)::int AS conflicts, sum(retry_exhausted)::int AS retry_exhausted,
       sum(covers_booked)::int AS covers_booked, sum(capacity_covers)::int AS capacity_covers,
       max(utilization)::float AS max_utilization
  FROM {table}
 WHERE hour >= %(start)s AND hour < %(end)s
   AND (%(restaurant)s::uuid IS NULL OR restaurant_id = %(restaurant)s::uuid)
 GROUP BY hour ORDER BY hour
"""

_INCIDENTS = """
SELECT a.id, a.kind, a.severity, a.status, a.incident_key, a.restaurant_id, r.name AS restaurant,
       a.opened_at, a.last_seen_at, a.resolved_at, a.figures
  FROM alert_state a JOIN restaurants r ON r.id = a.restaurant_id
 WHERE (a.status = 'open' OR a.resolved_at >= %(start)s) AND a.opened_at < %(end)s
   AND (%(restaurant)s::uuid IS NULL OR a.restaurant_id = %(restaurant)s::uuid)
 ORDER BY a.opened_at DESC
"""

_DELIVERY_FAILURES = """
SELECT d.last_attempt_at AS at FROM alert_deliveries d JOIN alert_state a ON a.id = d.alert_id
 WHERE d.status IN ('failed', 'expired') AND d.last_attempt_at >= %(start)s AND d.last_attempt_at < %(end)s
   AND (%(restaurant)s::uuid IS NULL OR a.restaurant_id = %(restaurant)s::uuid)
"""

_RESTAURANTS = "SELECT id, name FROM restaurants ORDER BY name, id"


def restaurants(conn: DictConnection) -> list[dict[str, str]]:
    return [{"id": str(r["id"]), "name": r["name"]} for r in conn.execute(_RESTAURANTS)]


# ---------------------------------------------------------------- statistics

Samples = dict[MetricName, list[tuple[float, float]]]  # metric -> (epoch seconds, value)


def statistic(values: Sequence[float], stat: str) -> float | None:
    """CloudWatch's statistic of one period's values (percentiles: nearest rank)."""
    if not values:
        return 0.0 if stat == "Sum" else None
    if stat == "Sum":
        return float(sum(values))
    if stat == "Average":
        return sum(values) / len(values)
    if stat == "Maximum":
        return max(values)
    if stat.startswith("p"):
        ordered = sorted(values)
        rank = math.ceil(float(stat[1:]) / 100 * len(ordered))
        return ordered[max(rank, 1) - 1]
    raise ValueError(f"unknown statistic {stat}")


@dataclass(frozen=True, slots=True)
class Grid:
    start: float  # epoch seconds, a multiple of step
    step: int
    count: int

    @property
    def x(self) -> list[float]:
        return [self.start + i * self.step for i in range(self.count)]

    def index(self, at: float) -> int | None:
        i = int((at - self.start) // self.step)
        return i if 0 <= i < self.count else None

    @classmethod
    def over(cls, start: dt.datetime, end: dt.datetime) -> Grid:
        span = max((end - start).total_seconds(), 1)
        step = next((s for s in STEPS if span / s <= MAX_POINTS), STEPS[-1])
        first = math.floor(start.timestamp() / step) * step
        return cls(start=first, step=step, count=max(math.ceil((end.timestamp() - first) / step), 1))


def per_step(grid: Grid, samples: list[tuple[float, float]]) -> list[list[float]]:
    buckets: list[list[float]] = [[] for _ in range(grid.count)]
    for at, value in samples:
        i = grid.index(at)
        if i is not None:
            buckets[i].append(value)
    return buckets


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def step_label(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


# ---------------------------------------------------------------- the data of one page


@dataclass
class Collected:
    """Everything one rendering needs, read from the database and the EMF logs."""

    now: dt.datetime
    start: dt.datetime
    grid: Grid
    synthetic: bool
    restaurant: dict[str, str] | None
    samples: Samples
    emf_records: int  # booking records of the view in the EMF logs
    emf_files: int
    by_restaurant: dict[str, list[int]]  # restaurant id -> [requests, conflicts, full]
    rollup_hours: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    delivery_failures: list[float]
    thresholds: dict[str, float]  # Threshold.alarm -> value
    conflict_min_requests: int
    restaurants: list[dict[str, str]]
    rolled_up: bool


def alert_thresholds() -> tuple[dict[str, float], int]:
    """The alarms' thresholds as check_alerts runs them here (its settings; else the defaults
    the template's parameters share, which tests/unit/test_panels.py holds equal)."""
    # Only the alarm settings: another variable of the alert check (a webhook URL, say) is not
    # the dashboard's business.
    names = {t.setting for p in PANELS for t in p.thresholds if t.setting} | {"conflict_min_requests"}
    aliases = {AlertSettings.model_fields[n].alias or n for n in names}
    try:
        settings = AlertSettings.from_env({k: v for k, v in os.environ.items() if k in aliases})
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    values: dict[str, float] = {}
    for panel in PANELS:
        for t in panel.thresholds:
            values[t.alarm] = float(getattr(settings, t.setting)) if t.setting else float(t.value or 0)
    return values, settings.conflict_min_requests


def collect(
    conn: DictConnection,
    view: View,
    logs: Sequence[EmfLog],
    *,
    now: dt.datetime | None = None,
    rollup: bool = True,
) -> Collected:
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    known = restaurants(conn)
    restaurant = None
    if view.restaurant_id is not None:
        restaurant = next((r for r in known if r["id"] == str(view.restaurant_id)), None)
        if restaurant is None:
            raise UserError(f"no restaurant {view.restaurant_id} in the database")
    rid = restaurant["id"] if restaurant else None
    records = [r for log in logs for r in log.read()]
    booking_records = [r for r in records if r.booking and (rid is None or r.restaurant_id == rid)]

    start = view.since or _first_datum(conn, moment - DEFAULT_LOOKBACK, rid, booking_records, moment)
    rolled_up = rollup and _rollup(conn, start, moment)
    end = moment + dt.timedelta(seconds=1)
    grid = Grid.over(start, end)
    window = {"start": dt.datetime.fromtimestamp(grid.start, dt.UTC), "end": end, "restaurant": rid}

    counters = conn.execute(
        _EVENT_COUNTERS, {**window, "step": grid.step, "origin": dt.datetime.fromtimestamp(0, dt.UTC)}
    ).fetchall()
    synthetic = view.synthetic
    if synthetic is None:
        live = sum(r["requests"] for r in counters if not r["synthetic"]) + sum(
            1 for r in booking_records if not r.synthetic and grid.index(r.at) is not None
        )
        synth = sum(r["requests"] for r in counters if r["synthetic"]) + sum(
            1 for r in booking_records if r.synthetic and grid.index(r.at) is not None
        )
        synthetic = live == 0 and synth > 0

    samples: Samples = defaultdict(list)
    in_view = [r for r in booking_records if r.synthetic == synthetic and grid.index(r.at) is not None]
    if in_view:
        for record in in_view:
            for name, values in record.values.items():
                samples[name].extend((record.at, v) for v in values)
    else:  # no EMF log (or none of this view): the events stand in for the counts
        for row in counters:
            if row["synthetic"] != synthetic:
                continue
            at = row["bucket"].timestamp()
            for name, columns in EVENT_METRICS.items():
                samples[name].append((at, float(sum(row[c] for c in columns))))
    # The "restaurants with the most conflicts" table: requests, conflicts, full per restaurant.
    by_restaurant: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    if in_view:
        for record in in_view:
            totals = by_restaurant[record.restaurant_id or "-"]
            for i, name in enumerate((MetricName.BOOKING_REQUESTS, MetricName.CONFLICTS, MetricName.CAPACITY_EXCEEDED)):
                totals[i] += int(sum(record.values.get(name, ())))
    else:
        for r in conn.execute(_RESTAURANT_COUNTERS, {**window, "synthetic": synthetic}):
            by_restaurant[str(r["restaurant_id"])] = [
                r["requests"],
                sum(r[c] for c in EVENT_METRICS[MetricName.CONFLICTS]),
                r["capacity_exceeded"],
            ]
    # Reconciliation's findings are about slots, whatever traffic booked them.
    for row in counters:
        samples[MetricName.OVERBOOK_DETECTED].append((row["bucket"].timestamp(), float(row["overbook_detected"])))

    table = SYNTHETIC_TABLE if synthetic else LIVE_TABLE
    hour_start = dt.datetime.fromtimestamp(math.floor(grid.start / 3600) * 3600, dt.UTC)
    rollup_hours = conn.execute(_ROLLUP_HOURS.format(table=table), {**window, "start": hour_start}).fetchall()
    incidents = conn.execute(_INCIDENTS, window).fetchall()
    failures = [r["at"].timestamp() for r in conn.execute(_DELIVERY_FAILURES, window)]
    thresholds, min_requests = alert_thresholds()
    return Collected(
        now=moment,
        start=start,
        grid=grid,
        synthetic=synthetic,
        restaurant=restaurant,
        samples=dict(samples),
        emf_records=len(in_view),
        emf_files=len(logs),
        by_restaurant=dict(by_restaurant),
        rollup_hours=rollup_hours,
        incidents=incidents,
        delivery_failures=failures,
        thresholds=thresholds,
        conflict_min_requests=min_requests,
        restaurants=known,
        rolled_up=rolled_up,
    )


def _rollup(conn: DictConnection, start: dt.datetime, moment: dt.datetime) -> bool:
    """Re-aggregate the range first (locally no schedule runs the roll-up); False when this login
    may not write the roll-up tables — an operator's: the scheduled roll-up keeps them current."""
    hours = max(1, math.ceil((moment - start).total_seconds() / 3600))
    try:
        run_rollup(conn, hours=min(hours, int(MAX_LOOKBACK.total_seconds() // 3600)), now=moment)
    except psycopg.errors.InsufficientPrivilege:
        print("capctl: note: this login may not run the roll-up; the tables are shown as the schedule left them",
              file=sys.stderr)  # fmt: skip
        return False
    return True


def _first_datum(
    conn: DictConnection, since: dt.datetime, rid: str | None, records: list[EmfRecord], now: dt.datetime
) -> dt.datetime:
    """Where the default range starts: a little before the first datum of the last 12 hours."""
    row = conn.execute(_FIRST_DATUM, {"start": since, "restaurant": rid}).fetchone()
    candidates = [row["first"]] if row and row["first"] else []
    candidates += [dt.datetime.fromtimestamp(r.at, dt.UTC) for r in records if r.at >= since.timestamp()]
    if not candidates:
        return now - dt.timedelta(hours=1)
    first: dt.datetime = min(candidates)
    # A margin before the first datum, and at least MIN_RANGE, so a short run fills the charts.
    margin = max((now - first) / 10, dt.timedelta(seconds=15))
    return max(since, min(first - margin, now - MIN_RANGE))


# ---------------------------------------------------------------- charts


def _threshold_spec(t: Threshold, values: dict[str, float]) -> dict[str, Any]:
    value = values[t.alarm] * t.scale
    shown = f"{value:g}"
    return {
        "label": t.label.format(value=shown),
        "value": value,
        "color": "#c92a2a",
        "scale": "y2" if t.right_axis else "y",
    }


def _metric_series(panel: Panel, metric: Metric, data: Collected, buckets: list[list[float]]) -> dict[str, Any]:
    stat = panel.metric_stat(metric)
    return {
        "label": metric.shown_label,
        "values": [rounded(statistic(b, stat)) for b in buckets],
        "scale": "y2" if metric.right_axis else "y",
    }


def _hourly(data: Collected) -> dict[float, dict[str, Any]]:
    return {r["hour"].timestamp(): r for r in data.rollup_hours}


def _on_grid(data: Collected, value_of: Any) -> list[float | None]:
    """An hourly roll-up figure drawn across the steps of its hour."""
    hours = _hourly(data)
    out = []
    for x in data.grid.x:
        row = hours.get(math.floor(x / 3600) * 3600)
        out.append(rounded(value_of(row)) if row else None)
    return out


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def panel_chart(panel: Panel, data: Collected) -> dict[str, Any]:
    grid = data.grid
    step = step_label(grid.step)
    spec: dict[str, Any] = {
        "title": _title(panel, data),
        "kind": "time",
        "x": grid.x,
        "series": [],
        "yUnit": panel.unit,
        "y2Unit": panel.right_unit,
        "thresholds": [_threshold_spec(t, data.thresholds) for t in panel.thresholds],
    }
    if panel.y_min is not None:
        spec["yMin"] = panel.y_min
    if panel.y_max is not None:
        spec["yMax"] = panel.y_max
    buckets = {m.name: per_step(grid, data.samples.get(m.name, [])) for m in panel.metrics}
    series: list[dict[str, Any]] = spec["series"]

    if panel.source is Source.ROLLUP:
        return _rollup_chart(panel, data, spec)
    if panel.source is Source.ALERTS:
        return _incident_chart(panel, data, spec)

    ids = {m.id: m for m in panel.metrics if m.id}
    for metric in panel.metrics:
        if metric.name in (MetricName.ROLLUP_UTILIZATION,):
            continue
        if metric.visible:
            series.append(_metric_series(panel, metric, data, buckets[metric.name]))
    for e in panel.expressions:
        numerator, denominator = buckets[ids[e.numerator].name], buckets[ids[e.denominator].name]
        values = []
        for n, d in zip(numerator, denominator, strict=True):
            figure = e.figure(int(sum(n)), int(sum(d)))
            values.append(rounded(None if figure is None else e.scale * figure))
        series.append({"label": f"{e.label} (per {step})", "values": values})

    if panel.name == "success-rate":
        series.append(
            {
                "label": "hour's success rate % (roll-up)",
                "values": _on_grid(data, lambda r: _percent(figures.success_rate(r["successes"], r["requests"]))),
                "color": "#495057",
            }
        )
    elif panel.name == "conflict-rate":
        series.append(
            {
                "label": "hour's conflict rate % (roll-up)",
                "values": _on_grid(data, lambda r: _percent(figures.conflict_rate(r["conflicts"], r["requests"]))),
                "color": "#495057",
            }
        )
    elif panel.name == "utilization":
        series.append(
            {
                "label": "hourly roll-up utilization (all restaurants)",
                "values": _on_grid(
                    data, lambda r: _percent(figures.utilization(r["covers_booked"], r["capacity_covers"]))
                ),
            }
        )
        series.append(
            {
                "label": "hourly roll-up utilization (max restaurant)",
                "values": _on_grid(data, lambda r: _percent(r["max_utilization"])),
            }
        )
    elif panel.name == "retries":
        # What the fleet-wide alarm compares with its threshold: the sum of the last 15 minutes.
        per = buckets[MetricName.RETRY_EXHAUSTED]
        width = max(1, 900 // grid.step)
        sums = [float(sum(sum(b) for b in per[max(0, i - width + 1) : i + 1])) for i in range(len(per))]
        series.append({"label": "retry exhausted, last 15 min", "values": sums, "color": "#c92a2a"})
    return spec


def _title(panel: Panel, data: Collected) -> str:
    values = {
        "ConflictRateThreshold": f"{data.thresholds.get('ConflictRateAlarm', 0):g}",
        "ConflictMinRequests": str(data.conflict_min_requests),
    }
    title = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m[1], m[0]), panel.title)
    if panel.source in (Source.BOOKING, Source.EVENTS, Source.ALERTS):
        title += f" · per {step_label(data.grid.step)}"
    return title


def _rollup_chart(panel: Panel, data: Collected, spec: dict[str, Any]) -> dict[str, Any]:
    hours = data.rollup_hours
    # One bar per hour, labelled: a time axis around one or two points spans years.
    spec["kind"] = "category"
    spec["x"] = list(range(len(hours)))
    spec["xLabels"] = [f"{r['hour'].astimezone(dt.UTC):%m-%d %H:00} UTC" for r in hours]
    current = data.now.replace(minute=0, second=0, microsecond=0)
    partial = bool(hours) and hours[-1]["hour"] == current
    spec["title"] = panel.title + (" (the last hour is partial)" if partial else "")
    labels = {m.name: m.shown_label for m in panel.metrics}
    spec["series"] = [
        {
            "label": labels[MetricName.ROLLUP_REQUESTS],
            "values": [r["requests"] for r in hours],
            "style": "bars",
        },
        {"label": labels[MetricName.ROLLUP_ROWS], "values": [r["rows"] for r in hours], "style": "bars"},
        {
            "label": labels[MetricName.ROLLUP_SUCCESS_RATE],
            "values": [rounded(_percent(figures.success_rate(r["successes"], r["requests"]))) for r in hours],
            "scale": "y2",
        },
        {
            "label": labels[MetricName.ROLLUP_CONFLICT_RATE],
            "values": [rounded(_percent(figures.conflict_rate(r["conflicts"], r["requests"]))) for r in hours],
            "scale": "y2",
        },
    ]
    return spec


def _incident_chart(panel: Panel, data: Collected, spec: dict[str, Any]) -> dict[str, Any]:
    grid = data.grid
    opened = [(i["opened_at"].timestamp(), 1.0) for i in data.incidents]
    resolved = [(i["resolved_at"].timestamp(), 1.0) for i in data.incidents if i["resolved_at"] is not None]
    failures = [(at, 1.0) for at in data.delivery_failures]
    by_metric = {
        MetricName.ALERTS_OPENED: opened,
        MetricName.ALERTS_RESOLVED: resolved,
        MetricName.ALERT_DELIVERY_FAILURES: failures,
    }
    open_now = []
    for x in grid.x:
        end = x + grid.step
        open_now.append(
            sum(
                1
                for i in data.incidents
                if i["opened_at"].timestamp() < end
                and (i["resolved_at"] is None or i["resolved_at"].timestamp() >= end)
            )
        )
    spec["series"] = [
        {"label": "open incidents", "values": open_now, "color": "#c92a2a", "style": "area"},
        *(
            {**_metric_series(panel, m, data, per_step(grid, by_metric[m.name])), "style": "bars"}
            for m in panel.metrics
        ),
    ]
    return spec


# ---------------------------------------------------------------- the page's data


def _range_totals(data: Collected) -> dict[str, Any]:
    def total(name: MetricName) -> int:
        return int(sum(v for at, v in data.samples.get(name, []) if data.grid.index(at) is not None))

    requests = total(MetricName.BOOKING_REQUESTS)
    latencies = [v for _, v in data.samples.get(MetricName.BOOKING_LATENCY, [])]
    return {
        "requests": requests,
        "successRate": figures.success_rate(total(MetricName.BOOKING_SUCCESS), requests),
        "conflictRate": figures.conflict_rate(total(MetricName.CONFLICTED_REQUESTS), requests),
        "retryExhausted": total(MetricName.RETRY_EXHAUSTED),
        "overbookDetected": total(MetricName.OVERBOOK_DETECTED),
        "latencyP99": statistic(latencies, "p99") if latencies else None,
    }


def _hour_json(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "hour": iso_seconds(row["hour"]),
        "requests": row["requests"],
        "successRate": rounded(figures.success_rate(row["successes"], row["requests"]), 4),
        "conflictRate": rounded(figures.conflict_rate(row["conflicts"], row["requests"]), 4),
        "utilization": rounded(figures.utilization(row["covers_booked"], row["capacity_covers"]), 4),
    }


def summary_cards(data: Collected) -> list[dict[str, str]]:
    """The figures at the top of the page: label, value, tone (ok | warn | bad | ''), note."""
    t = _range_totals(data)
    threshold = data.thresholds.get("ConflictRateAlarm", 1.0)
    current = data.now.replace(minute=0, second=0, microsecond=0)
    hours = {r["hour"]: r for r in data.rollup_hours}
    this_hour = _hour_json(hours.get(current))
    open_incidents = [i for i in data.incidents if i["status"] == "open"]
    critical = any(i["severity"] == "critical" for i in open_incidents)
    conflict = t["conflictRate"]
    return [
        {"label": "booking requests", "value": str(t["requests"]), "tone": "", "note": "in the range shown"},
        {
            "label": "success rate",
            "value": percent_text(t["successRate"]),
            "tone": "",
            "note": "successes / requests (refusals of full slots are not failures of the engine)",
        },
        {
            "label": "conflict rate",
            "value": percent_text(conflict),
            "tone": "bad" if conflict is not None and conflict > threshold else "ok" if conflict is not None else "",
            "note": f"alarm above {100 * threshold:g}% per hour",
        },
        {
            "label": "this hour (roll-up, partial)",
            "value": f"{this_hour['requests']} requests" if this_hour else "no traffic",
            "tone": "",
            "note": (
                f"success {percent_text(this_hour['successRate'])}, conflicts {percent_text(this_hour['conflictRate'])}"
                if this_hour
                else f"since {current:%H:%M} UTC"
            ),
        },
        {
            "label": "latency p99",
            "value": f"{t['latencyP99']:.0f} ms" if t["latencyP99"] is not None else "-",
            "tone": "",
            "note": "from the EMF records" if data.emf_records else "needs --emf-log",
        },
        {
            "label": "overbooking detected",
            "value": str(t["overbookDetected"]),
            "tone": "bad" if t["overbookDetected"] else "ok",
            "note": "must stay 0",
        },
        {
            "label": "open incidents",
            "value": str(len(open_incidents)),
            "tone": "bad" if critical else "warn" if open_incidents else "ok",
            "note": "alert_state, status open",
        },
    ]


def incident_rows(data: Collected) -> list[dict[str, str]]:
    return [
        {
            "kind": i["kind"],
            "severity": i["severity"],
            "restaurant": f"{i['restaurant']} ({i['restaurant_id']})",
            "incident": i["incident_key"] or "-",
            "opened": iso_seconds(i["opened_at"]),
            "lastSeen": iso_seconds(i["last_seen_at"]),
            "figures": json.dumps(i["figures"], sort_keys=True, separators=(", ", ": ")),
        }
        for i in data.incidents
        if i["status"] == "open"
    ]


def top_conflicts(data: Collected) -> list[dict[str, Any]]:
    names = {r["id"]: r["name"] for r in data.restaurants}
    ranked = sorted(data.by_restaurant.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
    return [
        {
            "restaurant": f"{names[rid]} ({rid})" if rid in names else rid,
            "requests": requests,
            "conflicts": conflicts,
            "full": full,
        }
        for rid, (requests, conflicts, full) in ranked[:TOP_CONFLICTS]
        if requests
    ]


def page_data(data: Collected) -> dict[str, Any]:
    """What the page shows, as JSON: the live page's /data.json, embedded in the --out file."""
    charts = {p.name: panel_chart(p, data) for p in PANELS}
    notes = {p.name: p.local_note for p in PANELS}
    if data.emf_records:
        source = f"{data.emf_records} EMF records from {plural(data.emf_files, 'log file')}"
    elif data.emf_files:
        source = (
            f"no EMF records of this view in {plural(data.emf_files, 'log file')}: counted from observability_events"
        )
    else:
        source = "no EMF log given (--emf-log): counted from observability_events; latency needs the EMF records"
    hours = {r["hour"]: r for r in data.rollup_hours}
    current = data.now.replace(minute=0, second=0, microsecond=0)
    return {
        "charts": charts,
        "notes": notes,
        "summary": summary_cards(data),
        "incidents": incident_rows(data),
        "topConflicts": top_conflicts(data),
        "meta": {
            "generatedAt": iso_seconds(data.now),
            "from": iso_seconds(dt.datetime.fromtimestamp(data.grid.start, dt.UTC)),
            "step": step_label(data.grid.step),
            "traffic": "synthetic (load tests)" if data.synthetic else "live",
            "synthetic": data.synthetic,
            "restaurant": data.restaurant["name"] if data.restaurant else "all restaurants",
            "restaurantId": data.restaurant["id"] if data.restaurant else "",
            "bookingSource": source,
            "rollupTable": SYNTHETIC_TABLE if data.synthetic else LIVE_TABLE,
            "currentHour": _hour_json(hours.get(current)),
            "lastCompleteHour": _hour_json(hours.get(current - dt.timedelta(hours=1))),
        },
    }


def render_page(
    data: dict[str, Any], *, live: bool, restaurants_list: list[dict[str, str]], query: dict[str, str]
) -> str:
    return pages.render(
        "dashboard.html.j2",
        charts=data["charts"],
        data=data,
        panels=PANELS,
        tables={t.name: t for t in TABLES},
        live=live,
        refresh_s=REFRESH_S,
        restaurants=restaurants_list,
        ranges=RANGE_CHOICES if query.get("range", "auto") in RANGE_CHOICES else (*RANGE_CHOICES, query["range"]),
        query=query,
    )


# ---------------------------------------------------------------- --out


def write_snapshot(
    database_url: str,
    out: Path,
    *,
    emf_logs: Sequence[Path] = (),
    synthetic: bool | None = None,
    restaurant_id: str | None = None,
    since: dt.datetime | None = None,
) -> Path:
    """Write the dashboard as one self-contained HTML file; return its path."""
    view = View(
        synthetic=synthetic,
        restaurant_id=parse_restaurant(restaurant_id) if restaurant_id else None,
        since=since.astimezone(dt.UTC) if since else None,
    )
    return _write(database_url, Path(out), view, check_logs(emf_logs), rollup=True)


def _write(database_url: str, out: Path, view: View, logs: list[EmfLog], *, rollup: bool) -> Path:
    with database.connection(database_url) as conn:
        collected = collect(conn, view, logs, rollup=rollup)
    html = render_page(page_data(collected), live=False, restaurants_list=collected.restaurants, query={})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


# ---------------------------------------------------------------- --port


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, port: int, database_url: str, logs: list[EmfLog], view: View, rollup: bool, since: str | None = None
    ) -> None:
        super().__init__((HOST, port), DashboardHandler)
        self.since = since  # --since as given: "30m" keeps meaning the last 30 minutes
        self.database_url = database_url
        self.logs = logs
        self.view = view
        self.rollup = rollup
        self.lock = threading.Lock()  # one reader of the logs and the roll-up at a time
        self.last_rollup = 0.0

    def page_json(self, query: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, str]], dict[str, str]]:
        """The page's data for ``query`` (the page's controls); also the query in effect."""
        if self.since and "range" not in query:
            query = {**query, "range": self.since}
        view = _view_of(query, self.view)
        with self.lock, database.connection(self.database_url) as conn:
            rollup = self.rollup and time.monotonic() - self.last_rollup >= ROLLUP_EVERY_S
            collected = collect(conn, view, self.logs, rollup=rollup)
            if rollup:
                self.last_rollup = time.monotonic()
        return page_data(collected), collected.restaurants, query


def _view_of(query: dict[str, str], default: View) -> View:
    view = default
    if "traffic" in query:
        choice = query["traffic"]
        if choice not in ("auto", "live", "synthetic"):
            raise UserError("traffic: auto, live or synthetic")
        view = replace(view, synthetic=None if choice == "auto" else choice == "synthetic")
    if "restaurant" in query:
        view = replace(view, restaurant_id=parse_restaurant(query["restaurant"]) if query["restaurant"] else None)
    if "range" in query:
        view = replace(view, since=None if query["range"] == "auto" else parse_since(query["range"]))
    return view


class DashboardHandler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in LOCAL_HOSTS:  # a page of another site must not read this one (DNS rebinding)
            self._send(HTTPStatus.FORBIDDEN, "text/plain", b"forbidden: use http://127.0.0.1\n")
            return
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if url.path == "/":
                data, known, query = self.server.page_json(query)
                html = render_page(data, live=True, restaurants_list=known, query=query)
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", html.encode())
            elif url.path == "/data.json":
                data, _, _ = self.server.page_json(query)
                self._send(HTTPStatus.OK, "application/json", json.dumps(data, default=str).encode())
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        except UserError as exc:
            self._send(HTTPStatus.BAD_REQUEST, "application/json", json.dumps({"error": str(exc)}).encode())
        except psycopg.Error as exc:  # the database went away or refused: said, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            error = json.dumps({"error": f"database: {database.redact(first)}"})
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "application/json", error.encode())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the terminal shows the one line that matters: the URL


def serve(server: DashboardServer) -> None:
    """Serve until Ctrl-C (or SIGTERM as KeyboardInterrupt), then close the socket."""
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------- the command


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be from 0 to 65535 (0: any free port)")
    return port


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--port", type=_port, help="serve the live dashboard on http://127.0.0.1:PORT (0: any free)")
    target.add_argument("--out", type=Path, metavar="FILE", help="write the dashboard as one self-contained HTML file")
    parser.add_argument("--host", default=HOST, help="only 127.0.0.1 (or localhost): the dashboard is never exposed")
    parser.add_argument(
        "--emf-log",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a log holding the functions' EMF lines (capctl serve's stderr); repeatable",
    )
    parser.add_argument(
        "--traffic",
        choices=("auto", "live", "synthetic"),
        default="auto",
        help="live traffic or load tests (synthetic); auto: whichever has data, live first",
    )
    parser.add_argument("--restaurant", metavar="ID", help="one restaurant (default: all)")
    parser.add_argument(
        "--since", metavar="WHEN", help="start of the range: 30m, 2h, 1d ago or an ISO 8601 time (default: auto)"
    )
    parser.add_argument(
        "--no-rollup", action="store_true", help="read the roll-up tables as they are; do not re-aggregate first"
    )


def run(args: argparse.Namespace, name: str) -> int:
    if args.host not in LOCAL_HOSTS:
        raise UserError(f"--host {args.host}: the dashboard serves on 127.0.0.1 only")
    synthetic = None if args.traffic == "auto" else args.traffic == "synthetic"
    restaurant = parse_restaurant(args.restaurant) if args.restaurant else None
    since = parse_since(args.since) if args.since else None
    logs = check_logs(args.emf_log)
    url = database.database_url()
    assert url is not None
    view = View(synthetic=synthetic, restaurant_id=restaurant, since=since)
    if args.out is not None:
        print(f"wrote {_write(url, args.out, view, logs, rollup=not args.no_rollup)}")
        return 0
    with database.connection(url) as conn:  # fail now, with one line, rather than on the first page
        collect(conn, view, logs, rollup=False)
    try:
        server = DashboardServer(args.port, url, logs, view, rollup=not args.no_rollup, since=args.since)
    except OSError as exc:
        raise UserError(f"cannot listen on {HOST}:{args.port}: {exc.strerror}") from None
    print(f"dashboard on http://{HOST}:{server.server_address[1]}/ (Ctrl-C stops it)", flush=True)
    serve(server)
    print("dashboard stopped", file=sys.stderr)
    return 0
