"""The load-test report (contract section 7): the JSON document, the terminal table and a
self-contained HTML page with charts (uPlot and the data embedded, no network), written side by
side as ``reports/load-tests/<UTC timestamp>.{json,txt,html}``.

Everything here is pure: :func:`build_report` takes Artillery's output and the verification's
findings and decides pass/fail; the renderers only read the finished report, so a report JSON
can be re-rendered later (``render_html(json.load(...))``).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capacity import figures
from capacity.outcomes import OUTCOME_EVENTS

# Statuses the scenario accepts; anything else is a failure of the run.
ALLOWED_STATUSES = frozenset({200, 201, 409, 429})
EVENT_TYPES = (
    "booking.success",
    "booking.capacity_exceeded",
    "booking.overbook_prevented",
    "booking.conflict",
    "booking.retry_exhausted",
    "booking.overbook_detected",
)


@dataclass
class Verification:
    """What the checks after the run found. ``None`` = could not be checked (no database)."""

    mode: str  # "database" or "availability"
    slots: list[dict[str, Any]]
    over_capacity: list[dict[str, Any]]
    bookings_stored: int | None = None
    covers_stored: int | None = None
    duplicate_keys: int | None = None
    success_events: int | None = None
    ledger_mismatches: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    # Buckets {"t": iso, <event type>: n, ...}; "requests" (outcome events) and "conflicts"
    # (requests that met a conflict, capacity.figures.CONFLICTED_SQL) when load.py counts them.
    events_timeline: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Fault-injected runs: bookings answered 201 / cancellations answered 204 that are not in
    # effect afterwards (None = not checked), and checks of the run's history.
    acknowledged_lost: int | None = None
    cancellations_lost: int | None = None
    history_checks: list[dict[str, Any]] = field(default_factory=list)  # {"check", "passed", "detail"}
    conflicted_requests: int | None = None  # capacity.figures.CONFLICTED_SQL over the run's events


@dataclass(frozen=True)
class EnsureCheck:
    check: str
    passed: bool

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "passed": self.passed}


_CHECK_LINE = re.compile(r"^(?P<result>ok|fail): (?P<check>.+?)(?: \(optional\))?$")


def parse_ensure_checks(lines: Iterable[str]) -> list[EnsureCheck]:
    """The ``ok: …`` / ``fail: …`` lines the ensure plugin prints after ``Checks:``."""
    checks: list[EnsureCheck] = []
    in_checks = False
    for raw in lines:
        line = _strip_ansi(raw).strip()
        if line == "Checks:":
            in_checks = True
            continue
        if in_checks:
            m = _CHECK_LINE.match(line)
            if m:
                checks.append(EnsureCheck(m["check"], m["result"] == "ok"))
    return checks


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


_THRESHOLD = re.compile(r"^(?P<metric>[\w.\- ]+?)\s*(?P<op><=|<)\s*(?P<value>\d+(?:\.\d+)?)$")


def latency_thresholds(ensure: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latency limits among the ensure checks (``http.response_time.p99 < 2500``, the
    scenario's ``config.ensure.thresholds`` as Artillery prints them) as
    ``{metric, percentile, valueMs, passed}``; other checks (``maxErrorRate``) are not latencies."""
    limits = []
    for check in ensure:
        m = _THRESHOLD.match(str(check.get("check", "")))
        if not m or not m["metric"].startswith("http.response_time."):
            continue
        percentile = m["metric"].rsplit(".", 1)[1]
        limits.append(
            {
                "metric": m["metric"],
                "percentile": percentile,
                "valueMs": float(m["value"]),
                "passed": bool(check.get("passed")),
            }
        )
    return limits


# --------------------------------------------------------------------------- building


def counter(aggregate: Mapping[str, Any], name: str) -> int:
    value = (aggregate.get("counters") or {}).get(name, 0)
    return int(value or 0)


def status_counts(aggregate: Mapping[str, Any]) -> dict[int, int]:
    codes: dict[int, int] = {}
    for name, value in (aggregate.get("counters") or {}).items():
        m = re.fullmatch(r"http\.codes\.(\d{3})", name)
        if m:
            codes[int(m[1])] = int(value)
    return dict(sorted(codes.items()))


def transport_errors(aggregate: Mapping[str, Any]) -> dict[str, int]:
    """Artillery's errors.* counters (timeouts, refused connections, failed expectations)."""
    return {
        name.removeprefix("errors."): int(value)
        for name, value in (aggregate.get("counters") or {}).items()
        if name.startswith("errors.")
    }


