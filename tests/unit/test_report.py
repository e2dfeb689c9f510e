"""The load-test report: built from recorded Artillery output (tests/fixtures/artillery-*.json,
real runs of load/capacity-*.yml), the pass/fail decision, the terminal table and the HTML page."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from capctl import report as reports
from capctl.load_report import EnsureCheck, LoadReport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RESTAURANT = "6f1c2a4e-8b1d-4c3e-9a7f-1d2b3c4d5e6f"
STARTED = dt.datetime(2026, 11, 25, 9, 12, 7, tzinfo=dt.UTC)
FINISHED = STARTED + dt.timedelta(seconds=20)


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.fixture
def passing_output() -> dict[str, Any]:
    # The smoke scenario against capctl serve: 204 x 201 of which 48 replayed duplicates.
    return load_fixture("artillery-smoke-pass.json")


@pytest.fixture
def failing_output() -> dict[str, Any]:
    # A full run whose diners sent bookings off the slot grid: 35 x 422, ensure maxErrorRate failed.
    return load_fixture("artillery-full-unexpected-422.json")


def slot(time: str, confirmed: int, max_covers: int | None = 40, **extra: Any) -> dict[str, Any]:
    return {
        "restaurantId": RESTAURANT,
        "date": "2026-12-26",
        "time": time,
        "maxCovers": max_covers,
        "confirmedCovers": confirmed,
        "bookedBefore": 0,
        "byRun": confirmed,
        **extra,
    }


def verification(**overrides: Any) -> reports.Verification:
    values: dict[str, Any] = {
        "mode": "database",
        "slots": [slot("19:15", 40), slot("19:30", 39)],
        "over_capacity": [],
        "bookings_stored": 156,
        "covers_stored": 385,
        "duplicate_keys": 0,
        "success_events": 156,
        "events": {"booking.success": 156, "booking.capacity_exceeded": 19},
    }
    values.update(overrides)
    return reports.Verification(**values)


def smoke_run(
    output: dict[str, Any] | None,
    verified: reports.Verification,
    exit_code: int | None = 0,
    checks: list[EnsureCheck] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """make_report's keywords for a smoke run of the test restaurant; ``changes`` override them."""
    values: dict[str, Any] = {
        "run_id": "lt-test",
        "started_at": STARTED,
        "finished_at": FINISHED,
        "base_url": "http://127.0.0.1:3000",
        "restaurant_ids": [RESTAURANT],
        "dates": ["2026-12-26", "2026-12-27"],
        "scenario": "load/capacity-smoke.yml",
        "artillery_output": output,
        "artillery_exit_code": exit_code,
        "ensure_checks": checks if checks is not None else [EnsureCheck("http.response_time.p99 < 2500", True)],
        "verification": verified,
        "hot_slots": [{"restaurantId": RESTAURANT, "date": "2026-12-26", "time": "19:15"}],
    }
    values.update(changes)
    return values


def make(
    output: dict[str, Any] | None,
    verified: reports.Verification,
    exit_code: int | None = 0,
    checks: list[EnsureCheck] | None = None,
    **changes: Any,
) -> LoadReport:
    return reports.make_report(**smoke_run(output, verified, exit_code, checks, **changes))


def build(
    output: dict[str, Any] | None, verified: reports.Verification, exit_code: int | None = 0, **changes: Any
) -> dict[str, Any]:
    """The JSON ``capctl load`` writes for :func:`make`'s report."""
    return make(output, verified, exit_code, **changes).as_json()


# --------------------------------------------------------------------------- building


