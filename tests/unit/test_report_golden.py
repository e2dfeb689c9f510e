"""The load report's JSON as written before it was built through typed models (issue 13,
point 7): the same inputs must give the same document, keys, values, nesting and member order.

tests/fixtures/load-report-golden/<case>.json were written by the dict-building code of commit
5ac79f2 from exactly the inputs of :func:`cases` (``json.dumps(report, indent=2) + "\\n"``, as
``capctl load`` writes its report)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from capctl import report as reports
from capctl.cleanup import CleanupResult
from capctl.load_report import LoadReport
from tests.unit.test_report import RESTAURANT, STARTED, fixture_run, load_fixture, slot, smoke_run

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "load-report-golden"
OTHER = "0b5e8c1a-3f2d-4e6b-8a9c-7d1e2f3a4b5c"


def _smoke(verification: reports.Verification, **changes: Any) -> dict[str, Any]:
    output = load_fixture("artillery-smoke-pass.json")
    return smoke_run(output, verification, **{"run_id": "lt-golden", **changes})


def _faulted() -> dict[str, Any]:
    """A database run with faults (one never healed, one with datetimes), history checks, a
    ledger mismatch, a slot only the reconciliation found (bookedBefore null) and events per bucket."""
    over = slot("19:45", 44)
    found_later = {
        "restaurantId": OTHER,
        "date": "2026-12-27",
        "time": "20:00",
        "bookedBefore": None,
        "byRun": 0,
        "maxCovers": None,
        "confirmedCovers": 3,
    }
    verification = reports.Verification(
        mode="database",
        slots=[slot("19:15", 40), over, found_later],
        over_capacity=[over],
        bookings_stored=150,
        covers_stored=380,
        duplicate_keys=1,
        success_events=149,
        ledger_mismatches=[
            {"restaurantId": RESTAURANT, "date": "2026-12-26", "time": "19:45", "ledger": 40, "confirmedCovers": 44}
        ],
        events={"booking.success": 149, "booking.conflict": 6, "booking.capacity_exceeded": 19},
        events_timeline=[
            {
                "t": "2026-11-25T09:12:05Z",
                "booking.success": 100,
                "booking.conflict": 4,
                "requests": 110,
                "conflicts": 5,
            },
            {"t": "2026-11-25T09:12:10Z", "booking.success": 49, "booking.capacity_exceeded": 19},
        ],
        warnings=["a warning"],
        acknowledged_lost=1,
        cancellations_lost=0,
        history_checks=[
            {"check": "replays return the original booking", "passed": True, "detail": "48 replays"},
            {"check": "db-stall was injected and healed", "passed": False, "detail": "pg_ctl failed"},
        ],
        conflicted_requests=7,
    )
    faults = [
        {
            "kind": "db-crash",
            "startedAt": STARTED + dt.timedelta(seconds=5),
            "endedAt": STARTED + dt.timedelta(seconds=7, microseconds=500_000),
            "recoveredAfterMs": 2300,
        },
        {"kind": "db-stall", "startedAt": "2026-11-25T09:12:15.000Z", "endedAt": None, "recoveredAfterMs": None},
    ]
    return _smoke(
        verification,
        run_id="lt-golden-faults",
        artillery_exit_code=1,
        ensure_checks=reports.parse_ensure_checks(["Checks:", "ok: p99 < 2500", "fail: maxErrorRate < 0"]),
        expect_rate_limit=True,
        faults=faults,
        restaurant_names={RESTAURANT: "Trattoria Roma", OTHER: "Le Petit Bistro & Bar"},
        restaurant_ids=[RESTAURANT, OTHER],
    )


def cases() -> dict[str, dict[str, Any]]:
    """make_report's keyword arguments for each golden report (build_report's when they were written)."""
    clean = reports.Verification(
        mode="database",
        slots=[slot("19:15", 40), slot("19:30", 39)],
        over_capacity=[],
        bookings_stored=156,
        covers_stored=385,
        duplicate_keys=0,
        success_events=156,
        events={"booking.success": 156, "booking.capacity_exceeded": 19},
    )
    availability = reports.Verification(
        mode="availability",
        slots=[{**slot("19:15", 40), "byRun": None}, slot("19:30", 3, max_covers=None) | {"byRun": None}],
        over_capacity=[],
        warnings=["no database access: stored bookings, duplicate keys and events were not checked"],
    )
    return {
        "full": fixture_run(),
        "clean": _smoke(clean),
        "availability": _smoke(availability),
        "no-output": _smoke(clean, artillery_output=None, artillery_exit_code=2, ensure_checks=[]),
        "faulted": _faulted(),
    }


def written(name: str) -> str:
    """The report file of a case as ``capctl load`` writes it, after its cleanup."""
    report = reports.make_report(**cases()[name])
    if name == "clean":
        report.cleanup = CleanupResult("load-test", "lt-golden", 156, 150, 380, 12, 156)
    elif name == "availability":
        report.cleanup = None  # no database: the cleanup was skipped
    return report.dumps()


@pytest.mark.parametrize("name", ["full", "clean", "availability", "no-output"])
def test_the_typed_report_writes_the_same_file_as_before(name: str) -> None:
    assert written(name) == (GOLDEN / f"{name}.json").read_text()


def test_a_slot_only_the_reconciliation_found_keeps_its_members_in_the_usual_order() -> None:
    # Before the models, such a slot's dict was built in another order (bookedBefore and byRun
    # first); every slot now has the members in one order. Same members, same values.
    golden = json.loads((GOLDEN / "faulted.json").read_text())
    text = written("faulted")
    document = json.loads(text)

    assert document == golden
    assert list(document) == list(golden)
    assert list(document["verification"]) == list(golden["verification"])
    found_later = document["verification"]["slots"][2]
    assert list(found_later) == [
        "restaurantId",
        "date",
        "time",
        "maxCovers",
        "confirmedCovers",
        "bookedBefore",
        "byRun",
    ]
    assert text.replace(" ", "").count('"bookedBefore":null') == 1


def test_a_run_kept_with_keep_has_no_cleanup_member() -> None:
    report = reports.make_report(**cases()["clean"])

    assert "cleanup" not in report.as_json()
    report.cleanup = None
    assert report.as_json()["cleanup"] is None


@pytest.mark.parametrize("name", ["full", "clean", "availability", "no-output", "faulted"])
def test_a_written_report_reads_back_to_the_same_report(name: str) -> None:
    text = written(name)

    assert LoadReport.read(json.loads(text)).dumps() == text
