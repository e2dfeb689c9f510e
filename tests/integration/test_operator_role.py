"""The operators' role as docs/capacity/deploy.md sets it up: its SQL block run as written, then
on-call's commands run through capctl as a person's login, against a real PostgreSQL. What the
operator changes is recorded under their name; what the role must not do is refused."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.command_line import on_database, run
from tests.roles import login_url, temporary_role
from tests.support import BASE_SEED, FUTURE_DATE, RESTAURANT_ID, booking_body, invoke, post_booking_event

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "capacity" / "deploy.md"


def operator_setup(group: str, database: str) -> str:
    """deploy.md's block that sets up capacity_operator, for this test's group role and database
    (its CREATE ROLE lines left out: the test makes and drops its roles itself)."""
    blocks = re.findall(r"```sql\n(.*?)```", DEPLOY.read_text(), re.DOTALL)
    [block] = [b for b in blocks if "CREATE ROLE capacity_operator" in b]
    lines = [line for line in block.splitlines() if not line.startswith("CREATE ROLE")]
    text = "\n".join(lines).replace("DATABASE capacity ", f'DATABASE "{database}" ')
    return text.replace("capacity_operator", group)


@pytest.fixture
def alice(seeded_db: str, conn: Any) -> Iterator[str]:
    """A person's login, a member of the operators' group set up as deploy.md says."""
    with temporary_role(seeded_db, "capacity_operator") as group:
        conn.execute(operator_setup(group, conn.info.dbname).encode())
        with temporary_role(seeded_db, "alice", login=True, member_of=group) as name:
            yield name


def changes(conn: Any) -> list[dict[str, Any]]:
    return conn.execute("SELECT actor, db_role, kind, reason FROM capacity_changes ORDER BY id").fetchall()


def test_an_operator_runs_on_calls_commands_and_is_named_in_the_history(
    alice, booking_app, seeded_db, conn, tmp_path, monkeypatch, capsys
):
    status, _, created = invoke(booking_app, post_booking_event(booking_body(partySize=4), key="k1"))
    assert status == 201, created
    booking_id = created["booking"]["id"]
    on_database(monkeypatch, login_url(seeded_db, alice))

    # look
    assert run(capsys, "verify")[0] == 0
    code, out, _ = run(capsys, "slot", "show", RESTAURANT_ID, FUTURE_DATE, "19:00", "--with-contact")
    assert code == 0 and "Ada Lovelace / ada@example.com" in out
    assert run(capsys, "check-alerts", "--dry-run")[0] == 0
    # the dashboard: drawn from the roll-up as the schedule left it (an operator may not write it)
    code, out, err = run(capsys, "dashboard", "--out", str(tmp_path / "dashboard.html"))
    assert (code, out.startswith("wrote "), "may not run the roll-up" in err) == (0, True, True)
    assert "Test Trattoria" in (tmp_path / "dashboard.html").read_text()

    # change capacity: a seed and a close, under the name given
    seed = copy.deepcopy(BASE_SEED)
    seed["restaurants"][0]["overrides"].append(
        {"date": FUTURE_DATE, "start": "18:00", "end": "18:15", "maxCovers": 6, "reason": "short-staffed"}
    )
    seed["restaurants"][0]["bookingHorizonDays"] = 400
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))
    code, out, err = run(capsys, "seed", str(path), "--actor", "alice")
    assert (code, err) == (0, ""), out
    code, _, err = run(
        capsys, "slot", "close", RESTAURANT_ID, FUTURE_DATE, "20:00", "--reason", "burst pipe", "--actor", "alice"
    )
    assert (code, err) == (0, "")
    assert [tuple(c.values()) for c in changes(conn)[-3:]] == [
        ("alice", alice, "restaurant.update", "capctl seed seed.json"),
        ("alice", alice, "override.insert", "short-staffed"),
        ("alice", alice, "override.insert", "burst pipe"),
    ]

    # cancel a booking as the API would: status, freed covers, an event
    code, out, _ = run(capsys, "booking", "cancel", booking_id)
    assert code == 0 and out.startswith(f"cancelled {booking_id}")
    assert conn.execute("SELECT status FROM bookings").fetchone() == {"status": "cancelled"}
    assert conn.execute("SELECT booked_covers FROM slot_usage").fetchone() == {"booked_covers": 0}
    events = [r["event_type"] for r in conn.execute("SELECT event_type FROM observability_events ORDER BY id")]
    assert events == ["booking.success", "booking.cancelled"]

    # plain SQL as their own login: named as themselves, with no right on the history
    with psycopg.connect(login_url(seeded_db, alice), autocommit=True) as ops:
        ops.execute("UPDATE weekly_rules SET max_covers = 18 WHERE weekday = 6")
    assert changes(conn)[-1] == {"actor": alice, "db_role": alice, "kind": "weekly_rule.update", "reason": ""}


REFUSED = [
    (
        f"INSERT INTO capacity_changes (restaurant_id, actor, kind) VALUES ('{RESTAURANT_ID}', 'x', 'override.insert')",
        "SELECT count(*) FROM capacity_changes",
    ),
    ("UPDATE capacity_changes SET actor = 'x'", "SELECT count(*) FROM capacity_changes WHERE actor = 'x'"),
    ("DELETE FROM bookings", "SELECT count(*) FROM bookings"),
    ("UPDATE bookings SET party_size = 1", "SELECT party_size FROM bookings"),
    ("DELETE FROM observability_events", "SELECT count(*) FROM observability_events"),
    ("DELETE FROM slot_usage", "SELECT count(*) FROM slot_usage"),
    ("CREATE TABLE intruder (id int)", "SELECT count(*) FROM pg_class WHERE relname = 'intruder'"),
    (
        "DROP TRIGGER weekly_rules_history ON weekly_rules",
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%history'",
    ),
]


@pytest.mark.parametrize(("statement", "check"), REFUSED, ids=[s[:40] for s, _ in REFUSED])
def test_what_an_operator_must_not_do_is_refused(alice, booking_app, seeded_db, conn, statement, check):
    assert invoke(booking_app, post_booking_event(booking_body(partySize=4), key="k1"))[0] == 201
    before = conn.execute(check).fetchall()
    with (
        psycopg.connect(login_url(seeded_db, alice), autocommit=True) as ops,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        ops.execute(statement)
    assert conn.execute(check).fetchall() == before


def test_the_functions_login_cannot_do_on_calls_changes(booking_app, function_user, conn, monkeypatch, capsys):
    """deploy.md: connect as your own login, not with the functions' secret."""
    on_database(monkeypatch, function_user)
    count = len(changes(conn))
    for argv in (
        ("slot", "close", RESTAURANT_ID, FUTURE_DATE, "20:00", "--reason", "x"),
        ("slot", "show", RESTAURANT_ID, FUTURE_DATE, "19:00"),
    ):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (2, "") and err.startswith("capctl: error: database: permission denied for table")
    assert len(changes(conn)) == count