def test_a_clean_run_passes_with_the_contract_fields(passing_output: dict[str, Any]) -> None:
    report = build(passing_output, verification())

    assert report["passed"] is True
    assert report["failures"] == []
    assert report["runId"] == "lt-test"
    assert report["startedAt"] == "2026-11-25T09:12:07Z"
    assert report["finishedAt"] == "2026-11-25T09:12:27Z"
    assert report["target"] == {
        "baseUrl": "http://127.0.0.1:3000",
        "restaurantIds": [RESTAURANT],
        "dates": ["2026-12-26", "2026-12-27"],
        "restaurantNames": {},
    }
    assert report["faults"] == []
    assert report["verification"]["acknowledgedLost"] is None and report["verification"]["cancellationsLost"] is None
    # Artillery's own aggregate, as it wrote it.
    assert report["artillery"]["aggregate"] == passing_output["aggregate"]
    v = report["verification"]
    assert v["overCapacitySlots"] == []
    assert v["bookingsStored"] == 156
    assert v["duplicateIdempotencyKeys"] == 0
    assert v["slots"][0] == slot("19:15", 40)
    assert report["events"] == {"booking.capacity_exceeded": 19, "booking.success": 156}
    assert all(c["passed"] for c in v["checks"])


def test_responses_201_leave_out_the_replayed_duplicates(passing_output: dict[str, Any]) -> None:
    counters = passing_output["aggregate"]["counters"]
    assert counters["http.codes.201"] == 204 and counters["bookings.replayed_201"] == 48

    report = build(passing_output, verification())

    assert report["verification"]["responses201"] == 156


def test_more_201s_than_stored_bookings_fails(passing_output: dict[str, Any]) -> None:
    report = build(passing_output, verification(bookings_stored=155, success_events=155))

    assert report["passed"] is False
    assert any(f.startswith("201 responses = bookings stored: 156 created") for f in report["failures"])


def test_covers_answered_must_match_covers_stored(passing_output: dict[str, Any]) -> None:
    report = build(passing_output, verification(covers_stored=384))

    assert report["passed"] is False
    assert any("385 covers answered 201, 384 stored" in f for f in report["failures"])


def test_an_over_capacity_slot_fails_and_is_listed(passing_output: dict[str, Any]) -> None:
    over = slot("19:45", 44)
    report = build(passing_output, verification(slots=[slot("19:15", 40), over], over_capacity=[over]))

    assert report["passed"] is False
    assert report["verification"]["overCapacitySlots"] == [
        {"restaurantId": RESTAURANT, "date": "2026-12-26", "time": "19:45", "maxCovers": 40, "confirmedCovers": 44}
    ]
    assert any("19:45: 44 > 40" in f for f in report["failures"])


def test_duplicate_idempotency_keys_fail(passing_output: dict[str, Any]) -> None:
    report = build(passing_output, verification(duplicate_keys=2))

    assert report["passed"] is False
    assert any(f.startswith("one booking per Idempotency-Key: 2 keys") for f in report["failures"])


def test_ledger_differing_from_bookings_fails(passing_output: dict[str, Any]) -> None:
    mismatch = {"restaurantId": RESTAURANT, "date": "2026-12-26", "time": "19:15", "ledger": 38, "confirmedCovers": 40}
    report = build(passing_output, verification(ledger_mismatches=[mismatch]))

    assert report["passed"] is False
    assert any("19:15: ledger 38 vs 40" in f for f in report["failures"])


def test_success_events_must_match_bookings(passing_output: dict[str, Any]) -> None:
    report = build(passing_output, verification(success_events=150))

    assert report["passed"] is False
    assert any(
        f.startswith("one booking.success event per booking: 150 events, 156 bookings") for f in report["failures"]
    )


def test_unexpected_statuses_and_failed_ensure_fail_the_run(failing_output: dict[str, Any]) -> None:
    checks = reports.parse_ensure_checks(["Checks:", "ok: http.response_time.p99 < 2500", "fail: maxErrorRate < 0"])
    # The database side of that run was clean: the failure must come from the responses alone.
    clean = verification(bookings_stored=581, covers_stored=1424, success_events=581)

    report = build(failing_output, clean, exit_code=1, checks=checks)

    assert report["passed"] is False
    failures = "\n".join(report["failures"])
    assert "unexpected statuses {422: 35}" in failures
    assert "failed expectations 35" in failures
    assert "Artillery ensure: maxErrorRate < 0" in failures
    assert "Artillery exit code 0: exit code 1" in failures
    assert "201 responses" not in failures  # 581 = 581