def responses_201(aggregate: Mapping[str, Any]) -> int:
    """201s that created a booking: a replayed duplicate answers 201 for the same booking again."""
    return counter(aggregate, "http.codes.201") - counter(aggregate, "bookings.replayed_201")


def restaurant_label(restaurant_id: str, names: Mapping[str, str] | None) -> str:
    """The restaurant's name when the run knows it, else the first 8 characters of its id."""
    return (names or {}).get(restaurant_id) or restaurant_id[:8]


class _Checks:
    """The checks of a run in the order the checks table shows them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, name: str, passed: bool, detail: str) -> None:
        self.items.append({"name": name, "passed": passed, "detail": detail})


def decide(
    aggregate: Mapping[str, Any] | None,
    artillery_exit_code: int | None,
    ensure_checks: Sequence[EnsureCheck],
    verification: Verification,
    expect_rate_limit: bool = False,
    *,
    restaurant_names: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every check of the run as ``{name, passed, detail}``, and the failures in words."""
    check = _Checks()
    over = verification.over_capacity
    check(
        "no slot over capacity",
        not over,
        f"{len(verification.slots)} slots reconciled, {len(over)} over capacity"
        + "".join(
            f"; {restaurant_label(s['restaurantId'], restaurant_names)} {s['date']} {s['time']}: "
            f"{s['confirmedCovers']} > {s['maxCovers']}"
            for s in over[:5]
        ),
    )
    if aggregate is None:
        check("Artillery produced results", False, f"no output file (exit code {artillery_exit_code})")
    else:
        _response_checks(check, aggregate, verification, expect_rate_limit)
    _store_checks(check, verification)
    for ensure in ensure_checks:
        check(f"Artillery ensure: {ensure.check}", ensure.passed, "threshold held" if ensure.passed else "exceeded")
    if artillery_exit_code is not None:
        check("Artillery exit code 0", artillery_exit_code == 0, f"exit code {artillery_exit_code}")
    failures = [f"{c['name']}: {c['detail']}" for c in check.items if not c["passed"]]
    return check.items, failures


def _response_checks(
    check: _Checks, aggregate: Mapping[str, Any], verification: Verification, expect_rate_limit: bool
) -> None:
    created = responses_201(aggregate)
    replays = counter(aggregate, "bookings.replayed_201")
    check("bookings were made", created > 0, f"{created} bookings created by 201 responses")
    if verification.bookings_stored is not None:
        check(
            "201 responses = bookings stored",
            created == verification.bookings_stored,
            f"{created} created (201s minus {replays} replays), {verification.bookings_stored} stored for the run",
        )
    created_covers = counter(aggregate, "bookings.created_covers")
    if verification.covers_stored is not None and created_covers:
        check(
            "covers of 201 responses = covers stored",
            created_covers == verification.covers_stored,
            f"{created_covers} covers answered 201, {verification.covers_stored} stored",
        )
    unexpected = {code: n for code, n in status_counts(aggregate).items() if code not in ALLOWED_STATUSES}
    errors = transport_errors(aggregate)
    failed_expectations = counter(aggregate, "plugins.expect.failed")
    check(
        "only expected answers (200, 201, 409 capacity/closed/in-progress, 429)",
        not unexpected and not errors and not failed_expectations and not counter(aggregate, "bookings.unexpected"),
        f"unexpected statuses {unexpected or 'none'}, transport errors {errors or 'none'}, "
        f"failed expectations {failed_expectations}",
    )
    if expect_rate_limit:
        throttled = counter(aggregate, "http.codes.429")
        check("the probe met the usage plan (429)", throttled > 0, f"{throttled} requests answered 429")
    mismatched = counter(aggregate, "bookings.replay_mismatch")
    check(
        "replays return the original booking",
        mismatched == 0,
        f"{counter(aggregate, 'bookings.replayed')} replays, {mismatched} with a different booking",
    )


def _store_checks(check: _Checks, verification: Verification) -> None:
    if verification.duplicate_keys is not None:
        check(
            "one booking per Idempotency-Key",
            verification.duplicate_keys == 0,
            f"{verification.duplicate_keys} keys with more than one booking",
        )
    if verification.success_events is not None and verification.bookings_stored is not None:
        check(
            "one booking.success event per booking",
            verification.success_events == verification.bookings_stored,
            f"{verification.success_events} events, {verification.bookings_stored} bookings",
        )
    if verification.mode == "database":
        mismatches = verification.ledger_mismatches
        check(
            "slot_usage ledger = confirmed covers",
            not mismatches,
            f"{len(mismatches)} slots differ"
            + "".join(f"; {m['time']}: ledger {m['ledger']} vs {m['confirmedCovers']}" for m in mismatches[:5]),
        )
    if verification.acknowledged_lost is not None:
        check(
            "no acknowledged booking lost",
            verification.acknowledged_lost == 0,
            f"{verification.acknowledged_lost} bookings answered 201 are not stored",
        )
    if verification.cancellations_lost is not None:
        check(
            "no acknowledged cancellation lost",
            verification.cancellations_lost == 0,
            f"{verification.cancellations_lost} cancellations answered as done are not in effect",
        )
    for history in verification.history_checks:
        check(str(history["check"]), bool(history["passed"]), str(history.get("detail", "")))


