"""Every success body the handler really sends, held against its response model and against the
schema docs/openapi.json publishes for it: the document cannot say one thing while the API
sends another (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from capacity.models import Availability, BookingCreated, BookingEnvelope
from capctl.apigw import LambdaContext, rest_event
from tests.support import FUTURE_DATE, RESTAURANT_ID, UNLIMITED_DATE, booking_body, post_booking_event

DOCUMENT = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())


def answer(module: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], str]:
    """Status, headers and the body as the bytes sent (not parsed: replays are compared as sent)."""
    result = module.lambda_handler(event, LambdaContext(function_name="CreateBookingFunction"))
    headers = {name: values[-1] for name, values in (result.get("multiValueHeaders") or {}).items()}
    headers.update(result.get("headers") or {})
    return result["statusCode"], headers, result["body"]


def request(method: str, path: str, **kw: Any) -> dict[str, Any]:
    return rest_event(method, path, api_key="tenant-a", api_key_id="id-tenant-a", **kw)


def documented_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The schema of one documented success response, with the document's components to resolve refs."""
    content = DOCUMENT["paths"][path][method]["responses"][str(status)]["content"]["application/json"]
    return {**content["schema"], "components": DOCUMENT["components"]}


def holds(body: str, model: type[BaseModel], path: str, method: str, status: int) -> dict[str, Any]:
    """The body fits the model (extra members refused) and the published schema; returns it parsed."""
    parsed: dict[str, Any] = json.loads(body)
    model.model_validate(parsed)
    jsonschema.validate(parsed, documented_schema(path, method, status))
    return parsed


def test_every_success_answer_fits_its_model_and_the_document(booking_app, conn):
    post = post_booking_event(booking_body(), key="contract-1")
    status, headers, first = answer(booking_app, post)
    assert status == 201
    created = holds(first, BookingCreated, "/bookings", "post", 201)
    assert created["capacity"] == {"maxCovers": 20, "bookedCovers": 2, "remainingCovers": 18}
    booking_id = created["booking"]["id"]

    status, headers, replayed = answer(booking_app, post_booking_event(booking_body(), key="contract-1"))
    assert status == 201 and headers["Idempotent-Replayed"] == "true"
    holds(replayed, BookingCreated, "/bookings", "post", 201)
    assert replayed == first  # the stored answer, byte for byte

    status, _, read = answer(booking_app, request("GET", f"/bookings/{booking_id}"))
    assert status == 200
    assert holds(read, BookingEnvelope, "/bookings/{id}", "get", 200)["booking"] == created["booking"]

    status, _, cancelled = answer(booking_app, request("DELETE", f"/bookings/{booking_id}"))
    assert status == 200
    assert holds(cancelled, BookingEnvelope, "/bookings/{id}", "delete", 200)["booking"]["status"] == "cancelled"

    path = "/restaurants/{restaurantId}/availability"
    status, _, slots = answer(
        booking_app, request("GET", f"/restaurants/{RESTAURANT_ID}/availability", query={"date": FUTURE_DATE})
    )
    assert status == 200
    day = holds(slots, Availability, path, "get", 200)
    assert day["slots"] and all(s["maxCovers"] == 20 for s in day["slots"])

    # An unlimited slot: maxCovers and remainingCovers are null, in the model and the document.
    status, _, unlimited = answer(booking_app, post_booking_event(booking_body(date=UNLIMITED_DATE), key="contract-2"))
    assert status == 201
    assert holds(unlimited, BookingCreated, "/bookings", "post", 201)["capacity"]["remainingCovers"] is None
    status, _, open_day = answer(
        booking_app, request("GET", f"/restaurants/{RESTAURANT_ID}/availability", query={"date": UNLIMITED_DATE})
    )
    assert status == 200
    assert any(s["maxCovers"] is None for s in holds(open_day, Availability, path, "get", 200)["slots"])


def test_the_models_refuse_a_member_the_document_does_not_have():
    body = {
        "booking": {
            "id": "00000000-0000-4000-8000-000000000001",
            "restaurantId": RESTAURANT_ID,
            "date": FUTURE_DATE,
            "time": "19:00",
            "partySize": 2,
            "status": "confirmed",
            "source": "web",
            "createdAt": "2026-11-30T02:00:00.000Z",
        },
        "capacity": {"maxCovers": 20, "bookedCovers": 2, "remainingCovers": 18},
    }
    BookingCreated.model_validate(body)
    body["booking"]["guestName"] = "Ada Lovelace"
    with pytest.raises(ValidationError):
        BookingCreated.model_validate(body)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, documented_schema("/bookings", "post", 201))


def test_a_stored_201_that_no_longer_fits_the_model_is_not_replayed(booking_app, conn):
    assert answer(booking_app, post_booking_event(booking_body(), key="contract-3"))[0] == 201
    conn.execute(
        "UPDATE idempotency_keys SET response = jsonb_set(response, '{booking,guestName}', '\"Ada\"') "
        "WHERE key = 'contract-3'"
    )
    status, headers, body = answer(booking_app, post_booking_event(booking_body(), key="contract-3"))
    assert status == 500 and headers["Content-Type"] == "application/problem+json"
    assert json.loads(body)["code"] == "internal_error" and "Ada" not in body
