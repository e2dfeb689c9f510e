"""The load-test report: the JSON document, the terminal table and a
self-contained HTML page with charts (uPlot and the data embedded, no network), written side by
side as ``reports/load-tests/<UTC timestamp>.{json,txt,html}``.

Everything here is pure: :func:`make_report` takes Artillery's output and the verification's
findings and decides pass/fail, giving the typed report (capctl.load_report); the renderers only
read the finished report, so a report JSON can be re-rendered later
(``render_html(LoadReport.read(json.load(...)))``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from capacity import figures
from capacity.camel_json import iso_seconds
from capacity.outcomes import OUTCOME_EVENTS, EventType
from capctl import pages
from capctl.load_report import (
    ArtilleryResult,
    Check,
    EnsureCheck,
    Fault,
    HistoryCheck,
    HotSlot,
    LedgerFinding,
    LedgerMismatch,
    LoadReport,
    Percentiles,
    ReportVerification,
    SlotAfterRun,
    SlotCovers,
    SlotFinding,
    Target,
    TimelinePoint,
)
from capctl.text import plural

# Statuses the scenario accepts; anything else is a failure of the run.
ALLOWED_STATUSES = frozenset({200, 201, 409, 429})


@dataclass
class Verification:
    """What the checks after the run found, as load.py gathers them (rows of the database or of
    availability, in the report's camelCase); :func:`make_report` types them into the report.
    ``None`` = could not be checked (no database)."""

    mode: str  # "database" or "availability"
    slots: list[SlotFinding]
    over_capacity: list[SlotFinding]
    bookings_stored: int | None = None
    covers_stored: int | None = None
    duplicate_keys: int | None = None
    success_events: int | None = None
    ledger_mismatches: list[LedgerFinding] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    # Buckets {"t": iso, <event type>: n, ...}; "requests" (outcome events) and "conflicts"
    # (requests that met a conflict, capacity.figures.CONFLICTED_SQL) when load.py counts them.
    events_timeline: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Fault-injected runs: bookings answered 201 / cancellations answered 200 that are not in
    # effect afterwards (None = not checked), and checks of the run's history.
    acknowledged_lost: int | None = None
    cancellations_lost: int | None = None
    history_checks: list[dict[str, Any]] = field(default_factory=list)  # {"check", "passed", "detail"}
    conflicted_requests: int | None = None  # capacity.figures.CONFLICTED_SQL over the run's events


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


_THRESHOLD = re.compile(r"^(?P<metric>.+?)\s*(?P<op><=|<)\s*(?P<value>\d+(?:\.\d+)?)$")
_PERCENTILE = re.compile(r"^(?:p\d+|median|max|mean)$")


def latency_thresholds(ensure: Iterable[EnsureCheck]) -> list[dict[str, Any]]:
    """The latency limits among the ensure checks, as Artillery prints the scenario's
    ``config.ensure`` (``http.response_time.p99 < 2500``; a per-endpoint
    ``plugins.metrics-by-endpoint.response_time.<name>.p95 < 800``; the legacy ``p99 < 2500``)
    as ``{metric, scope, percentile, valueMs, passed}``; other checks (``maxErrorRate``) are not
    latencies."""
    limits = []
    for check in ensure:
        m = _THRESHOLD.match(check.check.strip())
        if not m:
            continue
        metric = m["metric"]
        if _PERCENTILE.match(metric):
            metric = f"http.response_time.{metric}"
        head, _, percentile = metric.rpartition(".")
        if head == "http.response_time":
            scope = "all requests"
        elif head.startswith(_BY_ENDPOINT):
            scope = head.removeprefix(_BY_ENDPOINT)
        else:
            continue
        limits.append(
            {
                "metric": metric,
                "scope": scope,
                "percentile": percentile,
                "valueMs": float(m["value"]),
                "passed": check.passed,
            }
        )
    return limits


def limit_label(limit: Mapping[str, Any]) -> str:
    scope = "" if limit["scope"] == "all requests" else f"{limit['scope']} "
    return f"ensure {scope}{limit['percentile']} < {_ms_label(limit['valueMs'])}"


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
        self.items: list[Check] = []

    def __call__(self, name: str, passed: bool, detail: str) -> None:
        self.items.append(Check(name=name, passed=passed, detail=detail))


def decide(
    aggregate: Mapping[str, Any] | None,
    artillery_exit_code: int | None,
    ensure_checks: Sequence[EnsureCheck],
    verification: Verification,
    expect_rate_limit: bool = False,
    *,
    restaurant_names: Mapping[str, str] | None = None,
) -> tuple[list[Check], list[str]]:
    """Every check of the run, and the failures in words."""
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
    failures = [f"{c.name}: {c.detail}" for c in check.items if not c.passed]
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
            f"{plural(verification.duplicate_keys, 'key')} with more than one booking",
        )
    if verification.success_events is not None and verification.bookings_stored is not None:
        check(
            f"one {EventType.SUCCESS} event per booking",
            verification.success_events == verification.bookings_stored,
            f"{plural(verification.success_events, 'event')}, {plural(verification.bookings_stored, 'booking')}",
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


def timeline(intermediate: Sequence[Mapping[str, Any]]) -> list[TimelinePoint]:
    """Artillery's per-period entries (10 s each), reduced to what the charts draw."""
    return [_period(entry) for entry in sorted(intermediate, key=lambda e: int(e.get("period", 0)))]


def _period(entry: Mapping[str, Any]) -> TimelinePoint:
    counters = entry.get("counters") or {}
    summaries = entry.get("summaries") or {}
    latency = summaries.get("http.response_time") or {}
    in_flight = summaries.get("load.vusers_in_flight") or {}
    return TimelinePoint(
        period=_iso_ms(int(entry.get("period", 0))),
        requests=int(counters.get("http.requests", 0)),
        request_rate=(entry.get("rates") or {}).get("http.request_rate"),
        booking_requests=sum(int(v) for k, v in counters.items() if k.startswith("load.requests.")),
        codes={str(code): n for code, n in status_counts(entry).items()},
        created=int(counters.get("bookings.created", 0)),
        replayed=int(counters.get("bookings.replayed", 0)),
        replayed201=int(counters.get("bookings.replayed_201", 0)),
        replayed409=int(counters.get("bookings.replayed_409", 0)),
        capacity_exceeded=int(counters.get("bookings.refused.capacity_exceeded", 0)),
        slot_closed=int(counters.get("bookings.refused.slot_closed", 0)),
        rate_limited=int(counters.get("bookings.rate_limited", 0)),
        vusers_created=int(counters.get("vusers.created", 0)),
        vusers_completed=int(counters.get("vusers.completed", 0)),
        vusers_failed=int(counters.get("vusers.failed", 0)),
        latency_ms=_percentiles(latency),
        endpoint_latency_ms={name: _percentiles(summary) for name, summary in endpoint_latency(entry).items()},
        vusers_in_flight=in_flight.get("max"),
    )


def _percentiles(summary: Mapping[str, Any]) -> Percentiles:
    return Percentiles(p50=summary.get("p50"), p95=summary.get("p95"), p99=summary.get("p99"))


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


def make_report(
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
) -> LoadReport:
    """The report of a run: Artillery's output and the verification's findings, every check and
    the verdict."""
    aggregate = dict(artillery_output["aggregate"]) if artillery_output else None
    names = {rid: str(name) for rid, name in (restaurant_names or {}).items()}
    checks, failures = decide(
        aggregate, artillery_exit_code, ensure_checks, verification, expect_rate_limit, restaurant_names=names
    )
    return LoadReport(
        run_id=run_id,
        started_at=iso_seconds(started_at),
        finished_at=iso_seconds(finished_at),
        target=Target(
            base_url=base_url, restaurant_ids=list(restaurant_ids), dates=list(dates), restaurant_names=names
        ),
        scenario=scenario,
        artillery=ArtilleryResult(aggregate=aggregate, exit_code=artillery_exit_code, ensure=list(ensure_checks)),
        verification=_report_verification(verification, aggregate, hot_slots, checks),
        events=dict(sorted(verification.events.items())),
        timeline=timeline(artillery_output.get("intermediate") or []) if artillery_output else [],
        events_timeline=verification.events_timeline,
        faults=[Fault.model_validate(f) for f in faults],
        failures=failures,
        passed=not failures,
    )


def _report_verification(
    verification: Verification,
    aggregate: Mapping[str, Any] | None,
    hot_slots: Sequence[Mapping[str, Any]],
    checks: list[Check],
) -> ReportVerification:
    requests = sum(n for event, n in verification.events.items() if event in OUTCOME_EVENTS)
    conflicted = verification.conflicted_requests
    return ReportVerification(
        mode=verification.mode,
        slots=[SlotAfterRun.model_validate(s) for s in verification.slots],
        over_capacity_slots=[SlotCovers.model_validate(s) for s in verification.over_capacity],
        responses201=responses_201(aggregate) if aggregate else 0,
        bookings_stored=verification.bookings_stored,
        duplicate_idempotency_keys=verification.duplicate_keys,
        covers_stored=verification.covers_stored,
        ledger_mismatches=[LedgerMismatch.model_validate(m) for m in verification.ledger_mismatches],
        hot_slots=[HotSlot.model_validate(h) for h in hot_slots],
        acknowledged_lost=verification.acknowledged_lost,
        cancellations_lost=verification.cancellations_lost,
        history_checks=[HistoryCheck.model_validate(h) for h in verification.history_checks],
        booking_requests=requests if verification.events else None,
        conflicted_requests=conflicted,
        conflict_rate=None if conflicted is None else figures.conflict_rate(conflicted, requests),
        checks=checks,
        warnings=verification.warnings,
    )


def report_stem(started_at: dt.datetime) -> str:
    return started_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def write_report(report: LoadReport, directory: Path, stem: str, *, trend_runs: int = 10) -> tuple[Path, Path]:
    """The JSON report, and beside it the human-readable summary: the terminal table as
    ``<stem>.txt`` and the HTML page with charts as ``<stem>.html`` (which compares the run with
    the last ``trend_runs`` reports of ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    html_path = directory / f"{stem}.html"
    earlier = earlier_reports(directory, report, limit=trend_runs)
    json_path.write_text(report.dumps())
    html_path.write_text(render_html(report, earlier=earlier))
    (directory / f"{stem}.txt").write_text(render_table(report, max_slots=10_000, html_path=html_path) + "\n")
    return json_path, html_path


def earlier_reports(directory: Path, report: LoadReport, *, limit: int = 10) -> list[LoadReport]:
    """The last ``limit`` load-test reports in ``directory`` of the same scenario as ``report``
    that started before it, oldest first (a smoke run is no yardstick for a full run); files that
    are not reports (or not readable) are passed over. A report of an earlier version reads
    with defaults for what it lacks."""
    found = []
    for path in directory.glob("*.json"):
        try:
            other = LoadReport.read(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError):
            continue
        if other.run_id != report.run_id and other.scenario == report.scenario and other.started_at < report.started_at:
            found.append(other)
    found.sort(key=lambda r: r.started_at)
    return found[-limit:] if limit > 0 else []


# --------------------------------------------------------------------------- terminal


def _fmt_ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def render_table(report: LoadReport, max_slots: int = 12, *, html_path: Path | None = None) -> str:
    """The summary an on-call operator reads: verdict, traffic, the fullest slots, every check,
    and where the HTML page with the charts is."""
    aggregate = report.artillery.aggregate or {}
    verification = report.verification
    target = report.target
    names = target.restaurant_names
    latency = _summary(aggregate, "http.response_time")
    in_flight = _summary(aggregate, "load.vusers_in_flight")
    codes = status_counts(aggregate)
    replayed_201 = counter(aggregate, "bookings.replayed_201")
    lines = [
        f"Load test {report.run_id}: {'PASSED' if report.passed else 'FAILED'}",
        f"  target     {target.base_url}  dates {_dates(target)}  "
        f"restaurants {', '.join(restaurant_label(r, names) for r in target.restaurant_ids)}",
        f"  time       {report.started_at} -> {report.finished_at}",
        f"  diners     {counter(aggregate, 'vusers.created')} created, peak in flight {in_flight.get('max', '-')}",
        f"  requests   {counter(aggregate, 'http.requests')}: "
        + ", ".join(f"{code} x{n}" for code, n in codes.items())
        + (f" ({replayed_201} of the 201s replayed duplicates)" if replayed_201 else ""),
        f"  latency    p50 {_fmt_ms(latency.get('p50'))}  p95 {_fmt_ms(latency.get('p95'))}  "
        f"p99 {_fmt_ms(latency.get('p99'))}  max {_fmt_ms(latency.get('max'))}",
    ]
    lines += [
        f"  {'':<10} {name}: p95 {_fmt_ms(s.get('p95'))}  p99 {_fmt_ms(s.get('p99'))}"
        for name, s in endpoint_latency(aggregate).items()
    ]
    for fault in report.faults:
        lines.append(f"  fault      {_fault_words(fault)}")
    lines += _slot_lines(verification.slots, names, max_slots)
    lines.append("")
    lines.append("  checks")
    for c in verification.checks:
        lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
    for warning in verification.warnings:
        lines.append(f"  warn {warning}")
    if report.events:
        lines.append("")
        lines.append("  events     " + ", ".join(f"{k} {v}" for k, v in report.events.items()))
    if html_path is not None:
        lines.append("")
        lines.append(f"  charts     {html_path}")
    return "\n".join(lines)


def _slot_lines(slots: Sequence[SlotAfterRun], names: Mapping[str, str], max_slots: int) -> list[str]:
    booked = sorted((s for s in slots if s.confirmed_covers or s.by_run), key=_fill_ratio, reverse=True)
    if not booked:
        return []
    lines = ["", f"  {'slot':<34} {'max':>5} {'before':>7} {'after':>6} {'run':>5}  state"]
    for s in booked[:max_slots]:
        max_covers = "-" if s.max_covers is None else str(s.max_covers)
        over = s.max_covers is not None and s.confirmed_covers > s.max_covers
        full = s.max_covers is not None and s.confirmed_covers == s.max_covers
        state = "OVER CAPACITY" if over else ("full" if full else "")
        label = f"{restaurant_label(s.restaurant_id, names)[:16]} {s.date} {s.time}"
        lines.append(
            f"  {label:<34} {max_covers:>5} "
            f"{_dash(s.booked_before):>7} {s.confirmed_covers:>6} {_dash(s.by_run):>5}  {state}"
        )
    if len(booked) > max_slots:
        lines.append(f"  ... {len(booked) - max_slots} more slots in the HTML report")
    return lines


def _recovered(fault: Fault) -> str:
    after = fault.recovered_after_ms
    return "no booking answered after it" if after is None else f"bookings answered again {after} ms after"


def _fault_words(fault: Fault) -> str:
    return f"{fault.kind} {fault.started_at} .. {fault.ended_at or 'never healed'}: {_recovered(fault)}"


def _summary(metrics: Mapping[str, Any], name: str) -> dict[str, Any]:
    return dict((metrics.get("summaries") or {}).get(name) or {})


def _dates(target: Target) -> str:
    dates = target.dates
    return "-" if not dates else (dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]}")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _fill_ratio(slot: SlotAfterRun) -> float:
    if not slot.max_covers:
        return -1.0
    return float(slot.confirmed_covers) / float(slot.max_covers)


# --------------------------------------------------------------------------- HTML


def render_html(report: LoadReport, *, earlier: Sequence[LoadReport] = ()) -> str:
    """The page (templates/report.html.j2): the checks first, then the charts, drawn by uPlot
    in the browser from the data embedded in the page; ``earlier`` reports make the trend."""
    return pages.render("report.html.j2", **html_context(report, earlier))


def html_context(report: LoadReport, earlier: Sequence[LoadReport] = ()) -> dict[str, Any]:
    """Everything the template shows; ``charts`` holds each uPlot chart's spec (charts.js), its
    ``heading`` is the card's (no uPlot title: the card says it once)."""
    aggregate = report.artillery.aggregate or {}
    target = report.target
    names = target.restaurant_names
    points = report.timeline
    bands = fault_bands(report.faults, until=report.finished_at)
    limits = latency_thresholds(report.artillery.ensure)
    trend = trend_rows(report, earlier)
    charts = {
        "latency": latency_chart(points, limits, bands),
        "latency-histogram": histogram_chart(_summary(aggregate, "http.response_time"), limits),
        "throughput": throughput_chart(points, bands),
        "vusers": vusers_chart(points, bands),
        "statuses": statuses_chart(points, bands),
        "conflict-rate": conflict_chart(report, bands),
        "capacity-slots": slots_chart(report.verification, names),
        "trend": trend_chart(trend),
    }
    return {
        # The template reads the report as written, in the JSON's names.
        "report": report.as_json(),
        "restaurants": [restaurant_label(r, names) for r in target.restaurant_ids],
        "dates": _dates(target),
        "answers": answers(report),
        "endpoints": endpoint_rows(aggregate),
        "limits": limits,
        "faults": [{**f.model_dump(by_alias=True), "recovered": _recovered(f)} for f in report.faults],
        "heatmap": capacity_heatmap(report.verification.slots, names),
        "trend": trend,
        "regressions": regressions(trend),
        "counters": {
            k: v
            for k, v in sorted((aggregate.get("counters") or {}).items())
            if k.startswith(("bookings.", "load.", "vusers.", "errors.", "plugins.expect."))
        },
        "charts": charts,
    }


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()


def fault_bands(faults: Sequence[Fault], *, until: str) -> list[dict[str, Any]]:
    """Each injected fault as a shaded span of the time charts, from its start to its end (to
    ``until``, the end of the run, when it never healed)."""
    bands = []
    for fault in faults:
        if not fault.started_at:
            continue
        start = _epoch(fault.started_at)
        end = _epoch(fault.ended_at or until)
        bands.append({"from": start, "to": max(end, start), "label": fault.kind or "fault"})
    return bands


def _time_chart(title: str, points_x: list[float], series: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    # UTC, as every time of the report is written.
    return {"heading": title, "kind": "time", "timeZone": "UTC", "x": points_x, "series": series, **spec}


def _limit_lines(limits: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"label": limit_label(lim), "value": lim["valueMs"], "color": "#c92a2a"} for lim in limits]


def latency_chart(
    points: Sequence[TimelinePoint], limits: Sequence[Mapping[str, Any]], bands: list[dict[str, Any]]
) -> dict[str, Any]:
    """p95 per endpoint (metrics-by-endpoint) and p99 of all requests per period; without the
    plugin, p50/p95/p99 of all requests. Log scale: the ensure limit is far above a healthy run."""
    endpoints = sorted({name for p in points for name in p.endpoint_latency_ms})
    series: list[dict[str, Any]] = [
        {
            "label": f"{name} p95",
            "values": [p.endpoint_latency_ms[name].p95 if name in p.endpoint_latency_ms else None for p in points],
        }
        for name in endpoints
    ]
    overall = ("p99",) if endpoints else ("p50", "p95", "p99")
    series += [
        {"label": f"all requests {q}", "values": [getattr(p.latency_ms, q) for p in points], "color": _GREYS.get(q)}
        for q in overall
    ]
    return _time_chart(
        "Latency per endpoint (per 10 s period)",
        [_epoch(p.period) for p in points],
        series,
        yUnit=" ms",
        yLog=True,
        thresholds=_limit_lines(limits),
        bands=bands,
    )


_GREYS = {"p50": "#74c0fc", "p95": "#1c7ed6", "p99": "#495057"}
# Bucket edges of the latency histogram (ms); an ensure limit becomes an edge of its own.
_LATENCY_EDGES_MS = (0, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000)
_QUANTILES = (
    ("min", 0.0),
    ("p50", 0.5),
    ("p75", 0.75),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
    ("max", 1.0),
)


def histogram_edges(max_ms: float | None, limits_ms: Sequence[float]) -> list[float]:
    """Bucket edges from 0 up past the slowest request and past every limit, so that a limit
    line is drawn inside the chart."""
    top = max([float(max_ms or 0), *limits_ms])
    edges = sorted({float(e) for e in _LATENCY_EDGES_MS if e <= top} | {float(v) for v in limits_ms})
    beyond = [float(e) for e in _LATENCY_EDGES_MS if e > edges[-1]]
    edges.append(beyond[0] if beyond else edges[-1] * 2)
    return edges


def latency_histogram(summary: Mapping[str, Any], edges: Sequence[float]) -> list[int]:
    """Requests per latency bucket, estimated from Artillery's percentiles (its JSON keeps no
    raw samples): the distribution is taken as linear between min, p50, p75 … p999, max.
    Rounded cumulatively, so the buckets add up to the request count."""
    knots = sorted((float(summary[k]), q) for k, q in _QUANTILES if summary.get(k) is not None)
    count = int(summary.get("count") or 0)
    if not knots or not count:
        return [0] * (len(edges) - 1)
    cumulative = [round(count * _cdf(knots, e)) for e in edges]
    return [b - a for a, b in itertools.pairwise(cumulative)]


def _cdf(knots: Sequence[tuple[float, float]], x: float) -> float:
    below = [k for k in knots if k[0] <= x]
    above = [k for k in knots if k[0] > x]
    if not below:
        return 0.0
    v0, q0 = max(below)
    if not above:
        return 1.0
    v1, q1 = min(above)
    return q0 + (q1 - q0) * (x - v0) / (v1 - v0)


def _ms_label(ms: float, space: str = " ") -> str:
    return f"{ms / 1000:g}{space}s" if ms >= 1000 else f"{ms:g}{space}ms"


def histogram_chart(summary: Mapping[str, Any], limits: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    limits = [lim for lim in limits if lim["scope"] == "all requests"]  # the histogram is of all requests
    limits_ms = [float(lim["valueMs"]) for lim in limits]
    edges = histogram_edges(summary.get("max"), limits_ms)
    counts = latency_histogram(summary, edges)
    total = sum(counts)
    running = [sum(counts[: i + 1]) / total * 100 if total else None for i in range(len(counts))]
    return {
        "heading": "Latency histogram, all requests (estimated from Artillery's percentiles)",
        "kind": "category",
        "x": list(range(len(counts))),
        # "<25ms": the bucket from the previous edge up to 25 ms.
        "xLabels": [f"<{_ms_label(hi, '')}" for hi in edges[1:]],
        "series": [
            {"label": "requests", "values": counts, "style": "bars", "color": "#1c7ed6"},
            {"label": "requests at or below", "values": running, "scale": "y2", "color": "#495057"},
        ],
        "yUnit": "",
        "y2Unit": " %",
        "xThresholds": [
            {"label": limit_label(lim), "value": edges.index(v) - 0.5} for lim, v in zip(limits, limits_ms, strict=True)
        ],
    }


def _per_second(n: float, point: TimelinePoint) -> float:
    """``n`` of a period as a rate, over the period's window as Artillery measured it (the first
    and last periods are short); 10 s when it did not say."""
    rate, requests = point.request_rate, point.requests
    if rate and requests:
        return round(n * float(rate) / float(requests), 2)
    return round(n / 10, 2)


def throughput_chart(points: Sequence[TimelinePoint], bands: list[dict[str, Any]]) -> dict[str, Any]:
    return _time_chart(
        "Requests per second",
        [_epoch(p.period) for p in points],
        [
            {"label": "all requests", "values": [_per_second(p.requests, p) for p in points], "style": "area"},
            {"label": "booking requests", "values": [_per_second(p.booking_requests, p) for p in points]},
            {"label": "bookings created", "values": [_per_second(p.created, p) for p in points]},
        ],
        yUnit=" /s",
        bands=bands,
    )


def vusers_chart(points: Sequence[TimelinePoint], bands: list[dict[str, Any]]) -> dict[str, Any]:
    return _time_chart(
        "Virtual users (diners)",
        [_epoch(p.period) for p in points],
        [
            {"label": "in flight (peak)", "values": [p.vusers_in_flight for p in points], "style": "area"},
            {"label": "started", "values": [p.vusers_created for p in points], "scale": "y2"},
            {"label": "failed", "values": [p.vusers_failed for p in points], "scale": "y2"},
        ],
        yUnit=" diners",
        y2Unit=" per period",
        bands=bands,
    )


def _status_values(p: TimelinePoint) -> dict[str, int]:
    """A period's answers in the words of the checks table (created, replays, refusals)."""
    codes = {int(c): n for c, n in p.codes.items()}
    capacity, closed = p.capacity_exceeded, p.slot_closed
    return {
        "201 created a booking": codes.get(201, 0) - p.replayed201,
        "201 replay of a duplicate": p.replayed201,
        "200 availability / reads": codes.get(200, 0),
        "409 refused: capacity_exceeded": capacity,
        "409 refused: slot_closed": closed,
        "409 other (in progress)": codes.get(409, 0) - capacity - closed,
        "429 rate limited": codes.get(429, 0),
        "unexpected status": sum(n for c, n in codes.items() if c not in ALLOWED_STATUSES),
    }


_STATUS_COLORS = ("#2f9e44", "#8ce99a", "#74c0fc", "#e8590c", "#f59f00", "#ffa8a8", "#7048e8", "#c92a2a")


def statuses_chart(points: Sequence[TimelinePoint], bands: list[dict[str, Any]]) -> dict[str, Any]:
    per_period = [_status_values(p) for p in points]
    labels = list(_status_values(TimelinePoint(period="")))
    series = [
        {"label": label, "values": [v[label] for v in per_period], "color": color}
        for label, color in zip(labels, _STATUS_COLORS, strict=True)
        if label == labels[0] or any(v[label] for v in per_period)
    ]
    return _time_chart(
        "Answers by status (per 10 s period)", [_epoch(p.period) for p in points], series, yUnit="", bands=bands
    )


def _percent(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 2)


def conflict_chart(report: LoadReport, bands: list[dict[str, Any]]) -> dict[str, Any]:
    """capacity.figures' conflict rate per bucket of the run's events (requests that met a
    conflict / booking requests), and the share refused for capacity beside it."""
    buckets = report.events_timeline
    if buckets:
        x = [_epoch(str(b["t"])) for b in buckets]
        requests = [int(b.get("requests", sum(int(b.get(e, 0)) for e in OUTCOME_EVENTS))) for b in buckets]
        conflicts = [
            _percent(figures.conflict_rate(int(b["conflicts"]), n)) if "conflicts" in b else None
            for b, n in zip(buckets, requests, strict=True)
        ]
        refused = [
            _percent(figures.rate(int(b.get(EventType.CAPACITY_EXCEEDED, 0)), n))
            for b, n in zip(buckets, requests, strict=True)
        ]
    else:  # no database access: refusals as Artillery saw them, conflicts unknown
        points = report.timeline
        x = [_epoch(p.period) for p in points]
        conflicts = [None for _ in points]
        refused = [_percent(figures.rate(p.capacity_exceeded, p.booking_requests)) for p in points]
    return _time_chart(
        "Conflict rate and refusals",
        x,
        [
            {"label": "conflict rate", "values": conflicts, "color": "#c92a2a"},
            {"label": "refused: capacity_exceeded", "values": refused, "scale": "y2", "color": "#e8590c"},
        ],
        yUnit=" %",
        y2Unit=" %",
        bands=bands,
    )


def slots_chart(verification: ReportVerification, names: Mapping[str, str]) -> dict[str, Any]:
    """The contended evening (the first hot slot's restaurant and date), slot by slot."""
    hot = verification.hot_slots
    slots = verification.slots
    if hot:
        slots = [s for s in slots if (s.restaurant_id, s.date) == (hot[0].restaurant_id, hot[0].date)]
    slots = [s for s in slots if s.max_covers is not None or s.confirmed_covers][:48]
    where = f" — {restaurant_label(hot[0].restaurant_id, names)} {hot[0].date}" if hot else ""
    return {
        "heading": "Covers booked vs capacity, the contended evening" + where,
        "kind": "category",
        "x": list(range(len(slots))),
        "xLabels": [s.time for s in slots],
        "xLabelEvery": max(1, -(-len(slots) // 12)),  # a time label needs ~40 px
        "series": [
            {
                "label": "confirmed covers",
                "values": [s.confirmed_covers for s in slots],
                "style": "bars",
                "color": "#2f9e44",
            },
            {
                "label": "booked before the run",
                "values": [s.booked_before for s in slots],
                "style": "bars",
                "color": "#adb5bd",
            },
            {"label": "capacity in force", "values": [s.max_covers for s in slots], "color": "#212529"},
        ],
        "yUnit": " covers",
    }


def capacity_heatmap(slots: Sequence[SlotAfterRun], names: Mapping[str, str]) -> dict[str, Any]:
    """One row per restaurant and date, one cell per slot: the darker, the fuller; red = over."""
    times = sorted({s.time for s in slots})
    rows: dict[tuple[str, str], dict[str, SlotAfterRun]] = {}
    for s in slots:
        rows.setdefault((s.restaurant_id, s.date), {})[s.time] = s
    table = [
        {
            "label": f"{restaurant_label(rid, names)} {date}",
            "cells": [_heat_cell(by_time.get(t), restaurant_label(rid, names)) for t in times],
        }
        for (rid, date), by_time in sorted(rows.items(), key=lambda kv: (restaurant_label(kv[0][0], names), kv[0][1]))
    ]
    return {"times": times, "rows": table, "points": len(slots)}


def _heat_cell(slot: SlotAfterRun | None, restaurant: str) -> dict[str, Any] | None:
    if slot is None:
        return None
    confirmed, max_covers = slot.confirmed_covers, slot.max_covers
    limit = "unlimited" if max_covers is None else max_covers
    return {
        "text": confirmed or "",
        "color": _fill_color(confirmed, max_covers),
        "dark": max_covers is not None and (confirmed > max_covers or confirmed / max(max_covers, 1) > 0.6),
        "title": f"{restaurant} {slot.date} {slot.time}: {confirmed} covers confirmed, max {limit}"
        + (f", {slot.by_run} by the run" if slot.by_run else ""),
    }


def _fill_color(confirmed: int, max_covers: int | None) -> str:
    if max_covers is None:
        return "#d0ebff" if confirmed else "#f8f9fa"
    if confirmed > max_covers:
        return "#c92a2a"
    if max_covers == 0 or not confirmed:
        return "#f1f3f5" if max_covers == 0 else "#ffffff"
    # pale to dark green as the slot fills; full is the darkest.
    ratio = confirmed / max_covers
    return f"hsl(135, 55%, {int(92 - 62 * ratio)}%)"


def answers(report: LoadReport) -> list[dict[str, Any]]:
    """Replays and refusals reconciled, in the words of the checks table."""
    aggregate = report.artillery.aggregate or {}
    verification = report.verification
    codes = status_counts(aggregate)
    capacity = counter(aggregate, "bookings.refused.capacity_exceeded")
    closed = counter(aggregate, "bookings.refused.slot_closed")
    stored = verification.bookings_stored
    rate = verification.conflict_rate
    return [
        {
            "what": "booking requests",
            "n": sum(v for k, v in (aggregate.get("counters") or {}).items() if k.startswith("load.requests.")),
            "words": "POST /bookings sent by the diners (deliberate duplicates included)",
        },
        {
            "what": "201 answers",
            "n": codes.get(201, 0),
            "words": f"{responses_201(aggregate)} created a booking + {counter(aggregate, 'bookings.replayed_201')} "
            "replays of a deliberate duplicate (same Idempotency-Key, same booking)",
        },
        {
            "what": "bookings stored",
            "n": "not checked" if stored is None else stored,
            "words": "for the run; must equal the 201s that created a booking (check: 201 responses = bookings stored)",
        },
        {
            "what": "409 answers",
            "n": codes.get(409, 0),
            "words": f"{capacity} refused: capacity_exceeded + {closed} refused: slot_closed + "
            f"{codes.get(409, 0) - capacity - closed} other (idempotency_in_progress); "
            f"{counter(aggregate, 'bookings.replayed_409')} of them replays of a refused request",
        },
        {
            "what": "429 answers",
            "n": codes.get(429, 0),
            "words": "rate limited by the usage plan; the diner waited Retry-After",
        },
        {
            "what": "refusals recorded",
            "n": report.events.get(EventType.CAPACITY_EXCEEDED, "not checked"),
            "words": f"{EventType.CAPACITY_EXCEEDED} events of the run (a replay records no event)",
        },
        {
            "what": "conflict rate",
            "n": "not counted" if rate is None else f"{rate * 100:.2f} %",
            "words": f"{_dash(verification.conflicted_requests)} requests that met a conflict / "
            f"{_dash(verification.booking_requests)} booking requests (outcome events, capacity.figures)",
        },
    ]


def endpoint_rows(aggregate: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Latency per endpoint (metrics-by-endpoint), or of all requests without the plugin."""
    by_endpoint = endpoint_latency(aggregate) or {"all requests": _summary(aggregate, "http.response_time")}
    counters = aggregate.get("counters") or {}
    rows = []
    for name, s in by_endpoint.items():
        prefix = f"plugins.metrics-by-endpoint.{name}.codes."
        codes = {k.removeprefix(prefix): v for k, v in sorted(counters.items()) if k.startswith(prefix)}
        rows.append({"name": name, "summary": s, "codes": ", ".join(f"{c} x{n}" for c, n in codes.items())})
    return rows


def key_figures(report: LoadReport) -> dict[str, Any]:
    """The figures of a run that the trend compares."""
    aggregate = report.artillery.aggregate or {}
    verification = report.verification
    latency = _summary(aggregate, "http.response_time")
    booking_requests = sum(v for k, v in (aggregate.get("counters") or {}).items() if k.startswith("load.requests."))
    unexpected = sum(n for c, n in status_counts(aggregate).items() if c not in ALLOWED_STATUSES)
    # A failed expectation is an answer already counted by its status.
    unexpected += sum(n for e, n in transport_errors(aggregate).items() if not e.startswith("Failed expectations"))
    return {
        "runId": report.run_id,
        "startedAt": report.started_at,
        "scenario": report.scenario,
        "passed": report.passed,
        "requests": counter(aggregate, "http.requests"),
        "requestRate": (aggregate.get("rates") or {}).get("http.request_rate"),
        "p95": latency.get("p95"),
        "p99": latency.get("p99"),
        "created": verification.responses201,
        "refused": _percent(figures.rate(counter(aggregate, "bookings.refused.capacity_exceeded"), booking_requests)),
        "conflictRate": _percent(verification.conflict_rate),
        "unexpected": unexpected,
    }


def trend_rows(report: LoadReport, earlier: Sequence[LoadReport]) -> list[dict[str, Any]]:
    """The earlier runs' key figures, oldest first, then this run's; ``worse`` names the figures
    of this run that are worse than the median of the earlier runs by more than a fifth."""
    rows = [{**key_figures(r), "current": False, "worse": []} for r in earlier]
    current = {**key_figures(report), "current": True, "worse": []}
    if rows:
        current["worse"] = [name for name, _ in _regressed(current, rows)]
    return [*rows, current]


# figure -> is a higher value worse?
_TREND_FIGURES = {"p95": True, "p99": True, "requestRate": False, "conflictRate": True, "unexpected": True}


def _regressed(current: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    found = []
    for name, higher_is_worse in _TREND_FIGURES.items():
        values = sorted(float(r[name]) for r in earlier if r.get(name) is not None)
        if current.get(name) is None or not values:
            continue
        median, value = values[len(values) // 2], float(current[name])
        worse = value > median * 1.2 if higher_is_worse else value < median * 0.8
        if worse and value != median and (higher_is_worse or median > 0):
            found.append((name, median))
    return found


_FIGURE_WORDS = {
    "p95": "p95 latency",
    "p99": "p99 latency",
    "requestRate": "requests per second",
    "conflictRate": "conflict rate",
    "unexpected": "unexpected answers",
}


def regressions(trend: Sequence[Mapping[str, Any]]) -> list[str]:
    """This run against the median of the earlier runs, in words, for the trend card."""
    current, earlier = trend[-1], trend[:-1]
    return [
        f"{_FIGURE_WORDS[name]} {current[name]:g} vs {median:g} (median of the {len(earlier)} earlier runs)"
        for name, median in _regressed(current, earlier)
    ]


def trend_chart(trend: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    labels = [
        f"{r['startedAt'][5:10]} {r['startedAt'][11:16]}" + (" (this run)" if r["current"] else "") for r in trend
    ]
    return {
        "heading": f"the last {len(trend)} runs of {trend[-1]['scenario']}",
        "kind": "category",
        "x": list(range(len(trend))),
        "xLabels": labels,
        "series": [
            {"label": "requests/s", "values": [r["requestRate"] for r in trend], "style": "bars", "scale": "y2"},
            {"label": "p95 latency", "values": [r["p95"] for r in trend], "color": "#e8590c"},
            {"label": "p99 latency", "values": [r["p99"] for r in trend], "color": "#c92a2a"},
        ],
        "yUnit": " ms",
        "y2Unit": " req/s",
    }