def timeline(intermediate: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Artillery's per-period entries (10 s each), reduced to what the charts draw."""
    return [_period(entry) for entry in sorted(intermediate, key=lambda e: int(e.get("period", 0)))]


def _period(entry: Mapping[str, Any]) -> dict[str, Any]:
    counters = entry.get("counters") or {}
    summaries = entry.get("summaries") or {}
    latency = summaries.get("http.response_time") or {}
    in_flight = summaries.get("load.vusers_in_flight") or {}
    return {
        "period": _iso_ms(int(entry.get("period", 0))),
        "requests": int(counters.get("http.requests", 0)),
        "requestRate": (entry.get("rates") or {}).get("http.request_rate"),
        "bookingRequests": sum(int(v) for k, v in counters.items() if k.startswith("load.requests.")),
        "codes": {str(code): n for code, n in status_counts(entry).items()},
        "created": int(counters.get("bookings.created", 0)),
        "replayed": int(counters.get("bookings.replayed", 0)),
        "replayed201": int(counters.get("bookings.replayed_201", 0)),
        "replayed409": int(counters.get("bookings.replayed_409", 0)),
        "capacityExceeded": int(counters.get("bookings.refused.capacity_exceeded", 0)),
        "slotClosed": int(counters.get("bookings.refused.slot_closed", 0)),
        "rateLimited": int(counters.get("bookings.rate_limited", 0)),
        "vusersCreated": int(counters.get("vusers.created", 0)),
        "vusersCompleted": int(counters.get("vusers.completed", 0)),
        "vusersFailed": int(counters.get("vusers.failed", 0)),
        "latencyMs": {p: latency.get(p) for p in ("p50", "p95", "p99")},
        "endpointLatencyMs": {
            name: {p: summary.get(p) for p in ("p50", "p95", "p99")}
            for name, summary in endpoint_latency(entry).items()
        },
        "vusersInFlight": in_flight.get("max"),
    }


_BY_ENDPOINT = "plugins.metrics-by-endpoint.response_time."


def endpoint_latency(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The metrics-by-endpoint plugin's latency summary per endpoint name (``POST /bookings``…),
    empty when the plugin was off."""
    summaries = metrics.get("summaries") or {}
    return {
        name.removeprefix(_BY_ENDPOINT): dict(summary)
        for name, summary in sorted(summaries.items())
        if name.startswith(_BY_ENDPOINT) and summary
    }


def _iso_ms(epoch_ms: int) -> str:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def build_report(
    *,
    run_id: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    base_url: str,
    restaurant_ids: Sequence[str],
    dates: Sequence[str],
    scenario: str,
    artillery_output: Mapping[str, Any] | None,
    artillery_exit_code: int | None,
    ensure_checks: Sequence[EnsureCheck],
    verification: Verification,
    hot_slots: Sequence[Mapping[str, Any]] = (),
    expect_rate_limit: bool = False,
    faults: Sequence[Mapping[str, Any]] = (),
    restaurant_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    aggregate = dict(artillery_output["aggregate"]) if artillery_output else None
    names = {rid: str(name) for rid, name in (restaurant_names or {}).items()}
    checks, failures = decide(
        aggregate, artillery_exit_code, ensure_checks, verification, expect_rate_limit, restaurant_names=names
    )
    return {
        "runId": run_id,
        "startedAt": _iso(started_at),
        "finishedAt": _iso(finished_at),
        "target": {
            "baseUrl": base_url,
            "restaurantIds": list(restaurant_ids),
            "dates": list(dates),
            "restaurantNames": names,
        },
        "scenario": scenario,
        "artillery": {
            "aggregate": aggregate,
            "exitCode": artillery_exit_code,
            "ensure": [c.as_json() for c in ensure_checks],
        },
        "verification": _verification_json(verification, aggregate, hot_slots, checks),
        "events": dict(sorted(verification.events.items())),
        "timeline": timeline(artillery_output.get("intermediate") or []) if artillery_output else [],
        "eventsTimeline": verification.events_timeline,
        "faults": [_fault_json(f) for f in faults],
        "failures": failures,
        "passed": not failures,
    }


def _verification_json(
    verification: Verification,
    aggregate: Mapping[str, Any] | None,
    hot_slots: Sequence[Mapping[str, Any]],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    slot_fields = ("restaurantId", "date", "time", "maxCovers", "confirmedCovers")
    requests = sum(n for event, n in verification.events.items() if event in OUTCOME_EVENTS)
    conflicted = verification.conflicted_requests
    return {
        "mode": verification.mode,
        "slots": verification.slots,
        "overCapacitySlots": [{k: s[k] for k in slot_fields} for s in verification.over_capacity],
        "responses201": responses_201(aggregate) if aggregate else 0,
        "bookingsStored": verification.bookings_stored,
        "duplicateIdempotencyKeys": verification.duplicate_keys,
        "coversStored": verification.covers_stored,
        "ledgerMismatches": verification.ledger_mismatches,
        "hotSlots": [dict(h) for h in hot_slots],
        "acknowledgedLost": verification.acknowledged_lost,
        "cancellationsLost": verification.cancellations_lost,
        "historyChecks": [dict(h) for h in verification.history_checks],
        # capacity.figures' definition: requests that met a conflict / booking requests (outcome events).
        "bookingRequests": requests if verification.events else None,
        "conflictedRequests": conflicted,
        "conflictRate": None if conflicted is None else figures.conflict_rate(conflicted, requests),
        "checks": checks,
        "warnings": verification.warnings,
    }


def _fault_json(fault: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": fault.get("kind"),
        "startedAt": _when(fault.get("startedAt")),
        "endedAt": _when(fault.get("endedAt")),
        "recoveredAfterMs": fault.get("recoveredAfterMs"),
    }


def _when(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def report_stem(started_at: dt.datetime) -> str:
    return started_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def write_report(report: Mapping[str, Any], directory: Path, stem: str) -> tuple[Path, Path]:
    """The JSON report, and beside it the human-readable summary: the terminal table as
    ``<stem>.txt`` and the HTML page with charts as ``<stem>.html``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    html_path = directory / f"{stem}.html"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    (directory / f"{stem}.txt").write_text(render_table(report, max_slots=10_000) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path


# --------------------------------------------------------------------------- terminal


def _fmt_ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def render_table(report: Mapping[str, Any], max_slots: int = 12) -> str:
    """The summary an on-call operator reads: verdict, traffic, the fullest slots, every check."""
    aggregate = report["artillery"]["aggregate"] or {}
    verification = report["verification"]
    latency = (aggregate.get("summaries") or {}).get("http.response_time") or {}
    in_flight = (aggregate.get("summaries") or {}).get("load.vusers_in_flight") or {}
    codes = status_counts(aggregate)
    replayed_201 = counter(aggregate, "bookings.replayed_201")
    lines = [
        f"Load test {report['runId']}: {'PASSED' if report['passed'] else 'FAILED'}",
        f"  target     {report['target']['baseUrl']}  dates {_dates(report['target'])}  "
        f"restaurants {', '.join(r[:8] for r in report['target']['restaurantIds'])}",
        f"  time       {report['startedAt']} -> {report['finishedAt']}",
        f"  diners     {counter(aggregate, 'vusers.created')} created, peak in flight {in_flight.get('max', '-')}",
        f"  requests   {counter(aggregate, 'http.requests')}: "
        + ", ".join(f"{code} x{n}" for code, n in codes.items())
        + (f" ({replayed_201} of the 201s replayed duplicates)" if replayed_201 else ""),
        f"  latency    p50 {_fmt_ms(latency.get('p50'))}  p95 {_fmt_ms(latency.get('p95'))}  "
        f"p99 {_fmt_ms(latency.get('p99'))}  max {_fmt_ms(latency.get('max'))}",
    ]
    slots = [s for s in verification["slots"] if s.get("confirmedCovers") or s.get("byRun")]
    slots.sort(key=_fill_ratio, reverse=True)
    if slots:
        lines.append("")
        lines.append(f"  {'slot':<30} {'max':>5} {'before':>7} {'after':>6} {'run':>5}  state")
        for s in slots[:max_slots]:
            max_covers = "-" if s["maxCovers"] is None else str(s["maxCovers"])
            over = s["maxCovers"] is not None and s["confirmedCovers"] > s["maxCovers"]
            full = s["maxCovers"] is not None and s["confirmedCovers"] == s["maxCovers"]
            state = "OVER CAPACITY" if over else ("full" if full else "")
            lines.append(
                f"  {s['restaurantId'][:8] + ' ' + s['date'] + ' ' + s['time']:<30} {max_covers:>5} "
                f"{_dash(s.get('bookedBefore')):>7} {s['confirmedCovers']:>6} {_dash(s.get('byRun')):>5}  {state}"
            )
        if len(slots) > max_slots:
            lines.append(f"  ... {len(slots) - max_slots} more slots in the HTML report")
    lines.append("")
    lines.append("  checks")
    for c in verification["checks"]:
        lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}")
    for warning in verification.get("warnings") or []:
        lines.append(f"  warn {warning}")
    if report["events"]:
        lines.append("")
        lines.append("  events     " + ", ".join(f"{k} {v}" for k, v in report["events"].items()))
    return "\n".join(lines)


def _dates(target: Mapping[str, Any]) -> str:
    dates = target.get("dates") or []
    return "-" if not dates else (dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]}")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _fill_ratio(slot: Mapping[str, Any]) -> float:
    if not slot.get("maxCovers"):
        return -1.0
    return float(slot["confirmedCovers"]) / float(slot["maxCovers"])


# --------------------------------------------------------------------------- HTML

_COLORS = {
    "p50": "#2b8a3e",
    "p95": "#e67700",
    "p99": "#c92a2a",
    "201": "#2b8a3e",
    "201 replayed": "#8ce99a",
    "200": "#74c0fc",
    "409": "#e67700",
    "429": "#845ef7",
    "other": "#c92a2a",
    "refused": "#e67700",
    "conflict": "#c92a2a",
}

_W, _H = 720, 260
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 56, 16, 16, 44


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _nice_max(value: float) -> float:
    """The smallest round axis top at or above ``value`` with four round ticks."""
    if value <= 0:
        return 1.0
    quarter = value / 4
    magnitude = 10.0 ** math.floor(math.log10(quarter))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if quarter <= step * magnitude:
            return 4 * step * magnitude
    return value  # pragma: no cover - the loop always returns


def _axes(y_max: float, y_unit: str, x_labels: Sequence[str]) -> list[str]:
    parts = []
    plot_h = _H - _PAD_T - _PAD_B
    for i in range(5):
        value = y_max * i / 4
        y = _PAD_T + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#dee2e6"/>')
        label = f"{value:g}{y_unit}"
        parts.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_esc(label)}</text>')
    n = len(x_labels)
    if n:
        step = max(1, -(-n // 8))  # at most 8 labels: a time label needs room
        for i in range(0, n, step):
            x = _x(i, n)
            parts.append(
                f'<text x="{x:.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle" class="tick">{_esc(x_labels[i])}</text>'
            )
    return parts


def _x(i: int, n: int) -> float:
    plot_w = _W - _PAD_L - _PAD_R
    return _PAD_L + (plot_w * (i + 0.5) / n if n else 0)


def _y(value: float, y_max: float) -> float:
    plot_h = _H - _PAD_T - _PAD_B
    return _PAD_T + plot_h - plot_h * (value / y_max if y_max else 0)


def _legend(names: Sequence[str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{_COLORS.get(n, "#495057")}"></i>{_esc(n)}</span>' for n in names
    )
    return f'<div class="legend">{items}</div>'


def line_chart(title: str, x_labels: Sequence[str], series: Mapping[str, Sequence[float | None]], unit: str) -> str:
    values = [v for s in series.values() for v in s if v is not None]
    if not x_labels or not values:
        return f"<h3>{_esc(title)}</h3><p class='empty'>no data</p>"
    y_max = _nice_max(max(values))
    parts = [f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}">', *_axes(y_max, unit, x_labels)]
    n = len(x_labels)
    for name, points in series.items():
        coords = [(_x(i, n), _y(v, y_max)) for i, v in enumerate(points) if v is not None]
        color = _COLORS.get(name, "#495057")
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for (x, y), v in zip(coords, [v for v in points if v is not None], strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{_esc(name)}: {v}</title></circle>'
            )
    parts.append("</svg>")
    return f"<h3>{_esc(title)}</h3>{_legend(list(series))}" + "".join(parts)


def stacked_bars(title: str, x_labels: Sequence[str], series: Mapping[str, Sequence[float]], unit: str = "") -> str:
    n = len(x_labels)
    totals = [sum(s[i] for s in series.values()) for i in range(n)]
    if not n or not any(totals):
        return f"<h3>{_esc(title)}</h3><p class='empty'>no data</p>"
    y_max = _nice_max(max(totals))
    plot_w = _W - _PAD_L - _PAD_R
    bar_w = max(2.0, plot_w / n * 0.7)
    parts = [f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}">', *_axes(y_max, unit, x_labels)]
    for i in range(n):
        base = 0.0
        for name, values in series.items():
            v = values[i]
            if not v:
                continue
            y_top, y_bottom = _y(base + v, y_max), _y(base, y_max)
            parts.append(
                f'<rect x="{_x(i, n) - bar_w / 2:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
                f'height="{max(0.5, y_bottom - y_top):.1f}" fill="{_COLORS.get(name, "#495057")}">'
                f"<title>{_esc(x_labels[i])} {_esc(name)}: {v}</title></rect>"
            )
            base += v
    parts.append("</svg>")
    return f"<h3>{_esc(title)}</h3>{_legend(list(series))}" + "".join(parts)


def capacity_chart(title: str, slots: Sequence[Mapping[str, Any]]) -> str:
    """Confirmed covers per slot against the capacity in force (tick); over capacity in red."""
    shown = [s for s in slots if s.get("confirmedCovers") or s.get("byRun")]
    if not shown:
        return f"<h3>{_esc(title)}</h3><p class='empty'>no slot holds bookings</p>"
    row_h, label_w, width = 18, 200, _W
    height = row_h * len(shown) + 30
    limit = max(1, *((s["maxCovers"] or 0) for s in shown), *(s["confirmedCovers"] for s in shown))
    scale = (width - label_w - 60) / limit
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">']
    for i, s in enumerate(shown):
        y = 10 + i * row_h
        over = s["maxCovers"] is not None and s["confirmedCovers"] > s["maxCovers"]
        label = f"{s['restaurantId'][:8]} {s['date']} {s['time']}"
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" class="tick">{_esc(label)}</text>')
        before = min(s.get("bookedBefore") or 0, s["confirmedCovers"])
        if before:
            parts.append(
                f'<rect x="{label_w}" y="{y + 2}" width="{before * scale:.1f}" height="{row_h - 5}" fill="#adb5bd">'
                f"<title>before the run: {before}</title></rect>"
            )
        run_w = (s["confirmedCovers"] - before) * scale
        parts.append(
            f'<rect x="{label_w + before * scale:.1f}" y="{y + 2}" width="{run_w:.1f}" height="{row_h - 5}" '
            f'fill="{"#c92a2a" if over else "#2b8a3e"}"><title>{_esc(label)}: {s["confirmedCovers"]} covers '
            f"confirmed, max {_esc(s['maxCovers'])}</title></rect>"
        )
        if s["maxCovers"] is not None:
            x = label_w + s["maxCovers"] * scale
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + row_h - 1}" stroke="#212529" stroke-width="2"/>'
            )
        value = f"{s['confirmedCovers']}/{'∞' if s['maxCovers'] is None else s['maxCovers']}"
        parts.append(
            f'<text x="{label_w + max(s["confirmedCovers"], s["maxCovers"] or 0) * scale + 6:.1f}" y="{y + 12}" '
            f'class="tick">{_esc(value)}</text>'
        )
    parts.append("</svg>")
    legend = (
        '<div class="legend"><span class="key"><i style="background:#adb5bd"></i>booked before the run</span>'
        '<span class="key"><i style="background:#2b8a3e"></i>confirmed during the run</span>'
        '<span class="key"><i style="background:#c92a2a"></i>over capacity</span>'
        '<span class="key"><i style="background:#212529"></i>capacity in force</span></div>'
    )
    return f"<h3>{_esc(title)}</h3>{legend}" + "".join(parts)


def _fill_color(confirmed: int, max_covers: int | None) -> str:
    if max_covers is None:
        return "#d0ebff" if confirmed else "#f8f9fa"
    if confirmed > max_covers:
        return "#c92a2a"
    if max_covers == 0:
        return "#e9ecef"
    ratio = confirmed / max_covers
    # white -> green as the slot fills; full is the darkest green.
    shade = int(235 - 160 * ratio)
    return f"rgb({shade // 2},{max(shade, 110)},{shade // 2 + 20})" if ratio > 0 else "#f8f9fa"


def capacity_heatmap(title: str, slots: Sequence[Mapping[str, Any]]) -> str:
    """One row per restaurant and date, one cell per slot: the darker, the fuller; red = over capacity."""
    if not slots:
        return f"<h3>{_esc(title)}</h3><p class='empty'>no slots</p>"
    rows = sorted({(s["restaurantId"], s["date"]) for s in slots})
    times = sorted({s["time"] for s in slots})
    cell = {(s["restaurantId"], s["date"], s["time"]): s for s in slots}
    label_w, cell_w, cell_h = 170, max(6, min(22, (_W - 170) // max(1, len(times)))), 14
    width = label_w + cell_w * len(times) + 10
    height = cell_h * len(rows) + 40
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">']
    label_every = max(1, -(-40 // cell_w))  # a time label needs ~40 px
    for j, t in enumerate(times):
        if j % label_every == 0:
            parts.append(f'<text x="{label_w + j * cell_w}" y="{height - 6}" class="tick">{_esc(t)}</text>')
    for i, (rid, date) in enumerate(rows):
        y = 4 + i * cell_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 11}" text-anchor="end" class="tick">{_esc(rid[:8])} {_esc(date)}</text>'
        )
        for j, t in enumerate(times):
            s = cell.get((rid, date, t))
            if s is None:
                continue
            color = _fill_color(s["confirmedCovers"], s["maxCovers"])
            parts.append(
                f'<rect x="{label_w + j * cell_w}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" fill="{color}">'
                f"<title>{_esc(rid[:8])} {_esc(date)} {_esc(t)}: {s['confirmedCovers']} covers, max "
                f"{'unlimited' if s['maxCovers'] is None else s['maxCovers']}</title></rect>"
            )
    parts.append("</svg>")
    legend = (
        '<div class="legend"><span class="key"><i style="background:#f8f9fa;border:1px solid #ced4da"></i>empty</span>'
        '<span class="key"><i style="background:rgb(37,75,57)"></i>full</span>'
        '<span class="key"><i style="background:#d0ebff"></i>unlimited, booked</span>'
        '<span class="key"><i style="background:#c92a2a"></i>over capacity</span></div>'
    )
    return f"<h3>{_esc(title)}</h3>{legend}" + "".join(parts)


def _clock(iso: str) -> str:
    return iso[11:19] if len(iso) >= 19 else iso


def render_html(report: Mapping[str, Any]) -> str:
    aggregate = report["artillery"]["aggregate"] or {}
    verification = report["verification"]
    points = report.get("timeline") or []
    labels = [_clock(p["period"]) for p in points]
    latency = line_chart(
        "Latency over time (10 s periods, labelled by their start)",
        labels,
        {p: [pt["latencyMs"].get(p) for pt in points] for p in ("p50", "p95", "p99")},
        " ms",
    )

    def code_series(pt: Mapping[str, Any], code: str) -> float:
        return float(pt["codes"].get(code, 0))

    by_code = stacked_bars(
        "Responses by status over time (10 s periods)",
        labels,
        {
            "200": [code_series(pt, "200") for pt in points],
            "201": [code_series(pt, "201") for pt in points],
            "409": [code_series(pt, "409") for pt in points],
            "429": [code_series(pt, "429") for pt in points],
            "other": [float(sum(n for c, n in pt["codes"].items() if int(c) not in ALLOWED_STATUSES)) for pt in points],
        },
    )
    refused_rate = [
        (pt["capacityExceeded"] / pt["bookingRequests"] * 100) if pt["bookingRequests"] else None for pt in points
    ]
    conflict_series: dict[str, Sequence[float | None]] = {"refused": refused_rate}
    event_points = report.get("eventsTimeline") or []
    conflict_note = "refused = 409 capacity_exceeded / booking requests (Artillery)."
    if event_points:
        conflict_labels = [_clock(e["t"]) for e in event_points]
        outcomes = [
            sum(e.get(t, 0) for t in ("booking.success", "booking.capacity_exceeded", "booking.retry_exhausted"))
            for e in event_points
        ]
        conflicts = [e.get("booking.overbook_prevented", 0) + e.get("booking.conflict", 0) for e in event_points]
        refused_events = [e.get("booking.capacity_exceeded", 0) for e in event_points]
        # Two charts: lost races are rare, and would vanish on the refusals' scale.
        conflict_chart = line_chart(
            "Conflict rate over time (events of the run, 5 s buckets)",
            conflict_labels,
            {"conflict": [c / o * 100 if o else None for c, o in zip(conflicts, outcomes, strict=True)]},
            " %",
        ) + line_chart(
            "Refused share over time (events of the run, 5 s buckets)",
            conflict_labels,
            {"refused": [r / o * 100 if o else None for r, o in zip(refused_events, outcomes, strict=True)]},
            " %",
        )
        conflict_note = (
            "refused = booking.capacity_exceeded / outcome events; conflict (the alerting rate) = "
            "(booking.overbook_prevented + booking.conflict) / outcome events, per bucket."
        )
    else:
        conflict_chart = line_chart("Conflict rate over time (Artillery)", labels, conflict_series, " %")
    hot = verification.get("hotSlots") or []
    focus = [
        s
        for s in verification["slots"]
        if hot and s["restaurantId"] == hot[0]["restaurantId"] and s["date"] == hot[0]["date"]
    ]
    capacity = capacity_heatmap("Covers booked vs capacity, every slot", verification["slots"]) + capacity_chart(
        "Covers booked vs capacity per slot, the contended evening"
        + (f" ({hot[0]['restaurantId'][:8]} {hot[0]['date']})" if hot else ""),
        focus or verification["slots"][:40],
    )
    codes = status_counts(aggregate)
    totals_rows = "".join(f"<tr><td>{code}</td><td>{n}</td></tr>" for code, n in codes.items())
    replayed_201 = counter(aggregate, "bookings.replayed_201")
    checks_rows = "".join(
        f"<tr class='{'ok' if c['passed'] else 'fail'}'><td>{'ok' if c['passed'] else 'FAIL'}</td>"
        f"<td>{_esc(c['name'])}</td><td>{_esc(c['detail'])}</td></tr>"
        for c in verification["checks"]
    )
    events_rows = "".join(f"<tr><td>{_esc(k)}</td><td>{v}</td></tr>" for k, v in report["events"].items())
    if not events_rows:
        events_rows = "<tr><td colspan=2>not available without database access</td></tr>"
    verdict_color = "#2b8a3e" if report["passed"] else "#c92a2a"
    latency_total = (aggregate.get("summaries") or {}).get("http.response_time") or {}
    verdict = "PASSED" if report["passed"] else "FAILED"
    counters = aggregate.get("counters") or {}
    custom_rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{v}</td></tr>"
        for k, v in sorted(counters.items())
        if k.startswith(("bookings.", "load.", "vusers.", "errors.", "plugins.expect."))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Load test {_esc(report["runId"])} — {verdict}</title>
<style>
body{{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:960px;color:#212529}}
h1{{font-size:22px}} h1 .verdict{{padding:2px 10px;border-radius:4px;color:#fff;background:{verdict_color}}}
h3{{margin:28px 0 4px}} svg{{width:100%;height:auto;background:#fff;border:1px solid #e9ecef}}
.tick{{font-size:11px;fill:#495057}} .legend{{margin:4px 0}} .key{{margin-right:14px;font-size:12px}}
.key i{{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #dee2e6;padding:3px 8px;text-align:left}}
tr.fail td{{background:#ffe3e3}} tr.ok td:first-child{{color:#2b8a3e}} .empty{{color:#868e96}}
.grid{{display:grid;grid-template-columns:1fr 1fr;gap:16px}} .note{{color:#495057;font-size:12px}}
</style></head><body>
<h1>Load test <code>{_esc(report["runId"])}</code> <span class="verdict">{verdict}</span></h1>
<p>Target <code>{_esc(report["target"]["baseUrl"])}</code>, dates {_esc(_dates(report["target"]))},
restaurants {", ".join(f"<code>{_esc(r)}</code>" for r in report["target"]["restaurantIds"])}<br>
{_esc(report["startedAt"])} → {_esc(report["finishedAt"])}, scenario <code>{_esc(report.get("scenario", ""))}</code>,
verification by {_esc(verification["mode"])}</p>
{"".join(f"<p class='fail'><b>FAIL</b> {_esc(f)}</p>" for f in report["failures"])}
<h3>Checks</h3><table><tr><th></th><th>check</th><th>detail</th></tr>{checks_rows}</table>
<div class="grid"><div><h3>Responses</h3><table><tr><th>status</th><th>count</th></tr>{totals_rows}</table>
<p class="note">{replayed_201} of the 201s were replays of deliberate duplicates (same Idempotency-Key).
Latency p50 {_fmt_ms(latency_total.get("p50"))}, p95 {_fmt_ms(latency_total.get("p95"))},
p99 {_fmt_ms(latency_total.get("p99"))}.</p></div>
<div><h3>Events of the run</h3><table><tr><th>type</th><th>count</th></tr>{events_rows}</table></div></div>
{latency}
{by_code}
{conflict_chart}<p class="note">{_esc(conflict_note)}</p>
{capacity}
<h3>Counters</h3><table><tr><th>counter</th><th>value</th></tr>{custom_rows}</table>
<p class="note">Artillery's full aggregate is in the JSON report beside this page.</p>
</body></html>
"""
