"""The API's words (issue 14) and media types (issue 15), through the real handler on the
embedded PostgreSQL: exact statuses, codes, titles and messages; nothing stored when refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from capacity.outcomes import DEFAULT_PROBLEM_TYPE_BASE
from capctl.apigw import rest_event
from tests.support import booking_body, invoke, post_booking_event

BOUNDARY = "capacity-test-boundary"


def booking_event(content_type: str | None, body: str, *, key: str = "k-1", request_id: str | None = None) -> Any:
    headers = [("x-api-key", "tenant-a"), ("Idempotency-Key", key)]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    return rest_event(
        "POST",
        "/bookings",
        headers=headers,
        body=body,
        api_key="tenant-a",
        api_key_id="id-tenant-a",
        request_id=request_id,
    )


def stored(conn: Any) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM bookings) AS b, (SELECT count(*) FROM idempotency_keys) AS k,"
        " (SELECT count(*) FROM observability_events) AS e"
    ).fetchone()
    return row["b"], row["k"], row["e"]


def multipart(body: dict[str, Any]) -> str:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="booking"\r\nContent-Type: application/json\r\n\r\n'
        f"{json.dumps(body)}\r\n--{BOUNDARY}--\r\n"
    )


class TestMediaTypes:
    @pytest.mark.parametrize(
        ("content_type", "payload"),
        [
            (f"multipart/form-data; boundary={BOUNDARY}", multipart(booking_body())),  # was 500 internal_error
            (f"multipart/form-data; boundary={BOUNDARY}", json.dumps(booking_body())),
            ("application/x-www-form-urlencoded", json.dumps(booking_body())),  # curl -d's default
            ("text/plain", json.dumps(booking_body())),
            ("application/xml", "<booking/>"),
        ],
    )
    def test_a_body_declared_as_another_media_type_is_415(self, booking_app, conn, content_type, payload):
        status, headers, body = invoke(booking_app, booking_event(content_type, payload, request_id="req-415"))
        assert (status, body["code"], body["title"]) == (415, "unsupported_media_type", "Unsupported media type")
        assert headers["Content-Type"] == "application/problem+json"
        assert headers["Accept-Post"] == "application/json"
        assert body["type"] == DEFAULT_PROBLEM_TYPE_BASE + "unsupported_media_type"
        assert body["instance"] == "req-415"
        assert stored(conn) == (0, 0, 0)

    @pytest.mark.parametrize(
        "content_type",
        [
            None,
            "application/json",
            "APPLICATION/JSON",
            "Application/Json; charset=UTF-8",
            "application/json;charset=utf-8",
        ],
    )
    def test_json_in_any_spelling_or_no_content_type_books(self, booking_app, conn, content_type):
        status, _, body = invoke(booking_app, booking_event(content_type, json.dumps(booking_body())))
        assert status == 201, body
        assert body["booking"]["partySize"] == 2
        assert stored(conn)[0] == 1

    def test_get_and_delete_are_not_refused_for_their_content_type(self, booking_app):
        event = rest_event(
            "GET",
            "/bookings/00000000-0000-4000-8000-000000000000",
            headers={"Content-Type": "text/plain"},
            api_key="tenant-a",
            api_key_id="id-tenant-a",
        )
        status, _, body = invoke(booking_app, event)
        assert (status, body["code"]) == (404, "booking_not_found")


class TestWords:
    def test_a_bad_time_is_a_sentence_not_a_pattern(self, booking_app):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(time="7pm")))
        assert status == 422
        assert body["errors"] == [{"field": "time", "message": "must be a time as HH:MM, 00:00 to 23:59"}]
        assert body["detail"] == "time: must be a time as HH:MM, 00:00 to 23:59"

    def test_party_size_above_50_says_at_most(self, booking_app):
        _, _, body = invoke(booking_app, post_booking_event(booking_body(partySize=51)))
        assert body["errors"] == [{"field": "partySize", "message": "must be at most 50"}]

    def test_two_idempotency_keys_ask_for_exactly_one(self, booking_app, conn):
        event = post_booking_event(booking_body(), key="first")
        event["multiValueHeaders"]["Idempotency-Key"] = ["first", "second"]
        status, _, body = invoke(booking_app, event)
        assert (status, body["code"]) == (422, "validation_error")
        assert body["errors"] == [
            {"field": "Idempotency-Key", "message": "was sent more than once: exactly one key is required"}
        ]
        assert stored(conn) == (0, 0, 0)

    @pytest.mark.parametrize(
        ("header", "value", "message"),
        [
            ("Idempotency-Key", "has space", "must be 1-255 visible ASCII characters"),
            ("Idempotency-Key", "x" * 256, "must be 1-255 visible ASCII characters"),
            ("X-Run-Id", "not valid!", "must be 1-64 characters of A-Z a-z 0-9 . _ : -"),
        ],
    )
    def test_a_malformed_header_says_what_it_must_be(self, booking_app, header, value, message):
        event = post_booking_event(booking_body())
        event["headers"][header] = value
        event["multiValueHeaders"][header] = [value]
        status, _, body = invoke(booking_app, event)
        assert (status, body["errors"]) == (422, [{"field": header, "message": message}])

    def test_an_empty_idempotency_key_is_a_missing_one(self, booking_app):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(), key=""))
        assert (status, body["code"]) == (400, "idempotency_key_missing")

    def test_not_enough_covers_is_said_as_such(self, booking_app):
        # 20 covers; 18 booked leaves 2: a party of 4 does not fit, though the slot is not full
        ok = invoke(booking_app, post_booking_event(booking_body(partySize=12), key="a"))
        ok2 = invoke(booking_app, post_booking_event(booking_body(partySize=6), key="b"))
        assert (ok[0], ok2[0]) == (201, 201)
        status, headers, body = invoke(booking_app, post_booking_event(booking_body(partySize=4), key="c"))
        assert (status, body["code"], body["title"]) == (409, "capacity_exceeded", "Not enough covers left")
        assert (body["requested"], body["remainingCovers"]) == (4, 2)
        assert body["type"] == DEFAULT_PROBLEM_TYPE_BASE + "capacity_exceeded"
        assert list(body)[:4] == ["type", "title", "status", "detail"]
        assert headers["Content-Type"] == "application/problem+json"

    def test_every_error_carries_an_absolute_type_and_the_request_id(self, booking_app, monkeypatch):
        monkeypatch.setenv("PROBLEM_TYPE_BASE", "https://docs.example.org/problems#")
        for event, code in [
            (post_booking_event(booking_body(), key=None), "idempotency_key_missing"),
            (post_booking_event("{not json"), "malformed_request"),
            (post_booking_event(booking_body(time="19:10")), "invalid_slot_time"),
            (rest_event("GET", "/nowhere", api_key="tenant-a", api_key_id="id-tenant-a"), "not_found"),
            (post_booking_event("{" + " " * 10_240 + "}"), "payload_too_large"),
        ]:
            event["requestContext"]["requestId"] = f"req-{code}"
            _, _, body = invoke(booking_app, event)
            assert body["code"] == code
            assert body["type"] == f"https://docs.example.org/problems#{code}"
            assert body["instance"] == f"req-{code}"
            assert list(body)[:6] == ["type", "title", "status", "detail", "instance", "code"]

    def test_a_refusal_names_its_request_and_its_replay_keeps_that_name(self, booking_app):
        first = post_booking_event(booking_body(partySize=12, time="19:00"), key="full-1")
        assert invoke(booking_app, first)[0] == 201
        refused = post_booking_event(booking_body(partySize=12, time="19:00"), key="refused")
        refused["requestContext"]["requestId"] = "req-refused"
        status, _, body = invoke(booking_app, refused)
        assert (status, body["code"], body["instance"]) == (409, "capacity_exceeded", "req-refused")
        again = post_booking_event(booking_body(partySize=12, time="19:00"), key="refused")
        again["requestContext"]["requestId"] = "req-again"
        status, headers, replayed = invoke(booking_app, again)
        assert (status, headers["Idempotent-Replayed"]) == (409, "true")
        assert replayed == body  # the stored answer, the original request's id included

    def test_a_slot_that_has_begun_is_said_as_such(self, booking_app):
        status, _, body = invoke(booking_app, post_booking_event(booking_body(date="2020-01-03")))
        assert (status, body["errors"]) == (
            422,
            [{"field": "date", "message": "must not be a slot that has already begun"}],
        )

    def test_a_replay_of_a_booking_cancelled_since_links_to_its_state_now(self, booking_app):
        created = invoke(booking_app, post_booking_event(booking_body(), key="later-cancelled"))
        booking_id = created[2]["booking"]["id"]
        delete = rest_event("DELETE", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a")
        assert invoke(booking_app, delete)[2]["booking"]["status"] == "cancelled"
        status, headers, body = invoke(booking_app, post_booking_event(booking_body(), key="later-cancelled"))
        # the idempotency promise: the stored answer, unchanged ...
        assert (status, body) == (201, created[2]) and body["booking"]["status"] == "confirmed"
        # ... and where the booking's state is now
        assert headers["Link"] == f'</bookings/{booking_id}>; rel="current"'
        current = rest_event("GET", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a")
        assert invoke(booking_app, current)[2]["booking"]["status"] == "cancelled"
