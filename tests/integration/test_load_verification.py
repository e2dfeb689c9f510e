"""The load test's verification against a real PostgreSQL: bookings made through the real
handler pass; an over-capacity slot planted by SQL (bypassing the guard), duplicate
Idempotency-Keys and a 201 count that does not match the stored rows each make it fail; so do a
client history holding an acknowledged booking or cancellation the database lost, a database with
a duplicated booking, and a fault that never healed."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from capctl import load as load_test
from capctl import report as reports
from tests.support import FUTURE_DATE, RESTAURANT_ID, booking_body, invoke, post_booking_event, with_header

pytestmark = pytest.mark.integration

RUN = "lt-verify-1"
DATE = dt.date.fromisoformat(FUTURE_DATE)
EVENING = [f"{h}:{m:02d}" for h in range(17, 22) for m in (0, 15, 30, 45)]
SINCE = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def plan() -> load_test.Plan:
    """The plan as the runner makes it: the test restaurant's evening, empty before the run."""
    before = [{"time": t, "maxCovers": 20, "bookedCovers": 0, "remainingCovers": 20} for t in EVENING]
    hot = [{"restaurantId": RESTAURANT_ID, "date": FUTURE_DATE, "time": "19:00"}]
    return load_test.Plan(RUN, [RESTAURANT_ID], [DATE], {(RESTAURANT_ID, DATE): before}, hot)


def book(app: Any, key: str, time: str, party: int, run_id: str = RUN) -> tuple[int, dict[str, Any]]:
    event = post_booking_event(booking_body(time=time, partySize=party, source="load-test"), key=key)
    status, _headers, body = invoke(app, with_header(event, "X-Run-Id", run_id))
    return status, body


def insert_booking(
    conn: Any, *, time: str, party: int, key: str, run_id: str = RUN, tenant: str = "id-tenant-a"
) -> None:
    """A confirmed booking written straight to the table, as a bug bypassing the guard would."""
    conn.execute(
        """INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source,
                                 idempotency_key, tenant, run_id, guest_name)
           VALUES (%s, %s, %s, %s, %s, 'confirmed', 'load-test', %s, %s, %s, 'Load Test Diner')""",
        (uuid.uuid4(), RESTAURANT_ID, DATE, time, party, key, tenant, run_id),
    )
    conn.execute(
        """INSERT INTO slot_usage (restaurant_id, slot_date, slot_time, booked_covers) VALUES (%s, %s, %s, %s)
           ON CONFLICT (restaurant_id, slot_date, slot_time)
           DO UPDATE SET booked_covers = slot_usage.booked_covers + EXCLUDED.booked_covers""",
        (RESTAURANT_ID, DATE, time, party),
    )


def aggregate(created: int, replayed_201: int = 0, covers: int | None = None) -> dict[str, Any]:
    """Artillery's aggregate as the scenario's counters would have it."""
    counters = {
        "http.codes.201": created + replayed_201,
        "bookings.created": created,
        "bookings.replayed_201": replayed_201,
        "bookings.replayed": replayed_201,
        "vusers.created": 3,
        "vusers.completed": 3,
    }
    if covers is not None:
        counters["bookings.created_covers"] = covers
    return {"aggregate": {"counters": counters, "summaries": {}, "rates": {}}, "intermediate": []}


def report_for(verified: reports.Verification, output: dict[str, Any]) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return reports.make_report(
        run_id=RUN,
        started_at=now,
        finished_at=now,
        base_url="http://127.0.0.1:3000",
        restaurant_ids=[RESTAURANT_ID],
        dates=[FUTURE_DATE],
        scenario="load/capacity-smoke.yml",
        artillery_output=output,
        artillery_exit_code=0,
        ensure_checks=[],
        verification=verified,
    ).as_json()


@pytest.fixture
def three_bookings(booking_app: Any) -> Any:
    """Three bookings of the run through the real handler (one replayed), 9 covers at 19:00."""
    assert book(booking_app, "lt-k1", "19:00", 4)[0] == 201
    assert book(booking_app, "lt-k2", "19:00", 3)[0] == 201
    assert book(booking_app, "lt-k3", "19:00", 2)[0] == 201
    status, body = book(booking_app, "lt-k1", "19:00", 4)  # the deliberate duplicate: a replay
    assert status == 201 and body["capacity"]["bookedCovers"] == 4
    return booking_app


