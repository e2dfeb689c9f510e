"""A refusal reads the date's usage once: the context read brings it, and the alternatives and the
covers left are counted from it, with no read of its own. A closed slot is refused in two round
trips (the context, the stored refusal), a full one in three (the guarded write between them).
Only after a lost race is the date read again, so that the answer counts the booking that won."""

from __future__ import annotations

from typing import Any

import psycopg

from capacity import repository
from tests.support import CLOSED_DATE, FUTURE_DATE, RESTAURANT_ID, booking_body, invoke, post_booking_event


class _Counting(psycopg.Cursor[Any]):
    statements = 0

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _Counting.statements += 1
        return super().execute(query, params, **kwargs)


def _counted(app: Any, event: dict[str, Any]) -> tuple[int, Any, int]:
    """The answer to one request, and how many statements the function sent for it."""
    app.service.db.connection().cursor_factory = _Counting
    _Counting.statements = 0
    status, _, body = invoke(app, event)
    return status, body, _Counting.statements


def _book(app: Any, key: str, **fields: Any) -> None:
    assert invoke(app, post_booking_event(booking_body(**fields), key=key))[0] == 201


def _alternative(body: dict[str, Any], time: str) -> dict[str, Any]:
    return next(a for a in body["alternatives"] if a["time"] == time)


def test_a_full_slot_is_refused_in_three_round_trips_counting_the_dates_other_bookings(booking_app):
    _book(booking_app, "other", time="18:45", partySize=5)
    _book(booking_app, "fill-a", partySize=12)
    _book(booking_app, "fill-b", partySize=8)
    status, body, statements = _counted(booking_app, post_booking_event(booking_body(), key="refused"))
    # the context read, the guarded write the guard refused, the stored refusal
    assert (status, body["code"], statements) == (409, "capacity_exceeded", 3)
    assert (body["requested"], body["remainingCovers"]) == (2, 0)
    assert _alternative(body, "18:45") == {"date": FUTURE_DATE, "time": "18:45", "remainingCovers": 15}
    assert _alternative(body, "19:15") == {"date": FUTURE_DATE, "time": "19:15", "remainingCovers": 20}


def test_a_party_too_large_for_what_is_left_is_told_what_is_left(booking_app):
    _book(booking_app, "a", partySize=12)
    status, body, statements = _counted(booking_app, post_booking_event(booking_body(partySize=9), key="b"))
    assert (status, body["code"], statements) == (409, "capacity_exceeded", 3)
    assert (body["requested"], body["remainingCovers"]) == (9, 8)


def test_a_closed_slot_is_refused_in_two_round_trips(booking_app):
    status, body, statements = _counted(booking_app, post_booking_event(booking_body(date=CLOSED_DATE)))
    assert (status, body["code"], statements) == (409, "slot_closed", 2)
    assert body["alternatives"] == []
    _book(booking_app, "evening", time="17:15", partySize=6)
    status, body, statements = _counted(booking_app, post_booking_event(booking_body(time="12:00"), key="noon"))
    assert (status, body["code"], statements) == (409, "slot_closed", 2)
    assert [a["time"] for a in body["alternatives"]] == ["17:00", "17:15", "17:30", "17:45", "18:00"]
    assert _alternative(body, "17:15")["remainingCovers"] == 14


def test_after_a_lost_race_the_date_is_read_again(booking_app, seeded_db, monkeypatch):
    original = repository.load_booking_context

    def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
        context = original(*args, **kwargs)
        with psycopg.connect(seeded_db, autocommit=True) as rival:  # fills the slot and books another
            for time, covers in (("19:00", 20), ("18:45", 10)):
                rival.execute(
                    "INSERT INTO slot_usage VALUES (%s, %s, %s, %s) ON CONFLICT (restaurant_id, slot_date, "
                    "slot_time) DO UPDATE SET booked_covers = EXCLUDED.booked_covers",
                    (RESTAURANT_ID, FUTURE_DATE, time, covers),
                )
        return context

    monkeypatch.setattr(repository, "load_booking_context", read_then_lose_the_race)
    status, body, statements = _counted(booking_app, post_booking_event(booking_body()))
    # the context read, the guarded write the guard refused, the date again, the stored refusal
    assert (status, body["code"], statements) == (409, "capacity_exceeded", 4)
    assert body["remainingCovers"] == 0
    assert _alternative(body, "18:45")["remainingCovers"] == 10
