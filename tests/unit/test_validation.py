"""Request validation (every field), problem+json mapping, idempotency keys and fingerprints,
settings validated at cold start. No network, no database."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from capacity.db import Backoff, is_transient
from capacity.http import declared_media_type, media_type_refusal, problem_response, validation_problem, with_instance
from capacity.idempotency import ANONYMOUS_TENANT, KEY_PATTERN, fingerprint, tenant_of
from capacity.models import BookingRequest
from capacity.outcomes import DEFAULT_PROBLEM_TYPE_BASE, PROBLEM_TITLES, ProblemCode, ProblemError, problem_body
from capacity.scheduled_settings import AlertSettings
from capacity.settings import BookingSettings, SettingsError
from tests.problems import PROBLEM_MEMBERS
from tests.support import booking_body

ROOT = Path(__file__).resolve().parents[2]


def parse(**overrides: Any) -> BookingRequest:
    return BookingRequest.model_validate(booking_body(**overrides))


def errors_of(**overrides: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse(**overrides)
    problem = validation_problem(info.value.errors())
    assert problem.code is ProblemCode.VALIDATION_ERROR
    return problem.body()["errors"]


def fields_of(**overrides: Any) -> set[str]:
    return {e["field"] for e in errors_of(**overrides)}


class TestBookingRequest:
    def test_valid_body(self):
        req = parse(notes="window seat")
        assert req.party_size == 2 and req.source == "web" and req.slot_time.hour == 19

    def test_source_defaults_to_api(self):
        body = booking_body()
        del body["source"]
        assert BookingRequest.model_validate(body).source == "api"

    @pytest.mark.parametrize("party", [0, 51, -1, 2.5, "2", True, None])
    def test_party_size_is_an_integer_1_to_50(self, party):
        assert fields_of(partySize=party) == {"partySize"}

    @pytest.mark.parametrize("party", [1, 50])
    def test_party_size_bounds_are_inclusive(self, party):
        assert parse(partySize=party).party_size == party

    @pytest.mark.parametrize(
        "date", ["2030-6-14", "14/06/2030", "2030-02-30", 20300614, "2030-06-14T19:00:00", "1798156800"]
    )
    def test_date_is_yyyy_mm_dd(self, date):
        assert fields_of(date=date) == {"date"}

    @pytest.mark.parametrize("time", ["7pm", "19:00:00", "24:00", "19:60", "9:00", 1900])
    def test_time_is_hh_mm(self, time):
        assert fields_of(time=time) == {"time"}

    def test_restaurant_id_is_a_uuid(self):
        assert fields_of(restaurantId="trattoria") == {"restaurantId"}

    def test_guest_name_required_and_not_blank(self):
        assert fields_of(guest={"email": "a@example.com"}) == {"guest.name"}
        assert fields_of(guest={"name": "   "}) == {"guest.name"}

    def test_guest_email_and_phone_are_validated_but_optional(self):
        assert parse(guest={"name": "Ada"}).guest.email is None
        assert fields_of(guest={"name": "Ada", "email": "not-an-email"}) == {"guest.email"}
        assert fields_of(guest={"name": "Ada", "phone": "call me"}) == {"guest.phone"}

    def test_nul_characters_are_a_field_error(self):
        assert fields_of(guest={"name": "A\x00da"}, notes="x\x00") == {"guest.name", "notes"}

    def test_notes_at_most_1000_characters(self):
        assert parse(notes="x" * 1000).notes
        assert fields_of(notes="x" * 1001) == {"notes"}

    def test_source_is_a_short_slug(self):
        assert parse(source="load-test").source == "load-test"
        assert fields_of(source="Web Site!") == {"source"}

    def test_unknown_fields_are_rejected_at_every_level(self):
        errs = errors_of(tableNumber=4, guest={"name": "Ada", "vip": True})
        assert {e["field"]: e["message"] for e in errs} == {
            "tableNumber": "unknown field",
            "guest.vip": "unknown field",
        }

    def test_every_failing_field_is_listed(self):
        assert fields_of(partySize=0, time="7pm", date="soon") == {"partySize", "time", "date"}

    def test_errors_never_echo_the_input(self):
        errs = errors_of(guest={"name": "Ada", "email": "ada-secret-address"})
        assert "ada-secret-address" not in json.dumps(errs)


# Words a caller cannot act on: a pattern, pydantic's phrasing, Python type names.
LEAKS = re.compile(
    r"pattern|\^|\$|Input should|String should|dictionary|instance of|UUID input|Value error|Field required"
)


class TestFieldMessages:
    """Every field error is a sentence that completes "<field> ..."."""

    @pytest.mark.parametrize(
        ("overrides", "field", "message"),
        [
            ({"time": "7pm"}, "time", "must be a time as HH:MM, 00:00 to 23:59"),
            ({"time": 1900}, "time", "must be a string"),
            ({"date": "14/06/2030"}, "date", "must be a date as YYYY-MM-DD"),
            ({"date": "2030-02-30"}, "date", "must be a real calendar date as YYYY-MM-DD"),
            ({"partySize": 0}, "partySize", "must be at least 1"),
            ({"partySize": 51}, "partySize", "must be at most 50"),
            ({"partySize": "2"}, "partySize", "must be a whole number"),
            ({"partySize": 2.5}, "partySize", "must be a whole number"),
            ({"restaurantId": "trattoria"}, "restaurantId", "must be a UUID"),
            ({"restaurantId": 5}, "restaurantId", "must be a UUID"),
            ({"guest": "Ada"}, "guest", "must be a JSON object"),
            ({"guest": {}}, "guest.name", "is required"),
            ({"guest": {"name": "  "}}, "guest.name", "must not be empty"),
            ({"guest": {"name": "x" * 201}}, "guest.name", "must be at most 200 characters"),
            ({"guest": {"name": "Ada", "email": "nope"}}, "guest.email", "must be an email address"),
            (
                {"guest": {"name": "Ada", "phone": "call me"}},
                "guest.phone",
                "must be a phone number: 6-25 digits, spaces, brackets or dashes, optionally after a +",
            ),
            (
                {"source": "Web!"},
                "source",
                "must be 1-32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
            ),
            ({"notes": "x" * 1001}, "notes", "must be at most 1000 characters"),
            ({"tableNumber": 4}, "tableNumber", "unknown field"),
        ],
    )
    def test_exact_message(self, overrides, field, message):
        assert errors_of(**overrides) == [{"field": field, "message": message}]

    def test_a_missing_field_is_required(self):
        body = booking_body()
        del body["time"]
        with pytest.raises(ValidationError) as info:
            BookingRequest.model_validate(body)
        assert validation_problem(info.value.errors()).body()["errors"] == [{"field": "time", "message": "is required"}]

    @pytest.mark.parametrize(
        "overrides",
        [
            {"time": "7pm", "date": "2030-13-01", "partySize": True, "source": "A B", "notes": 5},
            {"guest": {"name": 5, "email": 5, "phone": "x", "vip": 1}, "restaurantId": None},
            {"date": None, "time": None, "partySize": None, "guest": None, "source": None},
        ],
    )
    def test_no_message_names_a_pattern_or_a_type(self, overrides):
        for error in errors_of(**overrides):
            assert not LEAKS.search(error["message"]), error

    def test_an_unknown_error_kind_falls_back_to_a_plain_sentence(self):
        problem = validation_problem([{"type": "frobnicated", "loc": ("body", "x"), "msg": "Input should be frob"}])
        assert problem.body()["errors"] == [{"field": "x", "message": "is not valid"}]

    def test_a_header_sent_twice_needs_exactly_one_key(self):
        errs = [{"type": "string_type", "loc": ("header", "idempotency-key"), "msg": "Input should be a valid string"}]
        problem = validation_problem(errs)
        assert (problem.status, problem.body()["errors"]) == (
            422,
            [{"field": "Idempotency-Key", "message": "was sent more than once: exactly one key is required"}],
        )


class TestMediaTypes:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Content-Type": "application/json"},
            {"content-type": "APPLICATION/JSON"},
            {"Content-Type": "application/json; charset=utf-8"},
            {"Content-Type": " Application/Json ;charset=UTF-8"},
            {"Content-Type": ["text/plain", "application/json"]},  # multiValueHeaders: the last one
        ],
    )
    def test_json_in_any_case_or_no_content_type_is_accepted(self, headers):
        assert media_type_refusal(headers) is None

    @pytest.mark.parametrize(
        ("value", "declared"),
        [
            ("multipart/form-data; boundary=x", "multipart/form-data"),
            ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
            ("text/plain", "text/plain"),
            ("application/jsonx", "application/jsonx"),
            ("application/problem+json", "application/problem+json"),
        ],
    )
    def test_any_other_media_type_is_415_with_accept_post(self, value, declared):
        assert declared_media_type({"Content-Type": value}) == declared
        problem = media_type_refusal({"Content-Type": value})
        assert problem is not None and problem.status == 415
        assert problem.code is ProblemCode.UNSUPPORTED_MEDIA_TYPE
        assert problem.headers == {"Accept-Post": "application/json"}


class TestProblems:
    def test_malformed_json_is_400(self):
        err = [{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error"}]
        assert validation_problem(err).code is ProblemCode.MALFORMED_REQUEST

    def test_missing_or_non_object_body_is_400(self):
        assert validation_problem([{"type": "missing", "loc": ("body",), "msg": "x"}]).status == 400
        assert validation_problem([{"type": "model_attributes_type", "loc": ("body",), "msg": "x"}]).status == 400

    def test_problem_body_has_the_rfc9457_members_and_code(self, monkeypatch):
        monkeypatch.delenv("PROBLEM_TYPE_BASE", raising=False)
        body = problem_body(ProblemCode.CAPACITY_EXCEEDED, "full", requested=4, remainingCovers=None, other=None)
        assert body == {
            "type": DEFAULT_PROBLEM_TYPE_BASE + "capacity_exceeded",
            "title": "Not enough covers left",
            "status": 409,
            "detail": "full",
            "code": "capacity_exceeded",
            "requested": 4,
            "remainingCovers": None,
        }

    def test_problem_type_is_an_absolute_uri_under_the_configured_base(self, monkeypatch):
        assert DEFAULT_PROBLEM_TYPE_BASE.startswith("https://") and DEFAULT_PROBLEM_TYPE_BASE.endswith("#")
        monkeypatch.setenv("PROBLEM_TYPE_BASE", "https://docs.example.org/problems/")
        assert problem_body(ProblemCode.SLOT_CLOSED, "x")["type"] == "https://docs.example.org/problems/slot_closed"

    def test_every_code_is_a_section_of_the_problems_doc(self):
        doc = (ROOT / "docs" / "problems.md").read_text()
        headings = set(re.findall(r"^## `?([a-z_]+)`?$", doc, flags=re.MULTILINE))
        assert headings == {code.value for code in ProblemCode}
        # the default base is that document: its anchors are the codes
        assert DEFAULT_PROBLEM_TYPE_BASE.endswith("docs/problems.md#")

    def test_member_order_is_the_same_for_every_code(self):
        extras = {"alternatives": [], "requested": 4, "errors": [], "remainingCovers": 2}
        orders = {
            tuple(problem_body(code, "d", instance="req-1", **dict(reversed(extras.items())))) for code in ProblemCode
        }
        assert orders == {PROBLEM_MEMBERS}

    def test_with_instance_keeps_a_stored_body_and_orders_its_members(self):
        stored = {
            "code": "capacity_exceeded",
            "alternatives": [],
            "type": "/problems/capacity_exceeded",
            "title": "Slot is full",
            "status": 409,
            "detail": "d",
            "requested": 4,
            "remainingCovers": 2,
        }
        body = with_instance(stored, "req-9")
        assert list(body) == [member for member in PROBLEM_MEMBERS if member != "errors"]  # it has none
        assert body["instance"] == "req-9" and body["type"] == "/problems/capacity_exceeded"
        assert {k: v for k, v in body.items() if k != "instance"} == stored

    def test_capacity_exceeded_says_what_is_true(self):
        # 2 covers left for a party of 4: the slot is not full, there are not enough covers
        assert PROBLEM_TITLES[ProblemCode.CAPACITY_EXCEEDED] == (409, "Not enough covers left")
        assert PROBLEM_TITLES[ProblemCode.UNSUPPORTED_MEDIA_TYPE] == (415, "Unsupported media type")

    def test_problem_response_is_problem_json_with_headers(self):
        exc = ProblemError(ProblemCode.RATE_LIMITED, "slow down", headers={"Retry-After": "2"})
        response = problem_response(exc)
        assert response.status_code == 429
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["Retry-After"] == "2"
        assert json.loads(str(response.body))["code"] == "rate_limited"
        assert str(exc) == "rate_limited: slow down"

    def test_every_code_has_a_status(self):
        assert set(PROBLEM_TITLES) == set(ProblemCode)


class TestIdempotency:
    @pytest.mark.parametrize(
        ("key", "ok"),
        [
            ("a", True),
            ("x" * 255, True),
            ("x" * 256, False),
            ("", False),
            ("has space", False),
            ("tab\t", False),
            ("é", False),
            (None, False),
        ],
    )
    def test_key_is_1_to_255_visible_ascii(self, key, ok):
        assert (key is not None and KEY_PATTERN.fullmatch(key) is not None) is ok

    def test_fingerprint_ignores_key_order_and_omitted_defaults(self):
        body = booking_body(source="api")
        reordered = dict(reversed(list(body.items())))
        del reordered["source"]
        assert fingerprint(BookingRequest.model_validate(body)) == fingerprint(BookingRequest.model_validate(reordered))

    def test_fingerprint_changes_with_the_request(self):
        assert fingerprint(parse()) != fingerprint(parse(partySize=3))

    def test_tenant_is_the_api_key_id_or_a_digest_of_the_key(self):
        assert tenant_of({"identity": {"apiKeyId": "abc", "apiKey": "secret"}}) == "abc"
        digest = tenant_of({"identity": {"apiKey": "secret"}})
        assert digest.startswith("key-sha256:") and "secret" not in digest
        assert digest != tenant_of({"identity": {"apiKey": "other"}})
        assert tenant_of({}) == ANONYMOUS_TENANT


class TestSettings:
    def test_defaults(self):
        s = BookingSettings.from_env({})
        assert (s.max_attempts, s.environment, s.idempotency_ttl_hours) == (4, "dev", 24)
        a = AlertSettings.from_env({})
        assert (a.conflict_rate_threshold, a.conflict_min_requests, a.alert_cooldown_minutes) == (0.05, 20, 60)
        assert a.alert_webhook_url is None

    def test_values_from_the_environment(self):
        s = BookingSettings.from_env(
            {"BOOKING_MAX_ATTEMPTS": "6", "DATABASE_URL": "postgresql://h/db", "ENVIRONMENT": ""}
        )
        assert s.max_attempts == 6 and s.database_url == "postgresql://h/db" and s.environment == "dev"

    @pytest.mark.parametrize(
        ("env", "var"),
        [
            ({"BOOKING_MAX_ATTEMPTS": "many"}, "BOOKING_MAX_ATTEMPTS"),
            ({"BOOKING_MAX_ATTEMPTS": "0"}, "BOOKING_MAX_ATTEMPTS"),
            ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
            ({"IDEMPOTENCY_TTL_HOURS": "1"}, "IDEMPOTENCY_TTL_HOURS"),
        ],
    )
    def test_invalid_setting_stops_with_the_variable_named(self, env, var):
        with pytest.raises(SettingsError, match=f"^invalid setting {var}: "):
            BookingSettings.from_env(env)

    @pytest.mark.parametrize(("raw", "threshold"), [("off", None), (" OFF ", None), ("0", 0), ("12", 12)])
    def test_prepare_threshold_is_a_count_or_off(self, raw, threshold):
        assert BookingSettings.from_env({"DB_PREPARE_THRESHOLD": raw}).prepare_threshold == threshold
        assert BookingSettings.from_env({}).prepare_threshold == 5  # psycopg's own default

    @pytest.mark.parametrize("raw", ["never", "-1", "1.5"])
    def test_prepare_threshold_rejects_anything_else(self, raw):
        with pytest.raises(SettingsError, match=r"^invalid setting DB_PREPARE_THRESHOLD: "):
            BookingSettings.from_env({"DB_PREPARE_THRESHOLD": raw})

    def test_invalid_alert_settings(self):
        with pytest.raises(SettingsError, match="CONFLICT_RATE_THRESHOLD"):
            AlertSettings.from_env({"CONFLICT_RATE_THRESHOLD": "5%"})
        with pytest.raises(SettingsError, match="ALERT_WEBHOOK_URL"):
            AlertSettings.from_env({"ALERT_WEBHOOK_URL": "hooks.example.com/x"})

    def test_problem_type_base_is_an_absolute_url(self):
        assert BookingSettings.from_env({}).problem_type_base == DEFAULT_PROBLEM_TYPE_BASE
        base = "https://docs.example.org/capacity/problems#"
        assert BookingSettings.from_env({"PROBLEM_TYPE_BASE": base}).problem_type_base == base
        for bad in ("/problems/", "docs.example.org/problems#", "https://has space/"):
            with pytest.raises(SettingsError, match=r"^invalid setting PROBLEM_TYPE_BASE: must be an absolute"):
                BookingSettings.from_env({"PROBLEM_TYPE_BASE": bad})

    def test_secret_values_are_not_echoed(self):
        with pytest.raises(SettingsError) as info:
            BookingSettings.from_env({"DATABASE_URL": "mysql://user:hunter2@h/db"})
        assert "hunter2" not in str(info.value)


class TestRetryPolicy:
    def test_full_jitter_backoff_is_bounded_by_an_exponential_cap(self):
        top = Backoff(base_ms=20, cap_ms=400, rand=lambda lo, hi: hi)
        assert [top.delay_s(n) for n in (1, 2, 3, 4, 5, 6)] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.4]
        assert Backoff(base_ms=20, cap_ms=400, rand=lambda lo, hi: lo).delay_s(3) == 0

    def test_transient_errors(self):
        from psycopg import OperationalError, errors

        assert is_transient(errors.SerializationFailure())
        assert is_transient(errors.DeadlockDetected())
        assert is_transient(errors.LockNotAvailable())
        assert is_transient(OperationalError("server closed the connection unexpectedly"))
        assert not is_transient(errors.UniqueViolation())
        assert not is_transient(errors.UndefinedTable())
        assert not is_transient(ValueError())
