"""Least privilege (migration 009): the functions' role capacity_app holds exactly what the
booking function, the roll-up and the alert check use. Each function's real path runs as a login
member of capacity_app against a real PostgreSQL, and every write outside it is refused with the
database unchanged."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from capctl.apigw import LambdaContext, rest_event
from capctl.handlers import load_handler
from tests.alerting import insert_booking, insert_event, slot_date
from tests.support import (
    BASE_SEED,
    CLOSED_DATE,
    FUTURE_DATE,
    RESTAURANT_ID,
    booking_body,
    invoke,
    post_booking_event,
)

pytestmark = pytest.mark.integration

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "009_least_privilege.sql"
EVENTS = Path(__file__).resolve().parents[2] / "events"
TENANT = "id-tenant-a"  # the tenant of post_booking_event's default API key

_BOOKING_READ = (
    "id restaurant_id booking_date booking_time party_size status source tenant created_at guarded accepted_max_covers"
)
_BOOKING_WRITTEN = (
    "id restaurant_id booking_date booking_time party_size status source idempotency_key tenant run_id"
    " guest_name guest_email guest_phone notes created_at guarded accepted_max_covers"
)

# Every table of the schema and what capacity_app holds on it: a privilege on the whole table, or
# "PRIVILEGE(column)". A table missing here fails test_every_table_has_a_decision: a migration
# that adds one decides (and grants) what the functions may do with it.
TABLE_GRANTS: dict[str, set[str]] = {
    "restaurants": {"SELECT"},
    "weekly_rules": {"SELECT"},
    "capacity_overrides": {"SELECT"},
    "capacity_changes": {"SELECT"},
    "slot_usage": {"SELECT", "INSERT", "UPDATE(booked_covers)"},
    "bookings": {
        *(f"SELECT({c})" for c in _BOOKING_READ.split()),
        *(f"INSERT({c})" for c in _BOOKING_WRITTEN.split()),
        "UPDATE(status)",
        "UPDATE(cancelled_at)",
    },
    "idempotency_keys": {"SELECT", "INSERT", "DELETE"},
    "observability_events": {
        "SELECT",
        *(f"INSERT({c})" for c in ("event_type", "restaurant_id", "occurred_at", "metadata")),
    },
    "capacity_metrics_hourly": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "capacity_metrics_hourly_synthetic": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "alert_state": {"SELECT", "INSERT", "UPDATE"},
    "alert_deliveries": {"SELECT", "INSERT", "UPDATE"},
    "schema_migrations": set(),
}
SEQUENCE_GRANTS: dict[str, set[str]] = {
    "observability_events_id_seq": {"USAGE"},
    "alert_state_id_seq": {"USAGE"},
    "alert_deliveries_id_seq": {"USAGE"},
}

_GRANTED = """
SELECT c.relname AS relation, c.relkind AS kind, a.privilege_type AS privilege, NULL::name AS column_name
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = 'capacity_app'::regrole
UNION ALL
SELECT c.relname, c.relkind, a.privilege_type, att.attname
  FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
 WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = 'capacity_app'::regrole
