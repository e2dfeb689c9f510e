"""The history checker (capctl.history): each check passes on a consistent history and fails on
the one inconsistency it exists for (a lost acknowledgement, a lost cancellation, a replay with
another booking, a key with two bookings, a ledger off its recount, a fault never recovered)."""

from __future__ import annotations

import json
from pathlib import Path

from capctl import history as hist
from capctl.history import Outcome, StoredBooking

T0 = hist._epoch_ms("2026-11-30T01:43:20Z")


def book(t: int, key: str, booking_id: str | None, status: int | None = 201, replayed: bool = False) -> Outcome:
    return Outcome(t=t, op="book", status=status, key=key, booking_id=booking_id, replayed=replayed)


def cancel(t: int, booking_id: str, status: int | None = 200) -> Outcome:
    return Outcome(t=t, op="cancel", status=status, booking_id=booking_id)


def stored(booking_id: str, key: str, status: str = "confirmed", tenant: str = "t1") -> StoredBooking:
    return StoredBooking(booking_id, key, tenant, status)


def checks_by_name(verdict: hist.HistoryVerdict) -> dict[str, bool]:
    return {c["check"]: c["passed"] for c in verdict.checks}


CONSISTENT = [
    book(T0, "k1", "b1"),
    book(T0 + 10, "k2", None, status=None),  # a timeout ...
    book(T0 + 900, "k2", "b2", replayed=True),  # ... retried: the answer the first attempt lost
    cancel(T0 + 1000, "b1"),
]
STORED = [stored("b1", "k1", "cancelled"), stored("b2", "k2")]


def test_a_consistent_history_passes_every_check() -> None:
    verdict = hist.check_history(CONSISTENT, STORED)

    assert verdict.passed, verdict.checks
    assert verdict.acknowledged_lost == 0
    assert verdict.cancellations_lost == 0
    assert len(verdict.checks) == 5


def test_a_201_whose_booking_is_not_stored_is_an_acknowledgement_lost() -> None:
    verdict = hist.check_history(CONSISTENT, [stored("b1", "k1", "cancelled")])

    assert verdict.acknowledged_lost == 1
    assert checks_by_name(verdict)["every acknowledged booking is stored"] is False
    assert not verdict.passed


def test_every_201_counts_not_only_the_first_of_its_key() -> None:
    history = [*CONSISTENT, book(T0 + 2000, "k2", "b-ghost", replayed=True)]

    verdict = hist.check_history(history, STORED)

    assert verdict.acknowledged_lost == 1
    assert checks_by_name(verdict)["every replay returned the original booking"] is False


def test_a_booking_stored_under_another_key_does_not_count_as_the_acknowledged_one() -> None:
    verdict = hist.check_history(CONSISTENT, [stored("b1", "k1", "cancelled"), stored("b2", "other")])

    assert verdict.acknowledged_lost == 1


def test_an_acknowledged_cancel_of_a_booking_still_confirmed_is_a_cancellation_lost() -> None:
    verdict = hist.check_history(CONSISTENT, [stored("b1", "k1", "confirmed"), stored("b2", "k2")])

    assert verdict.cancellations_lost == 1
    assert checks_by_name(verdict)["every acknowledged cancellation is cancelled"] is False


def test_a_cancel_whose_answer_was_lost_is_not_counted() -> None:
    history = [book(T0, "k1", "b1"), cancel(T0 + 5, "b1", status=None)]

    verdict = hist.check_history(history, [stored("b1", "k1", "confirmed")])

    assert verdict.cancellations_lost == 0 and verdict.passed


def test_a_replay_answering_another_booking_fails() -> None:
    history = [*CONSISTENT, book(T0 + 2000, "k1", "b9", replayed=True)]

    verdict = hist.check_history(history, STORED)

    assert checks_by_name(verdict)["every replay returned the original booking"] is False


def test_a_key_with_two_bookings_fails() -> None:
    verdict = hist.check_history(CONSISTENT, [*STORED, stored("b3", "k2")])

    assert checks_by_name(verdict)["no key has two bookings"] is False
    # the same key under another tenant (API key) is another request
    assert hist.check_history(CONSISTENT, [*STORED, stored("b3", "k2", tenant="t2")]).passed


def test_a_ledger_off_its_recount_fails() -> None:
    mismatch = [{"restaurantId": "r", "date": "2026-12-30", "time": "19:00", "ledger": 6, "confirmedCovers": 4}]

    verdict = hist.check_history(CONSISTENT, STORED, ledger_mismatches=mismatch)

    assert checks_by_name(verdict)["slot ledger = recount from bookings"] is False


def test_recovery_is_measured_from_the_fault_end_to_the_next_201() -> None:
    fault = {"kind": "db-crash", "startedAt": "2026-11-30T01:43:19Z", "endedAt": "2026-11-30T01:43:20Z"}

    verdict = hist.check_history(CONSISTENT, STORED, faults=[fault])

    assert verdict.faults == [{**fault, "recoveredAfterMs": 0}]
    assert checks_by_name(verdict)["answered a booking again after db-crash"] is True


def test_a_fault_with_no_201_after_it_or_too_late_fails() -> None:
    late = {"kind": "db-stall", "startedAt": "2026-11-30T01:43:20Z", "endedAt": "2026-11-30T01:43:21Z"}
    never = {"kind": "instance-kill", "startedAt": "2026-11-30T01:44:00Z", "endedAt": "2026-11-30T01:44:00Z"}

    verdict = hist.check_history(CONSISTENT, STORED, faults=[late, never], bound_ms=500)

    assert [f["recoveredAfterMs"] for f in verdict.faults] == [None, None]
    assert checks_by_name(verdict)["answered a booking again after instance-kill"] is False
    slow = hist.check_history([book(T0 + 1800, "k1", "b1")], [stored("b1", "k1")], faults=[late], bound_ms=500)
    assert slow.faults[0]["recoveredAfterMs"] == 800
    assert not slow.passed


def test_read_history_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    rows = [
        {"t": T0 + 5, "op": "book", "key": "k1", "status": 201, "bookingId": "b1", "replayed": False},
        {"t": T0, "op": "cancel", "status": None, "bookingId": "b1", "error": "ETIMEDOUT"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"t": 17644')

    outcomes = hist.read_history(path)

    assert [(o.op, o.status, o.error) for o in outcomes] == [("cancel", None, "ETIMEDOUT"), ("book", 201, None)]
    assert hist.read_history(tmp_path / "missing.jsonl") == []
