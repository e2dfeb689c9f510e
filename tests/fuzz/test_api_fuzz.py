"""Schemathesis against `capctl serve` (the real handlers on 127.0.0.1, a real PostgreSQL), from
docs/openapi.json: no 5xx, every response conforms to the document (status codes, content types,
headers, schemas), every error is problem+json. The seeded restaurant and real booking ids are
mixed into the generated requests so that they reach the capacity logic, not only validation.
Bounded: a fixed number of examples per operation, no deadline, no example database."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from capctl.serve import LocalApi
from tests.support import FUTURE_DATE, RESTAURANT_ID, booking_body

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "fuzz-key"
EXAMPLES = 25  # per operation and generation mode
PROBLEM = "application/problem+json"
SERVER_ENV = {
    "POWERTOOLS_METRICS_NAMESPACE": "CapacityEngineFuzz",
    "POWERTOOLS_SERVICE_NAME": "capacity-engine",
    "ENVIRONMENT": "test",
}


@pytest.fixture
def api(seeded_db: str) -> Any:
    with LocalApi(database_url=seeded_db, instances=2, api_keys=[API_KEY], env=SERVER_ENV, function_logs=False) as api:
        yield api


def book(base_url: str, key: str, time: str) -> str:
    request = urllib.request.Request(
        f"{base_url}/bookings",
        data=json.dumps(booking_body(time=time)).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "x-api-key": API_KEY, "Idempotency-Key": key},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return str(json.loads(response.read())["booking"]["id"])


def problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is RFC 9457 problem+json with the contract's members."""
    if response.status_code < 400:
        return None
    values = [v for k, v in response.headers.items() if k.lower() == "content-type"]
    content_type = values[0][0] if values and isinstance(values[0], list) else (values[0] if values else "")
    assert content_type.split(";")[0] == PROBLEM, f"{response.status_code} answered as {content_type}"
    body = json.loads(response.content)
    assert {"type", "title", "status", "detail", "code"} <= set(body), body
    assert body["status"] == response.status_code
    assert body["type"].startswith(("https://", "http://")) and body["type"].endswith(body["code"])
    return True


# Not checked: positive_data_acceptance. A request the document allows may still be refused for
# what only the data can say (a slot off the grid, a date past, a party above the restaurant's
# maximum, an address email-validator refuses): a documented 422.


def fuzz(operation: Any, mode: GenerationMode, base_url: str, session: Any, ids: list[str], answered: Any) -> None:
    future = dt.date.fromisoformat(FUTURE_DATE)
    real_dates = st.sampled_from([(future + dt.timedelta(days=d)).isoformat() for d in range(4)])

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        real=st.booleans(),
        booking_id=st.sampled_from(ids),
        date=real_dates,
        time=st.sampled_from(["17:00", "18:00", "19:30", "21:45"]),
        party=st.integers(1, 14),
    )
    def run(case: Any, real: bool, booking_id: str, date: str, time: str, party: int) -> None:
        positive = mode is GenerationMode.POSITIVE
        if real and positive:  # steer half the cases to seeded data so that they reach the booking logic
            if "restaurantId" in case.path_parameters:
                case.path_parameters["restaurantId"] = RESTAURANT_ID
            if "id" in case.path_parameters:
                case.path_parameters["id"] = booking_id
            if case.query and "date" in case.query:
                case.query["date"] = date
            if isinstance(case.body, dict):
                case.body.update(restaurantId=RESTAURANT_ID, date=date, time=time, partySize=party)
        sent = {name.lower() for name in case.headers or {}}
        headers = {}
        # the real key where the case sends one (a negative case may leave it out: then 403)
        if positive or "x-api-key" in sent:
            headers["x-api-key"] = API_KEY
        if positive and "idempotency-key" in sent:
            headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}"  # a valid key, so the request goes on
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        answered[response.status_code] = answered.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text)
        case.validate_response(response, additional_checks=[problem_json], excluded_checks=[positive_data_acceptance])

    run()


def test_every_operation_conforms_and_never_answers_5xx(api):
    schema = schemathesis.openapi.from_path(str(ROOT / "docs" / "openapi.json"))
    booking_ids = [book(api.base_url, f"fuzz-seed-{n}", t) for n, t in enumerate(["18:00", "19:30"])]
    session = requests.Session()
    session.trust_env = False  # never an environment proxy
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("POST", "/bookings"),
        ("GET", "/bookings/{id}"),
        ("DELETE", "/bookings/{id}"),
        ("GET", "/restaurants/{restaurantId}/availability"),
    }
    answered: dict[int, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, api.base_url, session, booking_ids, answered)

    # the fuzzing reached the logic: bookings made and refused, not only validation errors
    assert answered.get(201, 0) > 0 and answered.get(200, 0) > 0, answered
    assert any(answered.get(s, 0) for s in (404, 409)), answered