def test_a_clean_run_verifies_and_passes(three_bookings: Any, conn: Any) -> None:
    verified = load_test.verify_in_database(conn, plan(), SINCE)

    assert verified.over_capacity == []
    assert verified.bookings_stored == 3
    assert verified.covers_stored == 9
    assert verified.duplicate_keys == 0
    assert verified.ledger_mismatches == []
    assert verified.events == {
        "booking.capacity_exceeded": 0,
        "booking.conflict": 0,
        "booking.overbook_prevented": 0,
        "booking.retry_exhausted": 0,
        "booking.success": 3,
    }
    at_seven = next(s for s in verified.slots if s["time"] == "19:00")
    assert at_seven == {
        "restaurantId": RESTAURANT_ID,
        "date": FUTURE_DATE,
        "time": "19:00",
        "maxCovers": 20,
        "confirmedCovers": 9,
        "bookedBefore": 0,
        "byRun": 9,
    }
    assert len(verified.slots) == len(EVENING)

    report = report_for(verified, aggregate(created=3, replayed_201=1, covers=9))

    assert report["passed"] is True, report["failures"]
    assert report["verification"]["responses201"] == 3
    assert report["verification"]["bookingsStored"] == 3


def test_a_planted_over_capacity_slot_fails_the_run(three_bookings: Any, conn: Any) -> None:
    # 9 covers booked properly; 12 more written past the guard: 21 > 20.
    insert_booking(conn, time="19:00", party=12, key="lt-planted")

    verified = load_test.verify_in_database(conn, plan(), SINCE)
    report = report_for(verified, aggregate(created=4, replayed_201=1, covers=21))

    assert report["passed"] is False
    assert report["verification"]["overCapacitySlots"] == [
        {"restaurantId": RESTAURANT_ID, "date": FUTURE_DATE, "time": "19:00", "maxCovers": 20, "confirmedCovers": 21}
    ]
    assert report["failures"] == [
        f"no slot over capacity: {len(EVENING)} slots reconciled, 1 over capacity; "
        f"{RESTAURANT_ID[:8]} {FUTURE_DATE} 19:00: 21 > 20",
        # A row written past the booking path has no outcome event either.
        "one booking.success event per booking: 3 events, 4 bookings",
    ]


def test_an_over_capacity_slot_outside_the_planned_times_is_found(booking_app: Any, conn: Any) -> None:
    # 16:45 is before opening (closed: capacity 0), so availability never listed it; a confirmed
    # booking there can only come from a bug, and reconciliation must still see it.
    insert_booking(conn, time="16:45", party=2, key="lt-off-grid")

    verified = load_test.verify_in_database(conn, plan(), SINCE)

    assert [(s["time"], s["maxCovers"], s["confirmedCovers"]) for s in verified.over_capacity] == [("16:45", 0, 2)]


def test_duplicate_idempotency_keys_are_detected(three_bookings: Any, conn: Any) -> None:
    insert_booking(conn, time="19:15", party=2, key="lt-k2")  # a second booking under an existing key

    verified = load_test.verify_in_database(conn, plan(), SINCE)
    report = report_for(verified, aggregate(created=4, replayed_201=1, covers=11))

    assert verified.duplicate_keys == 1
    assert report["passed"] is False
    assert "one booking per Idempotency-Key: 1 key with more than one booking" in report["failures"]


def test_201_count_mismatch_is_detected(three_bookings: Any, conn: Any) -> None:
    verified = load_test.verify_in_database(conn, plan(), SINCE)
    # Artillery saw 4 bookings created, the database holds 3 for the run.
    report = report_for(verified, aggregate(created=4, replayed_201=1, covers=9))

    assert report["passed"] is False
    assert (
        "201 responses = bookings stored: 4 created (201s minus 1 replays), 3 stored for the run" in report["failures"]
    )


def test_ledger_out_of_step_with_bookings_is_detected(three_bookings: Any, conn: Any) -> None:
    conn.execute(
        "UPDATE slot_usage SET booked_covers = booked_covers - 1 WHERE restaurant_id = %s AND slot_time = '19:00'",
        (RESTAURANT_ID,),
    )

    verified = load_test.verify_in_database(conn, plan(), SINCE)

    assert verified.ledger_mismatches == [
        {"restaurantId": RESTAURANT_ID, "date": FUTURE_DATE, "time": "19:00", "ledger": 8, "confirmedCovers": 9}
    ]


def test_only_the_runs_rows_and_events_count(three_bookings: Any, conn: Any) -> None:
    status, _ = book(three_bookings, "other-k1", "19:30", 2, run_id="another-run")
    assert status == 201
    book(three_bookings, "lt-k4", "19:00", 12)  # refused: 9 + 12 > 20

    verified = load_test.verify_in_database(conn, plan(), SINCE)

    assert verified.bookings_stored == 3
    assert {k: v for k, v in verified.events.items() if v} == {"booking.success": 3, "booking.capacity_exceeded": 1}
    # The other run's booking is no run's concern but still counts for the slot's capacity.
    assert next(s for s in verified.slots if s["time"] == "19:30")["confirmedCovers"] == 2
    assert next(s for s in verified.slots if s["time"] == "19:30")["byRun"] == 0
    timeline = verified.events_timeline
    assert sum(sum(v for k, v in b.items() if k.startswith("booking.")) for b in timeline) == 4
    # booking requests and conflicts per bucket, counted as capacity.figures counts them
    assert sum(b.get("requests", 0) for b in timeline) == 4
    assert sum(b.get("conflicts", 0) for b in timeline) == 0
    assert verified.conflicted_requests == 0