def test_a_probe_that_met_no_usage_plan_fails(passing_output: dict[str, Any]) -> None:
    report = build(passing_output, verification(), checks=[], expect_rate_limit=True)

    assert report["passed"] is False
    assert report["failures"] == ["the probe met the usage plan (429): 0 requests answered 429"]


def test_no_artillery_output_fails() -> None:
    report = build(None, verification(), exit_code=2)

    assert report["passed"] is False
    assert report["artillery"]["aggregate"] is None
    assert "Artillery produced results: no output file (exit code 2)" in report["failures"]


def test_a_run_that_booked_nothing_fails(passing_output: dict[str, Any]) -> None:
    counters = passing_output["aggregate"]["counters"]
    counters["http.codes.201"] = 0
    counters["bookings.replayed_201"] = 0
    counters.pop("bookings.created_covers")

    report = build(passing_output, verification(bookings_stored=0, covers_stored=0, success_events=0))

    assert report["passed"] is False
    assert "bookings were made: 0 bookings created by 201 responses" in report["failures"]


def test_availability_mode_checks_what_it_can(passing_output: dict[str, Any]) -> None:
    verified = reports.Verification(
        mode="availability", slots=[slot("19:15", 40)], over_capacity=[], warnings=["no database access"]
    )

    report = build(passing_output, verified)

    assert report["passed"] is True
    assert report["verification"]["bookingsStored"] is None
    assert report["verification"]["duplicateIdempotencyKeys"] is None
    names = [c["name"] for c in report["verification"]["checks"]]
    assert "201 responses = bookings stored" not in names
    assert "no slot over capacity" in names


def test_faults_and_restaurant_names_are_reported(passing_output: dict[str, Any]) -> None:
    crash = {
        "kind": "db-crash",
        "startedAt": STARTED + dt.timedelta(seconds=5),
        "endedAt": "2026-11-25T09:12:14.500Z",
        "recoveredAfterMs": 2300,
    }
    over = slot("19:45", 44)

    report = build(
        passing_output,
        verification(slots=[over], over_capacity=[over]),
        checks=[],
        faults=[crash],
        restaurant_names={RESTAURANT: "Trattoria Roma"},
    )

    assert report["faults"] == [
        {
            "kind": "db-crash",
            "startedAt": "2026-11-25T09:12:12.000Z",
            "endedAt": "2026-11-25T09:12:14.500Z",
            "recoveredAfterMs": 2300,
        }
    ]
    assert report["target"]["restaurantNames"] == {RESTAURANT: "Trattoria Roma"}
    assert (
        "no slot over capacity: 1 slots reconciled, 1 over capacity; Trattoria Roma 2026-12-26 19:45: 44 > 40"
        in (report["failures"])
    )


@pytest.mark.parametrize(
    ("overrides", "failure"),
    [
        ({"acknowledged_lost": 2}, "no acknowledged booking lost: 2 bookings answered 201 are not stored"),
        (
            {"cancellations_lost": 1},
            "no acknowledged cancellation lost: 1 cancellations answered as done are not in effect",
        ),
        (
            {"history_checks": [{"check": "no booking confirmed twice", "passed": False, "detail": "1 booking"}]},
            "no booking confirmed twice: 1 booking",
        ),
    ],
)
def test_lost_acknowledgements_and_failed_history_checks_fail(
    passing_output: dict[str, Any], overrides: dict[str, Any], failure: str
) -> None:
    report = build(passing_output, verification(**overrides))

    assert report["passed"] is False
    assert report["failures"] == [failure]


