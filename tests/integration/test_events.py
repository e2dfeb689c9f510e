"""Every API event in events/ invoked through the real create_booking handler, as
`sam local invoke CreateBookingFunction -e events/<name>.json` would, against the seeded test
database (BASE_SEED = tests/fixtures/events-seed.json). The scheduled events (*_scheduled.json)
belong to the scheduled functions' tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from capctl.apigw import RESOURCES
from capctl.seed import SeedFile
from tests.support import BASE_SEED, FUTURE_DATE, PRIVATE_EVENT_DATE, RESTAURANT_ID, invoke, relative_dates

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
API_EVENTS = sorted(p.stem for p in EVENTS.glob("*.json") if not p.stem.endswith("_scheduled"))
# get_booking.json and cancel_booking.json carry this id; a caller substitutes a real one.
PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"
CREATE_KEY = "events-create-booking-0001"

# What each event does against a freshly seeded database (after create_booking for get/cancel).
EXPECTED_STATUS = {
    "create_booking": 201,
    "create_booking_replay": 201,
    "create_booking_full": 409,
    "create_booking_invalid": 422,
    "create_booking_missing_key": 400,
    "availability": 200,
    "get_booking": 200,
    "cancel_booking": 200,
}


def load_event(name: str, booking_id: str | None = None) -> dict[str, Any]:
    # The files book fixed dates around FIXTURE_DATE; a slot that has passed is refused, so the
    # tests move them ahead of today as a user would edit them.
    event = json.loads(relative_dates((EVENTS / f"{name}.json").read_text()))
    if booking_id is not None:
        return with_booking_id(event, booking_id)
    return event


def with_booking_id(event: dict[str, Any], booking_id: str) -> dict[str, Any]:
    """What a `sam local invoke` user does by hand: put a real id where the placeholder is."""
    assert PLACEHOLDER_ID in event["path"], "the event must carry the placeholder id"
    event = copy.deepcopy(event)
    event["path"] = event["path"].replace(PLACEHOLDER_ID, booking_id)
    event["pathParameters"] = {"id": booking_id}
    context = event["requestContext"]
    context["path"] = context["path"].replace(PLACEHOLDER_ID, booking_id)
    return event


def create_booking(app: Any) -> dict[str, Any]:
    status, _, body = invoke(app, load_event("create_booking"))
    assert status == 201, body
    return body


def count(conn: Any, sql: str) -> int:
    return int(conn.execute(sql).fetchone()["n"])


def test_every_api_event_has_an_expected_outcome():
    # A new event file needs its outcome written down here (and so gets tested).
    assert set(API_EVENTS) == set(EXPECTED_STATUS)


def test_the_events_cover_every_route():
    routes = {(load_event(name)["httpMethod"], load_event(name)["resource"]) for name in API_EVENTS}
    assert routes == {
        ("POST", "/bookings"),
        ("GET", "/bookings/{id}"),
        ("DELETE", "/bookings/{id}"),
        ("GET", "/restaurants/{restaurantId}/availability"),
    }


def test_events_seed_file_is_the_test_seed_on_other_dates():
    seed = json.loads((ROOT / "tests" / "fixtures" / "events-seed.json").read_text())
    assert json.loads(relative_dates(json.dumps(seed))) == BASE_SEED
    assert [o["date"] for o in seed["restaurants"][0]["overrides"]] == ["2030-06-15", "2030-06-16", "2030-06-17"]
    # the fixture's dates stay bookable for `sam local invoke` until they pass
    assert SeedFile.model_validate(seed).restaurants[0].booking_horizon_days == 3660


@pytest.mark.parametrize("name", API_EVENTS)
def test_event_is_a_rest_api_proxy_event_for_the_seeded_restaurant(name):
    event = load_event(name)
    assert event["resource"] in RESOURCES
    assert event["httpMethod"] in {"GET", "POST", "DELETE"}
    assert event["requestContext"]["resourcePath"] == event["resource"]
    assert event["requestContext"]["httpMethod"] == event["httpMethod"]
    identity = event["requestContext"]["identity"]
    # The tenant is the API key id, so every event must carry the same one.
    assert identity["apiKeyId"] == "local-dev-key-id"
    assert event["headers"]["x-api-key"] == identity["apiKey"]
    for header, values in event["multiValueHeaders"].items():
        assert event["headers"][header] == values[-1]
    if event["resource"] == "/restaurants/{restaurantId}/availability":
        assert event["pathParameters"] == {"restaurantId": RESTAURANT_ID}
        assert event["queryStringParameters"] == {"date": FUTURE_DATE}
    if event["resource"] == "/bookings/{id}":
        assert event["pathParameters"] == {"id": PLACEHOLDER_ID}
    if event["body"] is not None:
        body = json.loads(event["body"])
        assert body["restaurantId"] == RESTAURANT_ID
        assert body["date"] in {FUTURE_DATE, PRIVATE_EVENT_DATE}


def test_create_booking_books_and_stores_the_row(booking_app, conn):
    status, headers, body = invoke(booking_app, load_event("create_booking"))
    assert status == EXPECTED_STATUS["create_booking"], body
    assert body["capacity"] == {"maxCovers": 20, "bookedCovers": 2, "remainingCovers": 18}
    assert headers["Location"] == f"/bookings/{body['booking']['id']}"
    row = conn.execute(
        "SELECT id::text, restaurant_id::text, booking_date::text, booking_time::text, party_size, status, source,"
        " idempotency_key FROM bookings"
    ).fetchall()
    assert row == [
        {
            "id": body["booking"]["id"],
            "restaurant_id": RESTAURANT_ID,
            "booking_date": FUTURE_DATE,
            "booking_time": "19:00:00",
            "party_size": 2,
            "status": "confirmed",
            "source": "web",
            "idempotency_key": CREATE_KEY,
        }
    ]


def test_replay_answers_the_stored_201_without_a_second_booking(booking_app, conn):
    first = create_booking(booking_app)
    status, headers, body = invoke(booking_app, load_event("create_booking_replay"))
    assert status == EXPECTED_STATUS["create_booking_replay"], body
    assert headers["Idempotent-Replayed"] == "true"
    assert body == first
    assert count(conn, "SELECT count(*) AS n FROM bookings") == 1


def test_full_slot_answers_409_capacity_exceeded_with_alternatives(booking_app, conn):
    status, headers, body = invoke(booking_app, load_event("create_booking_full"))
    assert status == EXPECTED_STATUS["create_booking_full"], body
    assert headers["Content-Type"] == "application/problem+json"
    assert body["code"] == "capacity_exceeded"
    # The 18:00-20:00 override of PRIVATE_EVENT_DATE holds 4 covers; the event asks for 6.
    assert (body["requested"], body["remainingCovers"]) == (6, 4)
    assert 1 <= len(body["alternatives"]) <= 5
    for alternative in body["alternatives"]:
        assert alternative["date"] == PRIVATE_EVENT_DATE
        assert alternative["remainingCovers"] is None or alternative["remainingCovers"] >= 6
    assert count(conn, "SELECT count(*) AS n FROM bookings") == 0
    events = conn.execute("SELECT event_type FROM observability_events").fetchall()
    assert [e["event_type"] for e in events] == ["booking.capacity_exceeded"]


def test_invalid_body_answers_422_with_field_errors_and_records_nothing(booking_app, conn):
    status, _, body = invoke(booking_app, load_event("create_booking_invalid"))
    assert status == EXPECTED_STATUS["create_booking_invalid"], body
    assert body["code"] == "validation_error"
    fields = {e["field"] for e in body["errors"]}
    assert {"partySize", "guest.email", "vip"} <= fields, fields
    assert count(conn, "SELECT count(*) AS n FROM bookings") == 0
    assert count(conn, "SELECT count(*) AS n FROM observability_events") == 0


def test_missing_idempotency_key_answers_400_and_records_nothing(booking_app, conn):
    status, _, body = invoke(booking_app, load_event("create_booking_missing_key"))
    assert status == EXPECTED_STATUS["create_booking_missing_key"], body
    assert body["code"] == "idempotency_key_missing"
    assert count(conn, "SELECT count(*) AS n FROM bookings") == 0
    assert count(conn, "SELECT count(*) AS n FROM observability_events") == 0


def test_availability_lists_every_slot_of_the_date(booking_app):
    status, _, body = invoke(booking_app, load_event("availability"))
    assert status == EXPECTED_STATUS["availability"], body
    assert (body["restaurantId"], body["date"]) == (RESTAURANT_ID, FUTURE_DATE)
    times = [slot["time"] for slot in body["slots"]]
    # 17:00-22:00 in 15-minute slots, 20 covers each, nothing booked yet.
    assert times[0] == "17:00" and times[-1] == "21:45" and len(times) == 20
    assert {(s["maxCovers"], s["bookedCovers"], s["remainingCovers"]) for s in body["slots"]} == {(20, 0, 20)}


def test_get_booking_reads_the_created_booking(booking_app):
    created = create_booking(booking_app)
    status, _, body = invoke(booking_app, load_event("get_booking", created["booking"]["id"]))
    assert status == EXPECTED_STATUS["get_booking"], body
    assert body == {"booking": created["booking"]}


def test_get_booking_with_the_placeholder_id_is_404(booking_app):
    # What `sam local invoke -e events/get_booking.json` answers before the id is replaced.
    create_booking(booking_app)
    status, _, body = invoke(booking_app, load_event("get_booking"))
    assert (status, body["code"]) == (404, "booking_not_found")


def test_cancel_booking_cancels_and_frees_the_covers(booking_app, conn):
    created = create_booking(booking_app)
    booking_id = created["booking"]["id"]
    status, _, body = invoke(booking_app, load_event("cancel_booking", booking_id))
    assert status == EXPECTED_STATUS["cancel_booking"], body
    assert body["booking"] == {**created["booking"], "status": "cancelled"}
    row = conn.execute("SELECT status FROM bookings WHERE id = %s", (booking_id,)).fetchone()
    assert row == {"status": "cancelled"}
    status, _, availability = invoke(booking_app, load_event("availability"))
    slot = next(s for s in availability["slots"] if s["time"] == "19:00")
    assert (slot["bookedCovers"], slot["remainingCovers"]) == (0, 20)
    events = conn.execute("SELECT event_type FROM observability_events ORDER BY occurred_at, id").fetchall()
    assert [e["event_type"] for e in events] == ["booking.success", "booking.cancelled"]


def test_placeholder_substitution_changes_only_the_booking_id():
    event = load_event("cancel_booking")
    replaced = with_booking_id(event, "12345678-1234-4234-8234-123456789012")
    assert replaced["path"] == "/bookings/12345678-1234-4234-8234-123456789012"
    assert replaced["requestContext"]["path"] == "/v1/bookings/12345678-1234-4234-8234-123456789012"
    assert {k: v for k, v in replaced.items() if k not in {"path", "pathParameters", "requestContext"}} == {
        k: v for k, v in event.items() if k not in {"path", "pathParameters", "requestContext"}
    }
    assert event["path"] == f"/bookings/{PLACEHOLDER_ID}"  # the loaded event is not modified