# --------------------------------------------------------------------------- the history


def write_history(path: Any, rows: list[dict[str, Any]]) -> Any:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def acknowledged(conn: Any) -> list[dict[str, Any]]:
    """A 201 row of the history for every booking of the run, as the diners would have written."""
    rows = conn.execute(
        "SELECT id::text AS id, idempotency_key AS key FROM bookings WHERE run_id = %s ORDER BY created_at", (RUN,)
    ).fetchall()
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    return [{"t": now_ms, "op": "book", "key": r["key"], "status": 201, "bookingId": r["id"]} for r in rows]


def test_a_history_that_matches_the_database_passes(three_bookings: Any, conn: Any, tmp_path: Any) -> None:
    history = write_history(tmp_path / "h.jsonl", acknowledged(conn))
    verified = load_test.verify_in_database(conn, plan(), SINCE)

    faults = load_test.verify_history(conn, verified, RUN, history, [])
    report = report_for(verified, aggregate(created=3, replayed_201=1, covers=9))

    assert faults == []
    assert (verified.acknowledged_lost, verified.cancellations_lost) == (0, 0)
    assert report["passed"] is True, report["failures"]
    assert report["verification"]["acknowledgedLost"] == 0
    assert {c["check"] for c in verified.history_checks} == {
        "every replay returned the original booking",
        "no key has two bookings",
    }


def test_an_acknowledged_booking_missing_from_the_database_fails_the_run(
    three_bookings: Any, conn: Any, tmp_path: Any
) -> None:
    rows = acknowledged(conn)
    rows.append({**rows[0], "key": "lt-lost", "bookingId": str(uuid.uuid4())})  # a 201 nobody stored
    history = write_history(tmp_path / "h.jsonl", rows)
    verified = load_test.verify_in_database(conn, plan(), SINCE)

    load_test.verify_history(conn, verified, RUN, history, [])
    report = report_for(verified, aggregate(created=3, replayed_201=1, covers=9))

    assert verified.acknowledged_lost == 1
    assert report["verification"]["acknowledgedLost"] == 1
    assert report["passed"] is False
    assert any(f.startswith("no acknowledged booking lost") for f in report["failures"])


def test_an_acknowledged_cancel_not_in_effect_fails_the_run(three_bookings: Any, conn: Any, tmp_path: Any) -> None:
    rows = acknowledged(conn)
    rows.append({"t": rows[0]["t"] + 1, "op": "cancel", "status": 200, "bookingId": rows[0]["bookingId"]})
    history = write_history(tmp_path / "h.jsonl", rows)
    verified = load_test.verify_in_database(conn, plan(), SINCE)

    load_test.verify_history(conn, verified, RUN, history, [])

    assert verified.cancellations_lost == 1
    assert report_for(verified, aggregate(created=3, replayed_201=1, covers=9))["passed"] is False


def test_a_database_with_a_duplicated_booking_fails_the_history_check(
    three_bookings: Any, conn: Any, tmp_path: Any
) -> None:
    history = write_history(tmp_path / "h.jsonl", acknowledged(conn))
    insert_booking(conn, time="19:15", party=2, key="lt-k2")  # a second booking under an existing key
    verified = load_test.verify_in_database(conn, plan(), SINCE)

    load_test.verify_history(conn, verified, RUN, history, [])

    failed = [c for c in verified.history_checks if not c["passed"]]
    assert [c["check"] for c in failed] == ["no key has two bookings"]
    assert "1 key with more than one" in failed[0]["detail"]


def test_a_fault_that_did_not_heal_or_an_empty_history_fails(three_bookings: Any, conn: Any, tmp_path: Any) -> None:
    verified = load_test.verify_in_database(conn, plan(), SINCE)
    broken = {"kind": "db-crash", "startedAt": "2026-11-30T01:00:00.000Z", "endedAt": None, "error": "RuntimeError: x"}

    faults = load_test.verify_history(conn, verified, RUN, tmp_path / "none.jsonl", [broken])

    assert faults == [{"kind": "db-crash", "startedAt": broken["startedAt"], "endedAt": None, "recoveredAfterMs": None}]
    failed = {c["check"] for c in verified.history_checks if not c["passed"]}
    assert failed == {
        "answered a booking again after db-crash",
        "db-crash was injected and healed",
        "the diners recorded their history",
    }