def test_nothing_lost_passes_and_is_listed(passing_output: dict[str, Any]) -> None:
    history = [{"check": "every acknowledged booking readable by id", "passed": True, "detail": "156 read"}]
    report = build(passing_output, verification(acknowledged_lost=0, cancellations_lost=0, history_checks=history))

    assert report["passed"] is True
    v = report["verification"]
    assert (v["acknowledgedLost"], v["cancellationsLost"]) == (0, 0)
    assert v["historyChecks"] == history
    names = [c["name"] for c in v["checks"]]
    assert {"no acknowledged booking lost", "no acknowledged cancellation lost"} <= set(names)
    assert "every acknowledged booking readable by id" in names


def test_conflict_rate_is_conflicted_requests_over_booking_requests(passing_output: dict[str, Any]) -> None:
    events = {
        "booking.success": 156,
        "booking.capacity_exceeded": 19,
        "booking.retry_exhausted": 0,
        "booking.overbook_prevented": 3,
        "booking.conflict": 4,
    }

    report = build(passing_output, verification(events=events, conflicted_requests=7))

    v = report["verification"]
    assert v["bookingRequests"] == 175  # outcome events only
    assert v["conflictedRequests"] == 7
    assert v["conflictRate"] == pytest.approx(7 / 175)


def test_conflict_rate_is_unknown_when_not_counted(passing_output: dict[str, Any]) -> None:
    report = build(passing_output, verification())

    assert report["verification"]["conflictRate"] is None


def test_latency_thresholds_come_from_the_ensure_checks() -> None:
    ensure = [
        EnsureCheck("http.response_time.p99 < 2500", True),
        EnsureCheck("plugins.metrics-by-endpoint.response_time.POST /bookings.p95 <= 800.5", False),
        EnsureCheck("p999 < 5000", True),
        EnsureCheck("maxErrorRate < 0", True),
        EnsureCheck("vusers.session_length.p99 < 90000", True),
    ]

    limits = reports.latency_thresholds(ensure)

    assert limits == [
        {
            "metric": "http.response_time.p99",
            "scope": "all requests",
            "percentile": "p99",
            "valueMs": 2500.0,
            "passed": True,
        },
        {
            "metric": "plugins.metrics-by-endpoint.response_time.POST /bookings.p95",
            "scope": "POST /bookings",
            "percentile": "p95",
            "valueMs": 800.5,
            "passed": False,
        },
        {
            "metric": "http.response_time.p999",
            "scope": "all requests",
            "percentile": "p999",
            "valueMs": 5000.0,
            "passed": True,
        },
    ]
    assert [reports.limit_label(lim) for lim in limits] == [
        "ensure p99 < 2.5 s",
        "ensure POST /bookings p95 < 800.5 ms",
        "ensure p999 < 5 s",
    ]


def test_timeline_reduces_each_period(failing_output: dict[str, Any]) -> None:
    points = reports.timeline(failing_output["intermediate"])

    assert len(points) == len(failing_output["intermediate"])
    assert [p.period for p in points] == sorted(p.period for p in points)
    first = min(failing_output["intermediate"], key=lambda e: int(e["period"]))
    assert points[0].latency_ms.p99 == first["summaries"]["http.response_time"]["p99"]
    assert points[0].requests == first["counters"]["http.requests"]
    assert sum(p.codes.get("422", 0) for p in points) == 35


def test_parse_ensure_checks_reads_only_the_checks_block() -> None:
    lines = [
        "plugins.expect.ok: ...... 12",
        "\x1b[32mok\x1b[39m: looks like a check but is before the block",
        "Checks:",
        "\x1b[32mok\x1b[39m: http.response_time.p99 < 2500",
        "fail: maxErrorRate < 0 (optional)",
    ]

    checks = reports.parse_ensure_checks(lines)

    assert checks == [
        EnsureCheck("http.response_time.p99 < 2500", True),
        EnsureCheck("maxErrorRate < 0", False),
    ]