"""


def granted(conn: Any) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """What capacity_app holds now: (tables, sequences), as TABLE_GRANTS and SEQUENCE_GRANTS say it."""
    tables: dict[str, set[str]] = {
        r["relname"]: set()
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
        )
    }
    sequences: dict[str, set[str]] = {}
    for r in conn.execute(_GRANTED):
        held = r["privilege"] if r["column_name"] is None else f"{r['privilege']}({r['column_name']})"
        (sequences if r["kind"] == "S" else tables).setdefault(r["relation"], set()).add(held)
    return tables, sequences


def default_grants(conn: Any) -> int:
    return conn.execute(
        "SELECT count(*)::int AS n FROM pg_default_acl d, aclexplode(d.defaclacl) a"
        " WHERE a.grantee = 'capacity_app'::regrole"
    ).fetchone()["n"]


# ---------------------------------------------------------------- the grants, exactly


def test_every_table_has_a_decision_and_the_role_holds_exactly_it(conn):
    tables, sequences = granted(conn)
    assert set(tables) == set(TABLE_GRANTS), "a table without a decision in TABLE_GRANTS (and migration 009)"
    assert tables == TABLE_GRANTS
    assert sequences == SEQUENCE_GRANTS
    # nothing for tables later migrations create, and no way to attach the history's writer
    assert default_grants(conn) == 0
    row = conn.execute(
        "SELECT has_function_privilege('capacity_app', 'record_capacity_change()', 'EXECUTE') AS may"
    ).fetchone()
    assert row["may"] is False


def test_009_runs_again_to_the_same_grants_and_takes_back_stray_ones(conn):
    before = granted(conn)
    # rights someone handed out by hand since: the migration's end state does not keep them
    conn.execute("GRANT ALL ON weekly_rules, bookings, capacity_changes TO capacity_app")
    conn.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO capacity_app")
    conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO capacity_app")
    conn.execute(MIGRATION.read_text().encode())
    assert granted(conn) == before
    assert default_grants(conn) == 0


def test_a_table_a_later_migration_creates_is_not_the_functions(conn, function_user):
    conn.execute("CREATE TABLE later_table (id int)")  # as the migrating role, after 009
    conn.execute("INSERT INTO later_table VALUES (1)")
    with psycopg.connect(function_user, autocommit=True) as fn:
        for statement in ("SELECT * FROM later_table", "DELETE FROM later_table"):
            with pytest.raises(errors.InsufficientPrivilege):
                fn.execute(statement)
    assert conn.execute("SELECT count(*)::int AS n FROM later_table").fetchone()["n"] == 1


# ---------------------------------------------------------------- every function's path, as capacity_app


@pytest.fixture
def as_function(function_user: str, seed: Any, handler_env: Any) -> Iterator[Any]:
    """Cold-start a function (create_booking, rollup_metrics, check_alerts) as Lambda would,
    connecting as the functions' user."""
    from capacity import settings

    seed(BASE_SEED)
    loaded: list[Any] = []

    def start(name: str, **env: str) -> Any:
        handler_env(function_user, **env)
        settings.booking_settings.cache_clear()
        module = load_handler(name, fresh=True)
        loaded.append(module)
        return module

    yield start
    for module in loaded:
        (module.service.db if hasattr(module, "service") else module.db).close()
    settings.booking_settings.cache_clear()


