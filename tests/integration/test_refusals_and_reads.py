"""Refusals before and at the write, availability, reading and cancelling bookings, and what
the handler emits (EMF metrics, logs) — without guest personal data."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from capctl.apigw import rest_event
from tests.support import (
    BASE_SEED,
    CLOSED_DATE,
    FUTURE,
    FUTURE_DATE,
    PRIVATE_EVENT_DATE,
    RESTAURANT_ID,
    UNLIMITED_DATE,
    booking_body,
    future_day,
    invoke,
    post_booking_event,
    with_header,
)


def events(conn: Any) -> Counter[str]:
    return Counter(r["event_type"] for r in conn.execute("SELECT event_type FROM observability_events"))


def get(path: str, api_key: str = "tenant-a", **kw: Any) -> dict[str, Any]:
    return rest_event("GET", path, api_key=api_key, api_key_id=f"id-{api_key}", **kw)


def delete(path: str, api_key: str = "tenant-a") -> dict[str, Any]:
    return rest_event("DELETE", path, api_key=api_key, api_key_id=f"id-{api_key}")


class TestRefusedBeforeTheWrite:
    """4xx other than 409: nothing stored, no outcome event."""

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            (booking_body(time="19:10"), 422, "invalid_slot_time"),
            (booking_body(restaurantId="00000000-0000-4000-8000-000000000000"), 404, "restaurant_not_found"),
            (booking_body(partySize=13), 422, "validation_error"),
            (booking_body(date="2020-01-03"), 422, "validation_error"),
            (booking_body(partySize=0), 422, "validation_error"),
            ("{not json", 400, "malformed_request"),
            ("[1, 2]", 400, "malformed_request"),
            (booking_body(guest="Ada"), 422, "validation_error"),
        ],
    )
    def test_refusals(self, booking_app, conn, body, status, code):
        got_status, headers, got = invoke(booking_app, post_booking_event(body))
        assert (got_status, got["code"]) == (status, code)
        assert headers["Content-Type"] == "application/problem+json"
        assert {"type", "title", "status", "detail", "code"} <= set(got) and got["status"] == status
        assert events(conn) == {}
        assert conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()["n"] == 0

    def test_party_above_the_restaurants_maximum_names_the_field(self, booking_app):
        _, _, body = invoke(booking_app, post_booking_event(booking_body(partySize=13)))
        assert body["errors"] == [{"field": "partySize", "message": "must be at most 12"}]

    def test_a_body_declared_as_another_media_type_is_415(self, booking_app):
        event = post_booking_event(booking_body())
        with_header(event, "Content-Type", "text/plain")
        status, headers, body = invoke(booking_app, event)
        assert (status, body["code"]) == (415, "unsupported_media_type")
        assert headers["Content-Type"] == "application/problem+json"

    def test_a_body_that_is_not_utf8_is_malformed(self, booking_app, conn):
        event = post_booking_event(booking_body())
        # API Gateway (and `capctl serve`) hand over bytes that are not text base64-encoded
        event["body"], event["isBase64Encoded"] = base64.b64encode(b'{"restaurantId": "\xff"}').decode(), True
        status, headers, body = invoke(booking_app, event)
        assert (status, body["code"]) == (400, "malformed_request")
        assert headers["Content-Type"] == "application/problem+json"
        assert conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()["n"] == 0

    @pytest.mark.parametrize(
        ("body", "base64_encoded"),
        [
            ('{"partySize": ' + "1" * 5000 + "}", False),  # an integer too long for Python to read
            ("[" * 4000 + "]" * 4000, False),  # nesting deeper than the parser's recursion
            ("not base64 at all!", True),  # declared base64, is not
        ],
    )
    def test_a_body_json_cannot_read_is_malformed_not_a_500(self, booking_app, conn, body, base64_encoded):
        event = post_booking_event(body)
        event["isBase64Encoded"] = base64_encoded
        status, headers, answer = invoke(booking_app, event)
        assert (status, answer["code"]) == (400, "malformed_request")
        assert headers["Content-Type"] == "application/problem+json"
        assert conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()["n"] == 0

    def test_an_oversized_body_is_413_before_parsing(self, booking_app, conn):
        status, headers, body = invoke(booking_app, post_booking_event("{" + " " * 10_240 + "}"))
        assert (status, body["code"]) == (413, "payload_too_large")
        assert headers["Content-Type"] == "application/problem+json"
        assert invoke(booking_app, post_booking_event(booking_body(notes="n" * 1000)))[0] == 201

    def test_missing_idempotency_key(self, booking_app, conn):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(), key=None))
        assert (status, body["code"]) == (400, "idempotency_key_missing")
        assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 0

    def test_empty_idempotency_key_is_missing(self, booking_app):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(), key=""))
        assert (status, body["code"]) == (400, "idempotency_key_missing")

    def test_a_nul_character_is_a_field_error_not_a_500(self, booking_app, conn):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(notes="x\x00")))
        assert (status, body["errors"]) == (422, [{"field": "notes", "message": "must not contain NUL characters"}])
        assert events(conn) == {}

    def test_invalid_idempotency_key(self, booking_app):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(), key="x" * 256))
        assert (status, body["code"]) == (422, "validation_error")
        assert body["errors"][0]["field"] == "Idempotency-Key"

    def test_invalid_run_id(self, booking_app):
        event = post_booking_event(booking_body())
        with_header(event, "X-Run-Id", "not valid!")
        status, _, body = invoke(booking_app, event)
        assert (status, body["errors"][0]["field"]) == (422, "X-Run-Id")

    def test_unknown_route_is_problem_json(self, booking_app):
        status, headers, body = invoke(booking_app, get("/nowhere"))
        assert (status, body["code"]) == (404, "not_found")
        assert headers["Content-Type"] == "application/problem+json"


class TestSlotRefusals:
    def test_closed_date_is_slot_closed_and_records_capacity_exceeded(self, booking_app, conn):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(date=CLOSED_DATE)))
        assert (status, body["code"]) == (409, "slot_closed") and body["alternatives"] == []
        row = conn.execute("SELECT event_type, metadata FROM observability_events").fetchone()
        assert row["event_type"] == "booking.capacity_exceeded" and row["metadata"]["reason"] == "closed"

    def test_slot_not_offered_suggests_open_ones(self, booking_app, conn):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(time="12:00")))
        assert (status, body["code"]) == (409, "slot_closed")
        assert [a["time"] for a in body["alternatives"]] == ["17:00", "17:15", "17:30", "17:45", "18:00"]

    def test_ranged_override_capacity_is_enforced(self, booking_app):
        ok = invoke(
            booking_app, post_booking_event(booking_body(date=PRIVATE_EVENT_DATE, time="18:30", partySize=4), key="a")
        )
        assert ok[0] == 201 and ok[2]["capacity"] == {"maxCovers": 4, "bookedCovers": 4, "remainingCovers": 0}
        full = invoke(booking_app, post_booking_event(booking_body(date=PRIVATE_EVENT_DATE, time="18:30"), key="b"))
        assert full[0] == 409 and full[2]["remainingCovers"] == 0
        # the nearest alternatives are other override slots (4 covers each) before weekly ones
        assert full[2]["alternatives"][0] == {"date": PRIVATE_EVENT_DATE, "time": "18:15", "remainingCovers": 4}

    def test_unlimited_slot_books_with_null_capacity(self, booking_app):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(date=UNLIMITED_DATE, partySize=12)))
        assert status == 201
        assert body["capacity"] == {"maxCovers": None, "bookedCovers": 12, "remainingCovers": None}


class TestReads:
    def test_availability_lists_every_bookable_slot(self, booking_app):
        invoke(booking_app, post_booking_event(booking_body(partySize=5)))
        status, _, body = invoke(
            booking_app, get(f"/restaurants/{RESTAURANT_ID}/availability", query={"date": FUTURE_DATE})
        )
        assert status == 200 and body["restaurantId"] == RESTAURANT_ID and body["date"] == FUTURE_DATE
        assert len(body["slots"]) == 20
        by_time = {s["time"]: s for s in body["slots"]}
        assert by_time["19:00"] == {"time": "19:00", "maxCovers": 20, "bookedCovers": 5, "remainingCovers": 15}
        assert by_time["17:00"]["remainingCovers"] == 20

    def test_availability_leaves_out_slots_that_have_begun(self, booking_app, monkeypatch):
        # 19:05 in London (BST) on the booked date: 19:00 has begun, 19:15 has not
        moment = dt.datetime.combine(FUTURE, dt.time(19, 5), tzinfo=ZoneInfo("Europe/London"))
        monkeypatch.setattr(booking_app.service, "_now", lambda: moment)
        today = invoke(booking_app, get(f"/restaurants/{RESTAURANT_ID}/availability", query={"date": FUTURE_DATE}))
        assert [s["time"] for s in today[2]["slots"]][:2] == ["19:15", "19:30"] and len(today[2]["slots"]) == 11
        # what it lists is exactly what can be booked
        assert invoke(booking_app, post_booking_event(booking_body(time="19:00"), key="begun"))[0] == 422
        assert invoke(booking_app, post_booking_event(booking_body(time="19:15"), key="next"))[0] == 201
        yesterday = invoke(
            booking_app, get(f"/restaurants/{RESTAURANT_ID}/availability", query={"date": future_day(-1)})
        )
        assert yesterday[0] == 200 and yesterday[2]["slots"] == []

    def test_availability_of_a_closed_or_unlimited_date(self, booking_app):
        closed = invoke(booking_app, get(f"/restaurants/{RESTAURANT_ID}/availability", query={"date": CLOSED_DATE}))
        assert closed[0] == 200 and closed[2]["slots"] == []
        unlimited = invoke(
            booking_app, get(f"/restaurants/{RESTAURANT_ID}/availability", query={"date": UNLIMITED_DATE})
        )
        assert len(unlimited[2]["slots"]) == 96 and unlimited[2]["slots"][0]["maxCovers"] is None

    @pytest.mark.parametrize(
        ("path", "query", "status", "code"),
        [
            (f"/restaurants/{RESTAURANT_ID}/availability", {"date": "tomorrow"}, 422, "validation_error"),
            (f"/restaurants/{RESTAURANT_ID}/availability", {}, 422, "validation_error"),
            (f"/restaurants/{RESTAURANT_ID}/availability", {"date": "1798156800"}, 422, "validation_error"),
            (
                f"/restaurants/{RESTAURANT_ID}/availability",
                {"date": f"{FUTURE_DATE}T00:00:00"},
                422,
                "validation_error",
            ),
            (
                "/restaurants/00000000-0000-4000-8000-000000000000/availability",
                {"date": FUTURE_DATE},
                404,
                "restaurant_not_found",
            ),
            ("/restaurants/not-a-uuid/availability", {"date": FUTURE_DATE}, 404, "restaurant_not_found"),
        ],
    )
    def test_availability_errors(self, booking_app, path, query, status, code):
        got = invoke(booking_app, get(path, query=query))
        assert (got[0], got[2]["code"]) == (status, code)

    def test_get_and_cancel_a_booking(self, booking_app, conn):
        _, _, created = invoke(booking_app, post_booking_event(booking_body(partySize=6)))
        booking_id = created["booking"]["id"]
        status, _, body = invoke(booking_app, get(f"/bookings/{booking_id}"))
        assert status == 200 and body == {"booking": created["booking"]}

        status, _, body = invoke(booking_app, delete(f"/bookings/{booking_id}"))
        assert status == 200 and body["booking"] == {**created["booking"], "status": "cancelled"}
        assert conn.execute("SELECT booked_covers FROM slot_usage").fetchone()["booked_covers"] == 0
        again = invoke(booking_app, delete(f"/bookings/{booking_id}"))
        assert again[0] == 200 and again[2] == body
        assert events(conn) == {"booking.success": 1, "booking.cancelled": 1}
        # the freed covers can be booked again
        full = invoke(booking_app, post_booking_event(booking_body(partySize=12), key="k2"))
        assert full[0] == 201 and full[2]["capacity"]["bookedCovers"] == 12

    def test_bookings_are_private_to_the_api_key_that_made_them(self, booking_app, conn):
        _, _, created = invoke(booking_app, post_booking_event(booking_body()))
        booking_id = created["booking"]["id"]
        for event in (
            get(f"/bookings/{booking_id}", api_key="tenant-b"),
            delete(f"/bookings/{booking_id}", "tenant-b"),
        ):
            status, _, body = invoke(booking_app, event)
            assert (status, body["code"]) == (404, "booking_not_found")
        assert conn.execute("SELECT status FROM bookings").fetchone()["status"] == "confirmed"

    @pytest.mark.parametrize("booking_id", ["not-a-uuid", "00000000-0000-4000-8000-000000000000"])
    def test_unknown_booking(self, booking_app, booking_id):
        assert invoke(booking_app, get(f"/bookings/{booking_id}"))[2]["code"] == "booking_not_found"


class TestObservability:
    def test_emf_metrics_and_logs_carry_no_guest_personal_data(self, booking_app, capsys, caplog):
        invoke(booking_app, post_booking_event(booking_body(notes="allergic to nuts")))
        out = capsys.readouterr()
        logged = [vars(r) for r in caplog.records]
        assert any(r.get("outcome") == "booking.success" and r.get("partySize") == 2 for r in logged)
        text = out.out + out.err + repr(logged)
        for personal in ("Ada Lovelace", "ada@example.com", "7946", "allergic"):
            assert personal not in text
        emf = [json.loads(line) for line in out.out.splitlines() if '"_aws"' in line][-1]
        directive = emf["_aws"]["CloudWatchMetrics"][0]
        assert directive["Namespace"] == "CapacityEngineTest"
        assert directive["Dimensions"] == [["environment", "service"]]
        names = {m["Name"] for m in directive["Metrics"]}
        assert {"BookingRequests", "BookingSuccess", "BookingLatency", "SlotUtilization", "BookingConflicts"} <= names
        assert emf["restaurantId"] == RESTAURANT_ID and emf["SlotUtilization"] == [10.0]
        assert emf["environment"] == "test" and emf["service"] == "capacity-engine"

    def test_load_test_traffic_has_its_own_environment_dimension(self, booking_app, capsys):
        _, _, created = invoke(booking_app, post_booking_event(booking_body(source="load-test")))
        invoke(booking_app, delete(f"/bookings/{created['booking']['id']}"))
        invoke(booking_app, post_booking_event(booking_body(), key="live"))
        emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        assert [(e["environment"], "BookingCancelled" in e) for e in emf] == [
            ("test-load-test", False),
            ("test-load-test", True),
            ("test", False),
        ]

    def test_nothing_of_one_invocation_reaches_the_next_ones_metrics(self, booking_app, capsys):
        """A request that records no metric (a load-test booking for an unknown restaurant: 404)
        must leave neither its environment dimension nor its restaurantId to the next invocation:
        a warm instance's next EMF line (here a live cancel) is about that invocation alone."""
        _, _, created = invoke(booking_app, post_booking_event(booking_body(), key="live-1"))
        other = "99999999-2222-4333-8444-555555555555"
        status, _, _ = invoke(
            booking_app, post_booking_event(booking_body(restaurantId=other, source="load-test"), key="lt-404")
        )
        assert status == 404
        capsys.readouterr()
        status, _, _ = invoke(booking_app, delete(f"/bookings/{created['booking']['id']}"))
        assert status == 200
        [emf] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        assert (emf["environment"], emf.get("restaurantId"), emf["BookingCancelled"]) == ("test", None, [1.0])

    def test_a_repeated_cancel_counts_once(self, booking_app, conn, capsys):
        """A client retrying its DELETE gets the same 200; BookingCancelled counts the one
        cancellation, as the one booking.cancelled event does."""
        _, _, created = invoke(booking_app, post_booking_event(booking_body(), key="twice"))
        capsys.readouterr()
        for _ in range(2):
            assert invoke(booking_app, delete(f"/bookings/{created['booking']['id']}"))[0] == 200
        emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        assert [e.get("BookingCancelled") for e in emf] == [[1.0]]
        assert events(conn)["booking.cancelled"] == 1

    def test_refusal_metrics(self, booking_app, capsys):
        invoke(booking_app, post_booking_event(booking_body(date=CLOSED_DATE)))
        emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line][-1]
        assert emf["BookingCapacityExceeded"] == [1.0] and emf["BookingSlotClosed"] == [1.0]
        assert "BookingSuccess" not in emf


