"""`capctl cleanup`: removes only the synthetic bookings asked for, gives their covers back to
the slot ledger exactly, deletes their idempotency records, leaves live bookings and events alone,
and refuses live sources."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from capacity.reconcile import slot_states
from capctl import cli
from capctl.apigw import rest_event
from capctl.cleanup import remove_synthetic
from capctl.errors import UserError
from tests.support import FUTURE_DATE, RESTAURANT_ID, booking_body, invoke, post_booking_event, with_header

pytestmark = pytest.mark.integration


def usage(conn: Any, time: str) -> int:
    row = conn.execute(
        "SELECT booked_covers FROM slot_usage WHERE restaurant_id = %s AND slot_date = %s AND slot_time = %s",
        (RESTAURANT_ID, FUTURE_DATE, time),
    ).fetchone()
    return int(row["booked_covers"]) if row else 0


def bookings(conn: Any) -> list[tuple[str, str | None, int, str]]:
    rows = conn.execute(
        "SELECT source, run_id, party_size, status FROM bookings ORDER BY source, run_id NULLS FIRST, party_size"
    )
    return [(r["source"], r["run_id"], r["party_size"], r["status"]) for r in rows]


def keys(conn: Any) -> set[str]:
    return {r["key"] for r in conn.execute("SELECT key FROM idempotency_keys")}


@pytest.fixture
def book(booking_app: Any) -> Callable[..., tuple[int, dict[str, Any]]]:
    """A booking through the real handler; ``run_id`` sends X-Run-Id."""

    def make(
        key: str, time: str, party: int, source: str = "load-test", run_id: str | None = None, api_key: str = "tenant-a"
    ) -> tuple[int, dict[str, Any]]:
        event = post_booking_event(booking_body(time=time, partySize=party, source=source), key=key, api_key=api_key)
        if run_id is not None:
            event = with_header(event, "X-Run-Id", run_id)
        status, _headers, body = invoke(booking_app, event)
        return status, body

    return make


@pytest.fixture
def mixed(book: Callable[..., tuple[int, dict[str, Any]]], booking_app: Any) -> Any:
    """19:00 holds run A (3 + 3, and a cancelled 2), run B (4) and a live booking (5): 15 covers.
    20:00 holds run A (6). A refused run-A request stored a 409 under its key."""
    assert book("a-1", "19:00", 3, run_id="run-a")[0] == 201
    assert book("a-2", "19:00", 3, run_id="run-a")[0] == 201
    status, body = book("a-3", "19:00", 2, run_id="run-a")
    assert status == 201
    cancel = rest_event("DELETE", f"/bookings/{body['booking']['id']}", api_key="tenant-a", api_key_id="id-tenant-a")
    assert invoke(booking_app, cancel)[0] == 200
    assert book("a-4", "20:00", 6, run_id="run-a")[0] == 201
    assert book("b-1", "19:00", 4, run_id="run-b")[0] == 201
    assert book("live-1", "19:00", 5, source="web")[0] == 201
    assert book("a-5", "19:00", 12, run_id="run-a")[0] == 409  # 15 + 12 > 20
    return booking_app


def test_cleanup_of_one_run_frees_exactly_its_covers(mixed: Any, conn: Any) -> None:
    events_before = conn.execute("SELECT count(*) AS n FROM observability_events").fetchone()["n"]
    assert usage(conn, "19:00") == 15 and usage(conn, "20:00") == 6

    result = remove_synthetic(conn, source="load-test", run_id="run-a")

    # The load report's "cleanup" member, key order included.
    assert json.dumps(result.as_json()) == json.dumps(
        {
            "source": "load-test",
            "runId": "run-a",
            "bookings": 4,
            "confirmed": 3,
            "coversFreed": 12,
            "slots": 2,
            "idempotencyKeys": 4,
            "dryRun": False,
        }
    )
    assert result.describe() == (
        "removed 4 bookings (source load-test, run run-a): 3 confirmed, 12 covers freed in 2 slots, "
        "4 idempotency keys deleted"
    )
    assert bookings(conn) == [("load-test", "run-b", 4, "confirmed"), ("web", None, 5, "confirmed")]
    assert usage(conn, "19:00") == 9  # 15 - 3 - 3 (the cancelled 2 had already been freed)
    assert usage(conn, "20:00") == 0
    # The run's booking keys are gone; the refusal's stored 409 and the others stay.
    assert keys(conn) == {"b-1", "live-1", "a-5"}
    # Events are history: they stay.
    assert conn.execute("SELECT count(*) AS n FROM observability_events").fetchone()["n"] == events_before
    # The ledger and the bookings agree again, slot by slot.
    for state in slot_states(conn, restaurant_ids=[uuid.UUID(RESTAURANT_ID)]):
        assert usage(conn, state.time.strftime("%H:%M")) == state.confirmed_covers


def test_cleanup_without_a_run_removes_every_synthetic_booking_and_no_live_one(mixed: Any, conn: Any) -> None:
    result = remove_synthetic(conn, source="load-test")

    assert (result.bookings, result.covers_freed) == (5, 16)
    assert bookings(conn) == [("web", None, 5, "confirmed")]
    assert usage(conn, "19:00") == 5


def test_freed_covers_can_be_booked_and_a_deleted_key_does_not_replay(
    mixed: Any, conn: Any, book: Callable[..., tuple[int, dict[str, Any]]]
) -> None:
    remove_synthetic(conn, source="load-test", run_id="run-a")

    # 9 of 20 covers left booked at 19:00: a party of 11 fits now.
    status, body = book("after-1", "19:00", 11, source="web")
    assert status == 201 and body["capacity"]["bookedCovers"] == 20
    # The key of a removed booking carries no stored response any more: nothing replays a
    # booking that no longer exists (here the slot is full again, so it is refused afresh).
    status, body = book("a-1", "19:00", 3, run_id="run-a")
    assert status == 409 and body["code"] == "capacity_exceeded"


def test_dry_run_counts_and_changes_nothing(mixed: Any, conn: Any) -> None:
    before = bookings(conn)

    result = remove_synthetic(conn, source="load-test", run_id="run-a", dry_run=True)

    assert (result.bookings, result.confirmed, result.covers_freed, result.slots) == (4, 3, 12, 2)
    assert result.describe().startswith("would remove 4 bookings")
    assert bookings(conn) == before
    assert usage(conn, "19:00") == 15


def test_live_sources_are_refused(mixed: Any, conn: Any) -> None:
    with pytest.raises(UserError, match=r"^refusing to delete bookings of source 'api'"):
        remove_synthetic(conn, source="api")
    with pytest.raises(UserError, match=r"^refusing to delete bookings of source 'web'"):
        remove_synthetic(conn, source="web")

    assert len(bookings(conn)) == 6


def test_cli_cleanup(
    mixed: Any, conn: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)

    assert cli.main(["cleanup", "--source", "api"]) == 2
    assert "refusing to delete bookings of source 'api'" in capsys.readouterr().err
    assert len(bookings(conn)) == 6

    assert cli.main(["cleanup", "--source", "load-test", "--run-id", "run-b"]) == 0
    assert capsys.readouterr().out == (
        "removed 1 booking (source load-test, run run-b): 1 confirmed, 4 covers freed in 1 slot, "
        "1 idempotency key deleted\n"
    )
    assert usage(conn, "19:00") == 11