# --------------------------------------------------------------------------- rendering


def test_table_names_the_verdict_the_fullest_slots_and_every_check(passing_output: dict[str, Any]) -> None:
    report = make(passing_output, verification())

    table = reports.render_table(report)

    assert table.splitlines()[0] == "Load test lt-test: PASSED"
    assert "requests   270: 200 x47, 201 x204, 409 x19 (48 of the 201s replayed duplicates)" in table
    assert re.search(r"6f1c2a4e 2026-12-26 19:15\s+40\s+0\s+40\s+40\s+full", table)
    assert "ok   201 responses = bookings stored: 156 created" in table


def test_table_of_a_failed_run_says_what_failed(failing_output: dict[str, Any]) -> None:
    over = slot("19:45", 44)
    report = make(failing_output, verification(slots=[over], over_capacity=[over]), exit_code=1)

    table = reports.render_table(report)

    assert table.splitlines()[0] == "Load test lt-test: FAILED"
    assert "OVER CAPACITY" in table
    assert "FAIL no slot over capacity" in table


def test_table_uses_restaurant_names_and_says_where_the_charts_are(passing_output: dict[str, Any]) -> None:
    report = make(passing_output, verification())
    report.target.restaurant_names = {RESTAURANT: "Trattoria Roma"}

    table = reports.render_table(report, html_path=Path("reports/load-tests/20261125T091207Z.html"))

    assert "restaurants Trattoria Roma" in table
    assert re.search(r"Trattoria Roma 2026-12-26 19:15\s+40\s+0\s+40\s+40\s+full", table)
    assert table.splitlines()[-1] == "  charts     reports/load-tests/20261125T091207Z.html"


# --------------------------------------------------------------------------- the HTML page and its charts


def fixture_run(**changes: Any) -> dict[str, Any]:
    """make_report's keywords for the full run of tests/fixtures/artillery-full-unexpected-422.json
    with the verification, faults and restaurant names of tests/fixtures/report-run.json."""
    run = load_fixture("report-run.json")
    output = load_fixture("artillery-full-unexpected-422.json")
    values: dict[str, Any] = {
        "run_id": run["runId"],
        "started_at": dt.datetime.fromisoformat(run["startedAt"]),
        "finished_at": dt.datetime.fromisoformat(run["finishedAt"]),
        "base_url": run["baseUrl"],
        "restaurant_ids": run["restaurantIds"],
        "dates": run["dates"],
        "scenario": run["scenario"],
        "artillery_output": output,
        "artillery_exit_code": run["exitCode"],
        "ensure_checks": reports.parse_ensure_checks(run["ensureLines"]),
        "verification": reports.Verification(**run["verification"]),
        "hot_slots": run["hotSlots"],
        "faults": run["faults"],
        "restaurant_names": run["restaurantNames"],
    }
    values.update(changes)
    return values


def fixture_report(**changes: Any) -> LoadReport:
    return reports.make_report(**fixture_run(**changes))


def earlier_report(days_before: int, latency_factor: float, passed: bool = True) -> LoadReport:
    """An earlier run of the same scenario: the same traffic, latencies scaled by ``latency_factor``."""
    output = load_fixture("artillery-full-unexpected-422.json")
    summary = output["aggregate"]["summaries"]["http.response_time"]
    for q in ("p50", "p75", "p90", "p95", "p99", "p999", "max"):
        summary[q] = round(summary[q] * latency_factor, 1)
    started = dt.datetime(2026, 11, 25, 8, 56, 5, tzinfo=dt.UTC) - dt.timedelta(days=days_before)
    return fixture_report(
        run_id=f"lt-earlier-{days_before}",
        started_at=started,
        finished_at=started + dt.timedelta(seconds=95),
        artillery_output=output,
        artillery_exit_code=0 if passed else 1,
    )


