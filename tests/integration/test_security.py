"""Security: the API key is required; no guest name, email or phone in any log line of a load
run; hostile strings are stored verbatim; the functions' database role (migration 005) has no
DDL rights — each shown by trying, against the real handlers and a real PostgreSQL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import errors

from capctl.apigw import rest_event
from capctl.handlers import load_handler
from capctl.serve import LocalApi
from tests.support import FUTURE_DATE, RESTAURANT_ID, booking_body, invoke, post_booking_event

API_KEY = "security-key"
SERVER_ENV = {
    "POWERTOOLS_METRICS_NAMESPACE": "CapacityEngineTest",
    "POWERTOOLS_SERVICE_NAME": "capacity-engine",
    "ENVIRONMENT": "test",
    "POWERTOOLS_LOG_LEVEL": "DEBUG",  # the most the functions ever log
}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(base_url: str, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(
        base_url + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with _OPENER.open(request, timeout=30) as response:
            raw, status, reply = response.read(), response.status, response.headers
    except urllib.error.HTTPError as exc:
        raw, status, reply = exc.read(), exc.code, exc.headers
    return status, reply, json.loads(raw) if raw else None


# ---------------------------------------------------------------- API key


@pytest.mark.e2e
def test_the_api_key_is_required_on_every_route(seeded_db):
    with LocalApi(database_url=seeded_db, instances=1, api_keys=[API_KEY], env=SERVER_ENV) as api:
        routes = [
            ("POST", "/bookings", booking_body()),
            ("GET", f"/bookings/{uuid.uuid4()}", None),
            ("DELETE", f"/bookings/{uuid.uuid4()}", None),
            ("GET", f"/restaurants/{RESTAURANT_ID}/availability?date={FUTURE_DATE}", None),
        ]
        for method, path, body in routes:
            for headers in ({}, {"x-api-key": "not-the-key"}, {"x-api-key": ""}):
                status, reply, problem = http(
                    api.base_url, method, path, body=body, headers={**headers, "Idempotency-Key": "k-403"}
                )
                assert (status, problem["code"]) == (403, "forbidden"), (method, path, headers)
                assert reply["Content-Type"] == "application/problem+json"
        with psycopg.connect(seeded_db) as conn:
            assert conn.execute("SELECT count(*) FROM bookings").fetchone()[0] == 0
        # the key itself opens every route
        status, _, created = http(
            api.base_url,
            "POST",
            "/bookings",
            body=booking_body(),
            headers={"x-api-key": API_KEY, "Idempotency-Key": "k"},
        )
        assert status == 201
        status, _, _ = http(
            api.base_url, "GET", f"/bookings/{created['booking']['id']}", headers={"x-api-key": API_KEY}
        )
        assert status == 200


# ---------------------------------------------------------------- personal data in logs


def guest(n: int) -> dict[str, str]:
    return {"name": f"Guestname{n:03d} Zqx", "email": f"mail{n:03d}.zqx@example.org", "phone": f"+44 7700 9{n:05d}"}


@pytest.mark.e2e
def test_no_guest_personal_data_in_any_log_line_of_a_load_run(seeded_db, tmp_path):
    log = tmp_path / "serve.log"
    guests = [guest(n) for n in range(48)]
    # invalid personal data too: a refused email or phone must not be echoed into a log either
    bad = [
        {"name": "Badmail Zqx", "email": "badmail.zqx-at-example.org"},
        {"name": "Badphone Zqx", "phone": "call 0zqx 5550"},
    ]
    with LocalApi(
        database_url=seeded_db, instances=2, api_keys=[API_KEY], env=SERVER_ENV, log_path=log, function_logs=True
    ) as api:

        def one(n: int) -> int:
            # 6 slots of 20 covers, parties of 4: some slots fill up (409), every 7th is a replay
            body = booking_body(time=["18:00", "18:15", "18:30", "19:00", "19:15", "19:30"][n % 6], partySize=4)
            body["guest"] = guests[n % len(guests)] if n < 60 else bad[n % 2]
            body["notes"] = f"note for {guests[n % len(guests)]['name']}"
            key = f"load-{n - 1 if n % 7 == 0 and n else n}"
            status, _, reply = http(
                api.base_url, "POST", "/bookings", body=body, headers={"x-api-key": API_KEY, "Idempotency-Key": key}
            )
            if status == 201 and n % 5 == 0:
                http(api.base_url, "DELETE", f"/bookings/{reply['booking']['id']}", headers={"x-api-key": API_KEY})
            return status

        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = Counter(pool.map(one, range(64)))
    assert statuses[201] > 0 and statuses[409] > 0 and statuses[422] > 0, statuses
    text = log.read_text()
    assert "booking outcome" in text  # the functions did log: the search below is not vacuous
    personal = [value for g in [*guests, *bad] for value in g.values()]
    pieces = {*personal, *(v.split()[0] for v in personal), *(v.split("@")[0] for v in personal if "@" in v)}
    leaks = sorted({p for p in pieces if p in text})
    assert leaks == [], f"personal data in the log: {leaks}"
    assert "Zqx" not in text and "zqx" not in text  # the marker every name, email and phone carries


# ---------------------------------------------------------------- hostile strings

HOSTILE = [
    "Robert'); DROP TABLE bookings;--",
    "<script>alert('x')</script>",
    '"quoted" \\backslash\\ %s %n {0} ${jndi:ldap://127.0.0.1/x}',
    "名前 Ünïcödé 😀 👩‍👩‍👧",
    "\u202eRTL override\u202c and zero\u200bwidth",
    "e\u0301\u0301 combining",
    "tab\tand\nnewline\r\ninside",
    "' OR '1'='1",
    "x" * 200,
]


@pytest.mark.integration
def test_hostile_but_valid_contact_details_are_stored_verbatim(booking_app, conn):
    contact = {"name": "Zoë O'Brien-<b>", "email": "o'brien+tag%x&y@example.com", "phone": "+44 (20) 7946-0000"}
    status, _, reply = invoke(booking_app, post_booking_event(booking_body(guest=contact), key="contact"))
    assert status == 201, reply
    row = conn.execute(
        "SELECT guest_name, guest_email, guest_phone FROM bookings WHERE id = %s", (reply["booking"]["id"],)
    ).fetchone()
    assert (row["guest_name"], row["guest_email"], row["guest_phone"]) == tuple(contact.values())


@pytest.mark.integration
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_are_stored_verbatim(booking_app, conn, text):
    body = booking_body(guest={"name": text, "email": "ada@example.com"}, notes=(text * 5)[:1000])
    key = "';DROP/**/TABLE/**/bookings;--" + str(len(text))
    status, _, reply = invoke(booking_app, post_booking_event(body, key=key))
    assert status == 201, reply
    row = conn.execute(
        "SELECT guest_name, notes, idempotency_key FROM bookings WHERE id = %s", (reply["booking"]["id"],)
    ).fetchone()
    assert (row["guest_name"], row["notes"], row["idempotency_key"]) == (text, (text * 5)[:1000], key)
    # and the answer never carries them back
    assert text not in json.dumps(reply, ensure_ascii=False)
    assert conn.execute("SELECT to_regclass('public.bookings') IS NOT NULL AS ok").fetchone()["ok"]


# ---------------------------------------------------------------- the functions' role


DDL = [
    "CREATE TABLE intruder (id int)",
    "DROP TABLE bookings",
    "ALTER TABLE bookings ADD COLUMN intruder text",
    "ALTER TABLE bookings DROP CONSTRAINT bookings_party_size_check",
    "CREATE INDEX intruder ON bookings (notes)",
    "TRUNCATE bookings",
    "CREATE SCHEMA intruder",
    "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DROP TRIGGER IF EXISTS weekly_rules_history ON weekly_rules",
    "CREATE ROLE intruder",
    "ALTER ROLE capacity_app CREATEDB",
    "DELETE FROM schema_migrations",
    "UPDATE capacity_changes SET actor = 'intruder'",
]


@pytest.mark.integration
def test_the_functions_role_has_no_ddl_rights(function_user, conn):
    refused = []
    with psycopg.connect(function_user, autocommit=True) as fn:
        assert fn.execute("SELECT current_user").fetchone()[0].startswith("capacity_fn_")
        for statement in DDL:
            try:
                fn.execute(statement)
            except (errors.InsufficientPrivilege, errors.ObjectNotInPrerequisiteState) as exc:
                refused.append(statement)
                assert exc.sqlstate in ("42501", "55000"), (statement, exc.sqlstate)
    assert refused == DDL
    assert conn.execute("SELECT to_regclass('public.intruder') IS NULL AS gone").fetchone()["gone"]


@pytest.mark.integration
def test_the_functions_role_books_reads_and_cancels(function_user, seed, handler_env, conn):
    from tests.support import BASE_SEED

    seed(BASE_SEED)
    handler_env(function_user)
    from capacity import settings

    settings.booking_settings.cache_clear()
    module = load_handler("create_booking", fresh=True)
    try:
        status, _, created = invoke(module, post_booking_event(booking_body(), key="role-1"))
        assert status == 201, created
        booking_id = created["booking"]["id"]
        get = rest_event("GET", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a")
        assert invoke(module, get)[0] == 200
        cancel = rest_event("DELETE", f"/bookings/{booking_id}", api_key="tenant-a", api_key_id="id-tenant-a")
        assert invoke(module, cancel)[2]["booking"]["status"] == "cancelled"
        assert invoke(module, post_booking_event(booking_body(partySize=12), key="role-2"))[0] == 201
        assert invoke(module, post_booking_event(booking_body(partySize=8), key="role-2b"))[0] == 201
        assert invoke(module, post_booking_event(booking_body(), key="role-3"))[0] == 409
    finally:
        module.service.db.close()
        settings.booking_settings.cache_clear()
    events = {r["event_type"] for r in conn.execute("SELECT event_type FROM observability_events")}
    assert {"booking.success", "booking.cancelled", "booking.capacity_exceeded"} <= events
