"""Edges of the booking path: racing duplicates on a full slot, expired keys, run ids, failures
while recording failures, reads on a broken connection, unexpected errors, secrets."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

import boto3
import psycopg
import pytest
from moto import mock_aws
from psycopg import errors

from capacity import repository
from capacity.db import Database, resolve_database_url
from capacity.reconcile import slot_states
from capacity.rules import Override
from capacity.scheduled_settings import AlertSettings
from capacity.settings import DatabaseSettings
from capctl.apigw import rest_event
from capctl.handlers import load_handler
from tests.support import FUTURE_DATE, RESTAURANT_ID, booking_body, invoke, post_booking_event, with_header


def events(conn: Any) -> Counter[str]:
    return Counter(r["event_type"] for r in conn.execute("SELECT event_type FROM observability_events"))


@pytest.fixture
def fast_app(seeded_db, handler_env):
    handler_env(seeded_db, BOOKING_BACKOFF_BASE_MS="1", BOOKING_BACKOFF_CAP_MS="2")
    from capacity import settings

    settings.booking_settings.cache_clear()
    module = load_handler("create_booking", fresh=True, instance="edges")
    yield module
    module.service.db.close()
    settings.booking_settings.cache_clear()


def forget_stored(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The next ``times`` reads miss the stored response, as a request that read just before a
    concurrent duplicate committed would."""
    original = repository.load_booking_context
    left = [times]

    def read(*args: Any, **kwargs: Any) -> Any:
        context = original(*args, **kwargs)
        if left[0] > 0:
            left[0] -= 1
            return dataclasses.replace(context, stored=None)
        return context

    monkeypatch.setattr(repository, "load_booking_context", read)


def fill_slot(app: Any) -> None:
    assert invoke(app, post_booking_event(booking_body(partySize=12), key="fill-a"))[0] == 201
    assert invoke(app, post_booking_event(booking_body(partySize=8), key="fill-b"))[0] == 201


class TestRacingDuplicates:
    def test_duplicate_refusal_on_a_full_slot_is_replayed(self, fast_app, conn, monkeypatch):
        fill_slot(fast_app)
        first = invoke(fast_app, post_booking_event(booking_body(), key="k"))
        forget_stored(monkeypatch, 1)
        second = invoke(fast_app, post_booking_event(booking_body(), key="k"))
        assert first[0] == second[0] == 409 and second[2] == first[2]
        assert second[1]["Idempotent-Replayed"] == "true"
        assert events(conn)["booking.capacity_exceeded"] == 1

    def test_a_key_that_stays_in_flight_answers_409_in_progress(self, fast_app, conn, monkeypatch):
        invoke(fast_app, post_booking_event(booking_body(), key="k"))
        forget_stored(monkeypatch, 99)
        status, headers, body = invoke(fast_app, post_booking_event(booking_body(), key="k"))
        assert (status, body["code"]) == (409, "idempotency_in_progress") and headers["Retry-After"] == "1"
        assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 1


class TestKeys:
    def test_an_expired_key_is_free_again(self, fast_app, conn):
        invoke(fast_app, post_booking_event(booking_body(partySize=2), key="old"))
        conn.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        status, headers, body = invoke(fast_app, post_booking_event(booking_body(partySize=3), key="old"))
        assert status == 201 and "Idempotent-Replayed" not in headers
        assert body["capacity"]["bookedCovers"] == 5
        stored = conn.execute("SELECT response FROM idempotency_keys").fetchall()
        assert [r["response"]["booking"]["partySize"] for r in stored] == [3]

    def test_the_run_id_is_stored_with_the_booking_and_its_events(self, fast_app, conn):
        event = post_booking_event(booking_body(source="load-test"))
        with_header(event, "X-Run-Id", "run-42")
        assert invoke(fast_app, event)[0] == 201
        assert conn.execute("SELECT run_id, source FROM bookings").fetchone() == {
            "run_id": "run-42",
            "source": "load-test",
        }
        meta = conn.execute("SELECT metadata FROM observability_events").fetchone()["metadata"]
        assert meta["runId"] == "run-42" and meta["source"] == "load-test"