def write_with_history(directory: Path) -> Path:
    """Three earlier runs, a file that is not a report, a run of another scenario, then the
    fixture run: its HTML page."""
    for days, factor in ((3, 0.5), (2, 0.6), (1, 0.55)):
        reports.write_report(earlier_report(days, factor), directory, f"earlier-{days}")
    (directory / "notes.json").write_text('{"not": "a report"}')
    smoke = earlier_report(1, 0.1).model_copy(update={"run_id": "lt-smoke", "scenario": "load/capacity-smoke.yml"})
    reports.write_report(smoke, directory, "smoke")  # another scenario: not in the trend
    return reports.write_report(fixture_report(), directory, "20261125T085605Z")[1]


@pytest.fixture
def full() -> LoadReport:
    return fixture_report()


def test_latency_chart_draws_each_endpoint_and_the_ensure_limit(full: LoadReport) -> None:
    spec = reports.html_context(full)["charts"]["latency"]

    assert spec["kind"] == "time"
    assert spec["x"][0] == 1795596970.0 and len(spec["x"]) == 8
    series = {s["label"]: s["values"] for s in spec["series"]}
    assert list(series) == ["availability p95", "booking p95", "booking (resend) p95", "all requests p99"]
    assert series["booking p95"] == [7, 13.1, 16, 18, 16, 16, 18, 19.1]
    assert series["booking (resend) p95"] == [None, None, None, None, 3, 7, 6, None]
    assert series["all requests p99"][0] == 10.9
    assert spec["thresholds"] == [{"label": "ensure p99 < 2.5 s", "value": 2500.0, "color": "#c92a2a"}]
    assert spec["yLog"] is True


def test_latency_falls_back_to_all_requests_without_the_endpoint_plugin(full: LoadReport) -> None:
    for point in full.timeline:
        point.endpoint_latency_ms = {}

    spec = reports.html_context(full)["charts"]["latency"]

    assert [s["label"] for s in spec["series"]] == ["all requests p50", "all requests p95", "all requests p99"]


def test_histogram_estimates_buckets_from_the_percentiles() -> None:
    summary = {
        "min": 2,
        "p50": 4,
        "p75": 7,
        "p90": 12.1,
        "p95": 13.9,
        "p99": 19.1,
        "p999": 22.9,
        "max": 27,
        "count": 270,
    }

    counts = reports.latency_histogram(summary, [0, 5, 10, 25, 50])

    # F(5) = 0.5 + 0.25 * 1/3, F(10) = 0.75 + 0.15 * 3/5.1, F(25) = 0.999 + 0.001 * 2.1/4.1, F(50) = 1
    assert counts == [158, 68, 44, 0]
    assert sum(counts) == 270


def test_histogram_draws_the_ensure_limit_between_its_buckets(full: LoadReport) -> None:
    spec = reports.html_context(full)["charts"]["latency-histogram"]

    assert spec["xLabels"][0] == "<5ms"
    assert spec["xLabels"][-2:] == ["<2.5s", "<5s"]
    requests = spec["series"][0]["values"]
    assert sum(requests) == 4720  # every request of the run, in one bucket or another
    assert requests[-1] == 0
    assert spec["series"][1]["values"][-1] == 100.0
    assert spec["xThresholds"] == [{"label": "ensure p99 < 2.5 s", "value": 8.5}]


def test_throughput_and_vusers_per_period(full: LoadReport) -> None:
    charts = reports.html_context(full)["charts"]

    throughput = {s["label"]: s["values"] for s in charts["throughput"]["series"]}
    assert throughput["all requests"] == [11, 24, 64, 74, 84, 108, 75, 53]  # Artillery's own rate
    assert throughput["booking requests"][0] == round(46 * 11 / 57, 2)
    assert throughput["bookings created"][:2] == [round(46 * 11 / 57, 2), round(189 * 24 / 234, 2)]
    vusers = {s["label"]: s["values"] for s in charts["vusers"]["series"]}
    assert vusers["in flight (peak)"] == [8, 23, 42, 71, 84, 80, 75, 75]
    assert vusers["started"] == [11, 39, 97, 120, 119, 100, 100, 44]
    assert vusers["failed"][3] == 33