def scheduled(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def booking_request(method: str, path: str) -> dict[str, Any]:
    return rest_event(method, path, api_key="tenant-a", api_key_id=TENANT)


def test_the_booking_function_runs_every_outcome_as_capacity_app(as_function, conn):
    app = as_function("create_booking")
    status, _, first = invoke(app, post_booking_event(booking_body(partySize=12), key="k1"))
    assert status == 201, first
    # a replay, a reused key, a full slot, a closed date, a date's availability
    status, headers, again = invoke(app, post_booking_event(booking_body(partySize=12), key="k1"))
    assert (status, headers.get("Idempotent-Replayed"), again) == (201, "true", first)
    assert invoke(app, post_booking_event(booking_body(partySize=3), key="k1"))[2]["code"] == "idempotency_key_reused"
    assert invoke(app, post_booking_event(booking_body(partySize=10), key="k2"))[2]["code"] == "capacity_exceeded"
    closed = post_booking_event(booking_body(date=CLOSED_DATE), key="k3")
    assert invoke(app, closed)[2]["code"] == "slot_closed"
    availability = booking_request("GET", f"/restaurants/{RESTAURANT_ID}/availability")
    availability["queryStringParameters"] = {"date": FUTURE_DATE}
    status, _, day = invoke(app, availability)
    assert status == 200 and {s["time"]: s["remainingCovers"] for s in day["slots"]}["19:00"] == 8
    # a key whose record expired is free again: the old record deleted, a new booking made
    conn.execute(
        "INSERT INTO idempotency_keys (tenant, key, fingerprint, status_code, response, expires_at)"
        " VALUES (%s, 'old', 'other-body', 201, '{}', now() - interval '1 day')",
        (TENANT,),
    )
    status, _, renewed = invoke(app, post_booking_event(booking_body(time="19:15", partySize=4), key="old"))
    assert status == 201, renewed
    # read and cancel (twice: the second is a no-op)
    booking_id = first["booking"]["id"]
    assert invoke(app, booking_request("GET", f"/bookings/{booking_id}"))[2]["booking"]["partySize"] == 12
    for _ in range(2):
        status, _, cancelled = invoke(app, booking_request("DELETE", f"/bookings/{booking_id}"))
        assert (status, cancelled["booking"]["status"]) == (200, "cancelled")

    rows = conn.execute("SELECT idempotency_key, status, party_size FROM bookings ORDER BY created_at").fetchall()
    assert [tuple(r.values()) for r in rows] == [("k1", "cancelled", 12), ("old", "confirmed", 4)]
    usage = conn.execute("SELECT slot_time::text AS t, booked_covers FROM slot_usage ORDER BY 1").fetchall()
    assert [tuple(r.values()) for r in usage] == [("19:00:00", 0), ("19:15:00", 4)]
    keys = conn.execute(
        "SELECT key, status_code, fingerprint <> 'other-body' AS renewed FROM idempotency_keys ORDER BY key"
    )
    assert [tuple(r.values()) for r in keys] == [
        ("k1", 201, True),
        ("k2", 409, True),
        ("k3", 409, True),
        ("old", 201, True),
    ]
    events = [r["event_type"] for r in conn.execute("SELECT event_type FROM observability_events ORDER BY id")]
    assert events == [
        "booking.success",
        "booking.capacity_exceeded",
        "booking.capacity_exceeded",
        "booking.success",
        "booking.cancelled",
    ]


def test_the_booking_functions_lost_race_and_retry_exhaustion_run_as_capacity_app(as_function, conn, monkeypatch):
    from capacity import repository

    app = as_function("create_booking", BOOKING_BACKOFF_BASE_MS="1", BOOKING_BACKOFF_CAP_MS="2")
    read = repository.load_booking_context

    def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
        context = read(*args, **kwargs)
        conn.execute("INSERT INTO slot_usage VALUES (%s, %s, '19:00', 20)", (RESTAURANT_ID, FUTURE_DATE))
        return context

    monkeypatch.setattr(repository, "load_booking_context", read_then_lose_the_race)
    assert invoke(app, post_booking_event(booking_body(), key="race"))[2]["code"] == "capacity_exceeded"
    monkeypatch.undo()

    def deadlocked(*args: Any, **kwargs: Any) -> Any:
        raise errors.DeadlockDetected()

    monkeypatch.setattr(repository, "book", deadlocked)
    assert invoke(app, post_booking_event(booking_body(time="19:15"), key="stuck"))[2]["code"] == "retry_exhausted"

    events = conn.execute("SELECT event_type, count(*)::int AS n FROM observability_events GROUP BY 1").fetchall()
    assert {e["event_type"]: e["n"] for e in events} == {
        "booking.capacity_exceeded": 1,
        "booking.overbook_prevented": 1,
        "booking.conflict": 3,
        "booking.retry_exhausted": 1,
    }
    assert conn.execute("SELECT count(*)::int AS n FROM bookings").fetchone()["n"] == 0


def test_the_rollup_runs_as_capacity_app(as_function, conn):
    now = dt.datetime.now(dt.UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    insert_event(conn, "booking.success", at=hour + dt.timedelta(seconds=1), count=3)
    insert_event(conn, "booking.success", at=hour + dt.timedelta(seconds=1), attempts=2)
    # a synthetic row of the window with no synthetic traffic behind it any more: removed
    conn.execute(
        "INSERT INTO capacity_metrics_hourly_synthetic (restaurant_id, hour, requests) VALUES (%s, %s, 5)",
        (RESTAURANT_ID, hour),
    )
    # an expired idempotency record: purged
    conn.execute(
        "INSERT INTO idempotency_keys (tenant, key, fingerprint, status_code, response, expires_at)"
        " VALUES ('t', 'expired', 'f', 201, '{}', now() - interval '1 day')"
    )
    app = as_function("rollup_metrics")
    result = app.lambda_handler(scheduled("rollup_metrics_scheduled.json"), LambdaContext(function_name="Rollup"))
    assert result["synthetic"]["removed"] == 1 and result["purgedIdempotencyKeys"] == 1
    row = conn.execute(
        "SELECT requests, successes, conflicts FROM capacity_metrics_hourly WHERE restaurant_id = %s AND hour = %s",
        (RESTAURANT_ID, hour),
    ).fetchone()
    assert row == {"requests": 4, "successes": 4, "conflicts": 1}
    assert conn.execute("SELECT count(*)::int AS n FROM capacity_metrics_hourly_synthetic").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*)::int AS n FROM idempotency_keys").fetchone()["n"] == 0


def test_the_alert_check_opens_notifies_and_resolves_as_capacity_app(as_function, conn, topic):
    date = slot_date()
    # 19:00 overbooked behind the guard's back (plain SQL); 19:15 booked through the function,
    # then its capacity lowered below those bookings (the history names the change)
    over = [insert_booking(conn, date=date) for _ in range(6)]
    booking = as_function("create_booking")
    for n in range(3):
        body = booking_body(date=date.isoformat(), time="19:15", partySize=4)
        assert invoke(booking, post_booking_event(body, key=f"below-{n}"))[0] == 201
    conn.execute(
        "INSERT INTO capacity_overrides (restaurant_id, override_date, start_time, end_time, max_covers, reason)"
        " VALUES (%s, %s, '19:15', '19:30', 4, 'kitchen refit')",
        (RESTAURANT_ID, date),
    )
    app = as_function("check_alerts", ALERT_TOPIC_ARN=topic.topic_arn)
    context = LambdaContext(function_name="CheckAlerts")

    result = app.lambda_handler(scheduled("check_alerts_scheduled.json"), context)

    assert (result["opened"], result["overbookDetected"], result["deliveryFailures"]) == (2, 1, 0)
    alerts = conn.execute("SELECT kind, status FROM alert_state ORDER BY kind").fetchall()
    assert [tuple(a.values()) for a in alerts] == [("capacity_below_bookings", "open"), ("overbooking", "open")]
    assert len(topic.messages()) == 2
    sent = conn.execute("SELECT status, count(*)::int AS n FROM alert_deliveries GROUP BY 1").fetchall()
    assert [tuple(s.values()) for s in sent] == [("sent", 2)]
    detected = "SELECT count(*)::int AS n FROM observability_events WHERE event_type = 'booking.overbook_detected'"
    assert conn.execute(detected).fetchone()["n"] == 1

    # both put right: the extra bookings cancelled, the lowering taken back
    conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = ANY(%s::uuid[])", (over[:2],))
    conn.execute("DELETE FROM capacity_overrides WHERE reason = 'kitchen refit'")
    result = app.lambda_handler(scheduled("check_alerts_scheduled.json"), context)
    assert result["resolved"] == 2
    alerts = conn.execute("SELECT status, resolved_at IS NOT NULL AS done FROM alert_state").fetchall()
    assert alerts == [{"status": "resolved", "done": True}] * 2
    assert conn.execute("SELECT count(*)::int AS n FROM alert_deliveries WHERE status = 'sent'").fetchone()["n"] == 4


# ---------------------------------------------------------------- what it must not do


@pytest.fixture
def planted(seeded_db: str, conn: Any) -> str:
    """A booking with its ledger row, idempotency record and event, an incident with a notice."""
    booking_id = insert_booking(conn, date=slot_date())
    conn.execute("INSERT INTO slot_usage VALUES (%s, %s, '19:00', 4)", (RESTAURANT_ID, slot_date()))
    conn.execute(
        "INSERT INTO idempotency_keys (tenant, key, fingerprint, status_code, response, expires_at)"
        " VALUES ('t', 'k', 'f', 201, '{\"kept\": true}', now() + interval '1 day')"
    )
    insert_event(conn, "booking.success")
    alert = conn.execute(
        "INSERT INTO alert_state (restaurant_id, kind, severity, status, opened_at, last_seen_at, last_notified_at)"
        " VALUES (%s, 'overbooking', 'critical', 'open', now(), now(), now()) RETURNING id",
        (RESTAURANT_ID,),
    ).fetchone()
    conn.execute(
        "INSERT INTO alert_deliveries (alert_id, notice, channel, message, created_at)"
        " VALUES (%s, 'opened', 'sns', '{}', now())",
        (alert["id"],),
    )
    return booking_id


# (the statement, a query whose answer the refusal leaves as it was)
REFUSED = [
    ("UPDATE weekly_rules SET max_covers = 99", "SELECT count(*) FROM weekly_rules WHERE max_covers = 99"),
    (
        f"INSERT INTO weekly_rules (restaurant_id, weekday, start_time, end_time, max_covers)"
        f" VALUES ('{RESTAURANT_ID}', 1, '08:00', '09:00', 99)",
        "SELECT count(*) FROM weekly_rules",
    ),
    ("DELETE FROM capacity_overrides", "SELECT count(*) FROM capacity_overrides"),
    (
        f"INSERT INTO capacity_overrides (restaurant_id, override_date, max_covers)"
        f" VALUES ('{RESTAURANT_ID}', '{FUTURE_DATE}', 0)",
        "SELECT count(*) FROM capacity_overrides",
    ),
    ("UPDATE restaurants SET slot_minutes = 30", "SELECT slot_minutes FROM restaurants"),
    ("DELETE FROM restaurants", "SELECT count(*) FROM restaurants"),
    (
        f"INSERT INTO capacity_changes (restaurant_id, actor, kind) VALUES ('{RESTAURANT_ID}', 'x', 'weekly_rule.update')",
        "SELECT count(*) FROM capacity_changes",
    ),
    ("SELECT nextval('capacity_changes_id_seq')", "SELECT last_value FROM capacity_changes_id_seq"),
    ("SELECT nextval('weekly_rules_id_seq')", "SELECT last_value FROM weekly_rules_id_seq"),
    ("DELETE FROM bookings", "SELECT count(*) FROM bookings"),
    ("UPDATE bookings SET party_size = 1", "SELECT party_size FROM bookings"),
    ("UPDATE bookings SET accepted_max_covers = 99", "SELECT accepted_max_covers FROM bookings"),
    ("UPDATE bookings SET guest_email = NULL", "SELECT guest_email FROM bookings"),
    ("SELECT guest_name, guest_email, guest_phone FROM bookings", "SELECT count(*) FROM bookings"),
    ("SELECT notes FROM bookings", "SELECT count(*) FROM bookings"),
    ("UPDATE slot_usage SET slot_time = '20:00'", "SELECT slot_time FROM slot_usage"),
    ("DELETE FROM slot_usage", "SELECT count(*) FROM slot_usage"),
    ("UPDATE idempotency_keys SET response = '{}'", "SELECT response FROM idempotency_keys"),
    ("UPDATE observability_events SET event_type = 'x'", "SELECT event_type FROM observability_events"),
    ("DELETE FROM observability_events", "SELECT count(*) FROM observability_events"),
    (
        "INSERT INTO observability_events (id, event_type) VALUES (424242, 'booking.success')",
        "SELECT count(*) FROM observability_events",
    ),
    ("DELETE FROM alert_state", "SELECT count(*) FROM alert_state"),
    ("DELETE FROM alert_deliveries", "SELECT count(*) FROM alert_deliveries"),
    ("SELECT * FROM schema_migrations", "SELECT count(*) FROM schema_migrations"),
    # the history's writer attached to a table of its own, to write history rows through it
    (
        "CREATE TEMP TABLE forged (restaurant_id uuid, weekday int);"
        " CREATE TRIGGER forge AFTER INSERT ON forged FOR EACH ROW"
        " EXECUTE FUNCTION public.record_capacity_change('weekly_rule')",
        "SELECT count(*) FROM capacity_changes",
    ),
]


@pytest.mark.parametrize(("statement", "check"), REFUSED, ids=[s for s, _ in REFUSED])
def test_a_write_outside_the_functions_paths_is_refused(planted, conn, function_user, statement, check):
    before = conn.execute(check).fetchall()
    with psycopg.connect(function_user, autocommit=True) as fn, pytest.raises(errors.InsufficientPrivilege):
        fn.execute(statement)
    assert conn.execute(check).fetchall() == before