class TestFailures:
    def test_exhaustion_is_503_even_when_recording_it_fails(self, fast_app, conn, monkeypatch):
        def always_conflict(*args: Any, **kwargs: Any) -> Any:
            raise errors.SerializationFailure()

        def database_gone(*args: Any, **kwargs: Any) -> None:
            raise psycopg.OperationalError("the database went away")

        monkeypatch.setattr(repository, "book", always_conflict)
        monkeypatch.setattr(repository, "record_events", database_gone)
        event = post_booking_event(booking_body())
        with_header(event, "X-Run-Id", "run-7")
        status, _, body = invoke(fast_app, event)
        assert (status, body["code"]) == (503, "retry_exhausted")
        assert events(conn) == {} and conn.execute("SELECT count(*) AS n FROM idempotency_keys").fetchone()["n"] == 0

    def test_an_unexpected_database_error_is_a_500_problem_without_details(self, fast_app, monkeypatch, capsys, caplog):
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise errors.UndefinedTable('relation "bookings" does not exist: guest Ada Lovelace')

        monkeypatch.setattr(repository, "book", broken)
        status, headers, body = invoke(fast_app, post_booking_event(booking_body()))
        assert (status, body["code"]) == (500, "internal_error")
        assert headers["Content-Type"] == "application/problem+json"
        output = capsys.readouterr()
        logged = [vars(r) for r in caplog.records]
        assert "Ada" not in output.out + output.err + json.dumps(body) + repr(logged)
        assert [(r["errorType"], r["sqlstate"]) for r in logged if "errorType" in r] == [("UndefinedTable", "42P01")]

    def test_a_read_on_a_killed_connection_is_retried_once(self, fast_app, conn):
        path = f"/restaurants/{RESTAURANT_ID}/availability"
        assert invoke(fast_app, rest_event("GET", path, query={"date": FUTURE_DATE}))[0] == 200
        pid = fast_app.service.db.connection().info.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        status, _, body = invoke(fast_app, rest_event("GET", path, query={"date": FUTURE_DATE}))
        assert status == 200 and len(body["slots"]) == 20

    def test_a_read_that_keeps_failing_is_not_retried_forever(self, fast_app, monkeypatch):
        calls = []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            raise errors.QueryCanceled()

        monkeypatch.setattr(repository, "get_booking", failing)
        status, headers, body = invoke(fast_app, rest_event("GET", f"/bookings/{RESTAURANT_ID}"))
        assert (status, body["code"], len(calls)) == (503, "retry_exhausted", 2)
        assert headers["Retry-After"] == "1" and headers["Content-Type"] == "application/problem+json"


class TestDatabaseSettings:
    def test_url_from_a_secrets_manager_secret(self, monkeypatch):
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        with mock_aws():
            arn = boto3.client("secretsmanager").create_secret(
                Name="capacity/db",
                SecretString=json.dumps(
                    {
                        "username": "app",
                        "password": "p@ss:/?# 'w",
                        "host": "proxy.local",
                        "port": 5432,
                        "dbname": "capacity",
                    }
                ),
            )["ARN"]
            settings = DatabaseSettings.from_env({"DATABASE_SECRET_ARN": arn})
            parsed = psycopg.conninfo.conninfo_to_dict(resolve_database_url(settings))
            assert parsed == {
                "host": "proxy.local",
                "port": "5432",
                "dbname": "capacity",
                "user": "app",
                "password": "p@ss:/?# 'w",
            }

    def test_no_database_configured_is_unavailable(self):
        from capacity.db import DatabaseUnavailable

        with pytest.raises(DatabaseUnavailable):
            Database(DatabaseSettings.from_env({})).connection()

    def test_webhook_url_accepted(self):
        assert AlertSettings.from_env({"ALERT_WEBHOOK_URL": "https://hooks.example.com/x"}).alert_webhook_url


def test_reconcile_with_no_bookings(conn):
    assert slot_states(conn) == []


def test_whole_date_override_holds_all_day():
    whole = Override(dt_date(), 5)
    assert whole.whole_date and whole.holds(__import__("datetime").time(3, 0)) and whole.width_minutes() == 1440


def dt_date() -> Any:
    import datetime

    return datetime.date(2030, 6, 14)


@pytest.mark.parametrize("context", [None, {"identity": {"apiKeyId": "id-tenant-a"}}], ids=["none", "no-request-id"])
def test_a_hand_written_event_without_request_context_or_id_is_answered_not_500(booking_app, conn, context):
    """`sam local invoke -e my-event.json` with no requestContext (or no requestId in it): the
    booking is made (or refused) as usual, and a refusal's problem has no instance, never a 500."""
    event = post_booking_event(booking_body(), key="hand-written")
    if context is None:
        del event["requestContext"]
    else:
        event["requestContext"] = context
    status, _, body = invoke(booking_app, event)
    assert status == 201, body
    assert conn.execute("SELECT count(*) AS n FROM bookings").fetchone()["n"] == 1
    event = post_booking_event(booking_body(partySize=0), key="hand-written-2")
    event.pop("requestContext")
    status, _, problem = invoke(booking_app, event)
    assert (status, problem["code"], "instance" in problem) == (422, "validation_error", False)