def test_statuses_split_created_replays_and_refusals(full: LoadReport) -> None:
    series = {s["label"]: s["values"] for s in reports.html_context(full)["charts"]["statuses"]["series"]}

    assert series["201 created a booking"][:4] == [46, 189, 277, 68]
    assert series["409 refused: capacity_exceeded"][3] == 474
    assert series["409 refused: slot_closed"][3] == 47
    assert series["unexpected status"][3:5] == [33, 2]
    assert "429 rate limited" not in series  # none in this run: no empty line in the legend


def test_conflict_rate_per_bucket_is_the_figures_definition(full: LoadReport) -> None:
    buckets = full.events_timeline

    spec = reports.html_context(full)["charts"]["conflict-rate"]

    conflict, refused = (s["values"] for s in spec["series"])
    assert len(conflict) == len(buckets)
    for value, bucket in zip(conflict, buckets, strict=True):
        assert value == round(int(bucket["conflicts"]) / int(bucket["requests"]) * 100, 2)
    assert refused[0] == round(int(buckets[0]["booking.capacity_exceeded"]) / int(buckets[0]["requests"]) * 100, 2)
    assert full.verification.conflict_rate == pytest.approx(29 / 680)


def test_conflict_rate_is_not_made_up_from_events_without_the_count(full: LoadReport) -> None:
    for bucket in full.events_timeline:
        del bucket["conflicts"]

    spec = reports.html_context(full)["charts"]["conflict-rate"]

    assert spec["series"][0]["values"] == [None] * len(full.events_timeline)


def test_faults_are_bands_on_every_time_chart(full: LoadReport) -> None:
    charts = reports.html_context(full)["charts"]

    band = {"from": 1795597000.0, "to": 1795597006.5, "label": "db-crash"}
    for name in ("latency", "throughput", "vusers", "statuses", "conflict-rate"):
        assert charts[name]["bands"] == [band], name


def test_a_fault_that_never_healed_is_shaded_to_the_end_of_the_run(full: LoadReport) -> None:
    full.faults[0].ended_at = None
    full.faults[0].recovered_after_ms = None

    context = reports.html_context(full)

    assert context["charts"]["latency"]["bands"] == [
        {"from": 1795597000.0, "to": reports._epoch(full.finished_at), "label": "db-crash"}
    ]
    assert context["faults"][0]["recovered"] == "no booking answered after it"
    assert "  fault      db-crash 2026-11-25T08:56:40.000Z .. never healed: no booking answered after it" in (
        reports.render_table(full).splitlines()
    )


def test_heatmap_has_a_cell_per_slot_with_the_restaurant_name(full: LoadReport) -> None:
    heatmap = reports.html_context(full)["heatmap"]

    assert heatmap["points"] == len(full.verification.slots)
    labels = [row["label"] for row in heatmap["rows"]]
    assert labels[:2] == ["Le Petit Bistro & Bar 2026-12-26", "Le Petit Bistro & Bar 2026-12-27"]
    roma = heatmap["rows"][2]
    assert roma["label"] == "Trattoria Roma 2026-12-26"
    hot = roma["cells"][heatmap["times"].index("19:15")]
    assert hot["title"].startswith("Trattoria Roma 2026-12-26 19:15: 40 covers confirmed, max 40")
    assert hot["color"] == "hsl(135, 55%, 30%)"  # full