class TestBookingHorizon:
    """A restaurant takes bookings up to bookingHorizonDays ahead (default 365)."""

    @staticmethod
    def ahead(days: int) -> str:
        today = dt.datetime.now(ZoneInfo("Europe/London")).date()
        return (today + dt.timedelta(days=days)).isoformat()

    def test_a_date_beyond_the_horizon_is_a_field_error_and_the_last_day_books(self, booking_app, conn):
        conn.execute("UPDATE restaurants SET booking_horizon_days = 30")
        status, _, body = invoke(booking_app, post_booking_event(booking_body(date=self.ahead(31)), key="far"))
        last = self.ahead(30)
        assert (status, body["code"]) == (422, "validation_error")
        assert body["errors"] == [
            {"field": "date", "message": f"must be at most 30 days ahead; the last bookable date is {last}"}
        ]
        assert conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()["n"] == 0
        assert invoke(booking_app, post_booking_event(booking_body(date=last), key="last"))[0] == 201

    def test_availability_beyond_the_horizon_is_refused_too(self, booking_app, conn):
        conn.execute("UPDATE restaurants SET booking_horizon_days = 30")
        query = {"date": self.ahead(31)}
        status, _, body = invoke(booking_app, get(f"/restaurants/{RESTAURANT_ID}/availability", query=query))
        assert (status, body["errors"][0]["field"]) == (422, "date")

    def test_the_seed_field_defaults_to_365_days(self, conn, seed):
        restaurant = {k: v for k, v in BASE_SEED["restaurants"][0].items() if k != "bookingHorizonDays"}
        seed({"restaurants": [restaurant]})
        assert conn.execute("SELECT booking_horizon_days FROM restaurants").fetchone() == {"booking_horizon_days": 365}
        seed({"restaurants": [{**restaurant, "bookingHorizonDays": 90}]})
        assert conn.execute("SELECT booking_horizon_days FROM restaurants").fetchone() == {"booking_horizon_days": 90}