def test_trend_compares_the_last_runs_and_names_the_regression(tmp_path: Path) -> None:
    directory = tmp_path / "load-tests"
    html_path = write_with_history(directory)
    report = LoadReport.read(json.loads(html_path.with_suffix(".json").read_text()))

    earlier = reports.earlier_reports(directory, report)
    context = reports.html_context(report, earlier)

    assert [r.run_id for r in earlier] == ["lt-earlier-3", "lt-earlier-2", "lt-earlier-1"]
    spec = context["charts"]["trend"]
    p95 = next(s for s in spec["series"] if s["label"] == "p95 latency")["values"]
    assert p95 == [8.0, 9.6, 8.8, 16]
    assert spec["xLabels"][-1] == "11-25 08:56 (this run)"
    assert context["trend"][-1]["worse"] == ["p95", "p99"]
    assert context["regressions"][0] == "p95 latency 16 vs 8.8 (median of the 3 earlier runs)"


def test_page_has_every_chart_checks_first_and_the_trend(tmp_path: Path) -> None:
    page = write_with_history(tmp_path / "load-tests").read_text()

    for name in reports.html_context(fixture_report())["charts"]:
        assert f'data-chart="{name}"' in page
    assert 'data-chart="capacity-heatmap" data-points="96"' in page
    assert page.index("<h2>Checks</h2>") < page.index("data-chart=")
    assert "lt-earlier-3" in page and "p95 latency 16 vs 8.8" in page
    assert "lt-smoke" not in page
    # No scripts, stylesheets or images from anywhere: the page must open offline.
    assert not re.search(r"<script[^>]+src=|<link|<img|@import|url\(", page, re.IGNORECASE)


def older_document(report: LoadReport) -> dict[str, Any]:
    """The report as an earlier version wrote it: without faults, restaurant names, the history
    checks and conflict figures, per-endpoint latency and rates."""
    document = report.as_json()
    for key in ("faults", "eventsTimeline"):
        del document[key]
    del document["target"]["restaurantNames"]
    for key in ("acknowledgedLost", "cancellationsLost", "historyChecks", "conflictRate", "conflictedRequests"):
        del document["verification"][key]
    for point in document["timeline"]:
        for key in ("endpointLatencyMs", "requestRate", "replayed201", "slotClosed", "vusersCreated"):
            del point[key]
    return document


def test_a_report_written_before_these_charts_still_renders(full: LoadReport) -> None:
    page = reports.render_html(LoadReport.read(older_document(full)), earlier=[fixture_report()])

    assert "None: this run injected no faults." in page
    assert "6f1c2a4e 2026-12-26" in page  # the id's first characters stand in for the name


def test_an_earlier_report_without_the_newer_fields_is_in_the_trend(tmp_path: Path) -> None:
    old = older_document(earlier_report(1, 0.5))
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "broken.json").write_text('{"runId": "lt-broken", "startedAt": "2026-11-20T00:00:00Z"}')
    current = fixture_report()

    earlier = reports.earlier_reports(tmp_path, current)

    assert [r.run_id for r in earlier] == ["lt-earlier-1"]  # the one without target/artillery is no report
    assert earlier[0].faults == [] and earlier[0].target.restaurant_names == {}
    assert earlier[0].verification.conflict_rate is None
    trend = reports.html_context(current, earlier)["trend"]
    assert [row["runId"] for row in trend] == ["lt-earlier-1", current.run_id]
    assert trend[0]["p95"] == round(16 * 0.5, 1)
    assert trend[0]["conflictRate"] is None


def test_html_escapes_what_it_shows(passing_output: dict[str, Any]) -> None:
    report = make(passing_output, verification())
    report.run_id = "<script>alert(1)</script>"
    report.target.restaurant_names = {RESTAURANT: "Bistro <b>&</b>"}

    page = reports.render_html(report)

    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Bistro &lt;b&gt;&amp;&lt;/b&gt;" in page


def test_html_of_a_failed_run_lists_the_failures(failing_output: dict[str, Any]) -> None:
    report = make(
        failing_output, verification(bookings_stored=581, covers_stored=1424, success_events=581), exit_code=1
    )

    page = reports.render_html(report)

    assert "FAILED" in page
    assert "unexpected statuses {422: 35}" in page
