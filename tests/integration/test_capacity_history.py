"""On-call can trust an overbooking alert: capacity history, the two conditions (a guard failure
vs a capacity lowered below bookings), seed guard rails, and slot forensics — against the real
PostgreSQL, through the real booking handler and the real CLI."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capacity.alerts import AlertChecker
from capacity.notifiers import notifiers_from_settings
from capacity.scheduled_settings import AlertSettings
from tests.command_line import on_database, one_line_error, run
from tests.roles import login_url, temporary_role
from tests.support import (
    BASE_SEED,
    FUTURE_DATE,
    PRIVATE_EVENT_DATE,
    RESTAURANT_ID,
    booking_body,
    invoke,
    post_booking_event,
)

pytestmark = pytest.mark.integration

MIGRATION_009 = Path(__file__).resolve().parents[2] / "migrations" / "009_least_privilege.sql"

SLOT = f"{FUTURE_DATE} 19:00"


@pytest.fixture
def on_db(seeded_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return on_database(monkeypatch, seeded_db)


def seed_file(tmp_path: Path, override: dict[str, Any] | None = None) -> str:
    data = copy.deepcopy(BASE_SEED)
    if override is not None:
        data["restaurants"][0]["overrides"].append(override)
    path = tmp_path / f"seed-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(data))
    return str(path)


LOWER_19 = {"date": FUTURE_DATE, "start": "19:00", "end": "19:15", "maxCovers": 4, "reason": "kitchen refit"}


def book(app: Any, key: str, party: int, time: str = "19:00") -> dict[str, Any]:
    status, _, body = invoke(app, post_booking_event(booking_body(time=time, partySize=party), key=key))
    assert status == 201, body
    return body


def changes(conn: Any) -> list[dict[str, Any]]:
    return conn.execute("SELECT actor, kind, before, after, reason FROM capacity_changes ORDER BY id").fetchall()


def check_alerts(conn: Any) -> Any:
    config = AlertSettings.from_env({"ENVIRONMENT": "test", "RUNBOOK_URL": "https://runbooks.example/capacity"})
    return AlertChecker(config, notifiers_from_settings(config)).run(conn)


class TestCapacityHistory:
    def test_seed_records_each_change_with_its_actor_and_an_unchanged_file_records_nothing(
        self, on_db, conn, tmp_path, capsys
    ):
        ids_before = [r["id"] for r in conn.execute("SELECT id FROM capacity_overrides ORDER BY id")]
        seeded = len(changes(conn))
        # the same file again: nothing recorded, no row replaced
        code, out, _ = run(capsys, "seed", seed_file(tmp_path), "--actor", "alice")
        assert (code, out) == (0, "seeded 1 restaurant, 7 weekly rules, 3 overrides: no capacity change\n")
        assert len(changes(conn)) == seeded
        assert [r["id"] for r in conn.execute("SELECT id FROM capacity_overrides ORDER BY id")] == ids_before
        # one override more: one change, by alice, with the override's own reason
        code, out, _ = run(capsys, "seed", seed_file(tmp_path, LOWER_19), "--actor", "alice")
        assert code == 0 and out.endswith("1 capacity change recorded\n")
        [change] = changes(conn)[seeded:]
        assert (change["actor"], change["kind"], change["before"], change["reason"]) == (
            "alice",
            "override.insert",
            None,
            "kitchen refit",
        )
        assert (change["after"]["override_date"], change["after"]["max_covers"]) == (FUTURE_DATE, 4)
        assert [r["id"] for r in conn.execute("SELECT id FROM capacity_overrides ORDER BY id")][:3] == ids_before

    def test_a_change_in_the_file_updates_the_row_in_place(self, on_db, conn, tmp_path, capsys):
        run(capsys, "seed", seed_file(tmp_path, LOWER_19))
        [row] = conn.execute("SELECT id FROM capacity_overrides WHERE start_time = '19:00'").fetchall()
        run(capsys, "seed", seed_file(tmp_path, {**LOWER_19, "maxCovers": 6}), "--actor", "bob")
        assert conn.execute("SELECT id, max_covers FROM capacity_overrides WHERE start_time = '19:00'").fetchall() == [
            {"id": row["id"], "max_covers": 6}
        ]
        last = changes(conn)[-1]
        assert (last["actor"], last["kind"], last["before"]["max_covers"], last["after"]["max_covers"]) == (
            "bob",
            "override.update",
            4,
            6,
        )

    def test_an_operators_sql_is_recorded_as_their_database_role(self, seeded_db, conn):
        conn.execute("UPDATE weekly_rules SET max_covers = 12 WHERE weekday = 5")
        recorded = changes(conn)[-1]
        assert (recorded["actor"], recorded["kind"], recorded["before"]["max_covers"]) == (
            "postgres",
            "weekly_rule.update",
            20,
        )
        # a change of nothing that matters to capacity is not recorded
        count = len(changes(conn))
        conn.execute("UPDATE restaurants SET name = 'Renamed'")
        assert len(changes(conn)) == count

    def test_the_history_is_append_only(self, seeded_db, conn):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM capacity_changes")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE capacity_changes SET actor = 'nobody'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE capacity_changes")
        assert {c["actor"] for c in changes(conn)} != {"nobody"} and changes(conn)


class TestTwoConditions:
    def test_a_lowered_capacity_warns_and_names_the_change_never_critical(
        self, booking_app, on_db, conn, tmp_path, capsys
    ):
        ids = [book(booking_app, f"k{n}", 4)["booking"]["id"] for n in range(3)]  # 12 covers at 19:00
        # the guard rail: refused, one line per slot, nothing changed
        code, out, err = run(capsys, "seed", seed_file(tmp_path, LOWER_19), "--actor", "alice")
        assert code == 1 and out == ""
        assert (
            f"capctl: refused: restaurant {RESTAURANT_ID} {FUTURE_DATE} 19:00: 12 covers confirmed, new capacity 4"
            in err
        )
        assert (
            conn.execute("SELECT count(*) AS n FROM capacity_overrides WHERE start_time = '19:00'").fetchone()["n"] == 0
        )
        # told explicitly: applied and recorded, with a warning naming the slot
        code, out, _ = run(capsys, "seed", seed_file(tmp_path, LOWER_19), "--actor", "alice", "--allow-below-bookings")
        assert code == 0 and "warning:" in out and "12 covers confirmed, capacity now 4" in out

        code, out, _ = run(capsys, "verify", "--json")
        result = json.loads(out)
        assert code == 0 and result["passed"] is True and result["overCapacitySlots"] == []
        [below] = result["belowBookingsSlots"]
        assert (below["maxCovers"], below["acceptedMaxCovers"], below["confirmedCovers"]) == (4, 20, 12)
        assert below["bookingIds"] == ids
        assert (below["change"]["actor"], below["change"]["reason"]) == ("alice", "kitchen refit")
        assert below["command"] == f"capctl slot show {RESTAURANT_ID} {SLOT}"

        summary = check_alerts(conn)
        assert [(t.key.kind.value, t.action.value) for t in summary.transitions] == [
            ("capacity_below_bookings", "open")
        ]
        assert summary.overbook_detected == 0
        rows = conn.execute("SELECT kind, severity, status FROM alert_state").fetchall()
        assert rows == [{"kind": "capacity_below_bookings", "severity": "warning", "status": "open"}]
        assert (
            conn.execute(
                "SELECT count(*) AS n FROM observability_events WHERE event_type = 'booking.overbook_detected'"
            ).fetchone()["n"]
            == 0
        )

    def test_a_booking_planted_by_sql_over_capacity_is_critical(self, booking_app, on_db, conn, capsys):
        for n in range(5):
            book(booking_app, f"k{n}", 4)  # 20 of 20 through the guard
        conn.execute(
            "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source) "
            "VALUES (gen_random_uuid(), %s, %s, '19:00', 2, 'confirmed', 'api')",
            (RESTAURANT_ID, FUTURE_DATE),
        )
        code, out, _ = run(capsys, "verify")
        assert code == 1
        assert f"OVERBOOKED Test Trattoria ({RESTAURANT_ID}) {SLOT}: 22 covers confirmed, accepted under max 20" in out
        summary = check_alerts(conn)
        assert [(t.key.kind.value, t.action.value) for t in summary.transitions] == [("overbooking", "open")]
        assert summary.overbook_detected == 1

    def test_a_guarded_slot_overfilled_behind_the_ledgers_back_is_critical_even_after_a_raise(
        self, booking_app, on_db, conn, tmp_path, capsys
    ):
        book(booking_app, "k1", 10)
        book(booking_app, "k2", 10)
        # a bug writes a confirmed booking that the guard accepted under 20 (as if the guard had failed)
        conn.execute("UPDATE bookings SET party_size = 12 WHERE idempotency_key = 'k2'")
        # raising the capacity later does not excuse it: the bookings were accepted under 20
        run(capsys, "seed", seed_file(tmp_path, {**LOWER_19, "maxCovers": 30, "reason": "more tables"}))
        code, out, _ = run(capsys, "verify", "--json")
        [over] = json.loads(out)["overCapacitySlots"]
        assert code == 1 and (over["maxCovers"], over["acceptedMaxCovers"], over["confirmedCovers"]) == (30, 20, 22)

    def test_a_plain_sql_booking_within_capacity_does_not_turn_a_lowering_critical(
        self, booking_app, on_db, conn, tmp_path, capsys
    ):
        book(booking_app, "k1", 10)  # 10 covers through the guard, under 20
        conn.execute(
            "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source) "
            "VALUES (gen_random_uuid(), %s, %s, '19:00', 2, 'confirmed', 'api')",
            (RESTAURANT_ID, FUTURE_DATE),
        )  # 12 of 20: within capacity, the latest booking, not through the guard
        run(capsys, "seed", seed_file(tmp_path, {**LOWER_19, "maxCovers": 10}), "--allow-below-bookings")
        code, out, _ = run(capsys, "verify", "--json")
        result = json.loads(out)
        assert (code, result["overCapacitySlots"]) == (0, [])
        [below] = result["belowBookingsSlots"]
        assert (below["maxCovers"], below["acceptedMaxCovers"], below["confirmedCovers"]) == (10, 20, 12)
        summary = check_alerts(conn)
        assert [t.key.kind.value for t in summary.transitions] == ["capacity_below_bookings"]

    def test_the_change_named_is_the_one_that_lowered_the_capacity(self, booking_app, on_db, conn, tmp_path, capsys):
        book(booking_app, "k1", 12)
        run(capsys, "seed", seed_file(tmp_path, LOWER_19), "--actor", "alice", "--allow-below-bookings")
        later = copy.deepcopy(BASE_SEED)
        later["restaurants"][0]["overrides"].append(LOWER_19)
        later["restaurants"][0]["bookingHorizonDays"] = 400  # a later change of something else
        path = tmp_path / "later.json"
        path.write_text(json.dumps(later))
        run(capsys, "seed", str(path), "--actor", "dave")
        [below] = json.loads(run(capsys, "verify", "--json")[1])["belowBookingsSlots"]
        assert (below["change"]["actor"], below["change"]["kind"]) == ("alice", "override.insert")


class TestSlotForensics:
    def test_show_gives_rule_history_ledger_bookings_and_events(self, booking_app, on_db, conn, tmp_path, capsys):
        first = book(booking_app, "k1", 4)["booking"]["id"]
        second = book(booking_app, "k2", 2)["booking"]["id"]
        run(capsys, "seed", seed_file(tmp_path, {**LOWER_19, "maxCovers": 8}), "--actor", "carol")
        code, out, _ = run(capsys, "slot", "show", RESTAURANT_ID, FUTURE_DATE, "19:00", "--json")
        found = json.loads(out)
        assert code == 0
        assert found["rule"] == {
            "maxCovers": 8,
            "source": "override",
            "start": "19:00",
            "end": "19:15",
            "reason": "kitchen refit",
        }
        assert [(c["actor"], c["kind"]) for c in found["changes"]][-1] == ("carol", "override.insert")
        assert (found["ledgerCovers"], found["confirmedCovers"], found["condition"]) == (6, 6, "ok")
        assert [(b["id"], b["partySize"], b["status"], b["acceptedMaxCovers"]) for b in found["bookings"]] == [
            (first, 4, "confirmed", 20),
            (second, 2, "confirmed", 20),
        ]
        assert [e["type"] for e in found["events"]] == ["booking.success", "booking.success"]
        assert "Ada" not in out and "ada@example.com" not in out  # no contact unless asked

        code, out, _ = run(capsys, "slot", "show", RESTAURANT_ID, FUTURE_DATE, "19:00", "--with-contact")
        assert code == 0 and "Ada Lovelace / ada@example.com" in out
        assert "rule in force: 8 covers, from the override of this date, 19:00-19:15 (reason: kitchen refit)" in out
        assert "covers: 6 confirmed (recount from bookings), ledger 6" in out

    def test_show_flags_a_ledger_that_disagrees_with_the_recount(self, booking_app, on_db, conn, capsys):
        book(booking_app, "k1", 4)
        conn.execute("UPDATE slot_usage SET booked_covers = 3")
        code, out, _ = run(capsys, "slot", "show", RESTAURANT_ID, FUTURE_DATE, "19:00")
        assert code == 0 and "ledger 3  <- MISMATCH" in out

    def test_close_stops_new_bookings_and_is_recorded(self, booking_app, on_db, conn, capsys):
        code, out, _ = run(
            capsys, "slot", "close", RESTAURANT_ID, FUTURE_DATE, "19:00", "--until", "20:00",
            "--reason", "flooded kitchen", "--actor", "dave",
        )  # fmt: skip
        assert out.startswith(f"closed {RESTAURANT_ID} {FUTURE_DATE} 19:00-19:45 (4 slots): override of 0 covers each")
        assert code == 0
        last = changes(conn)[-1]
        assert (last["actor"], last["kind"], last["reason"], last["after"]["max_covers"]) == (
            "dave",
            "override.insert",
            "flooded kitchen",
            0,
        )
        for time in ("19:00", "19:45"):
            status, _, body = invoke(booking_app, post_booking_event(booking_body(time=time), key=f"closed-{time}"))
            assert (status, body["code"]) == (409, "slot_closed")
        assert book(booking_app, "open-20", 2, time="20:00")["booking"]["time"] == "20:00"

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["show", "not-a-uuid", FUTURE_DATE, "19:00"], "RESTAURANT_ID must be a UUID"),
            (["show", RESTAURANT_ID, "14/06/2030", "19:00"], "DATE must be a date as YYYY-MM-DD"),
            (["show", RESTAURANT_ID, FUTURE_DATE, "7pm"], "TIME must be a time as HH:MM"),
            (["show", "00000000-0000-4000-8000-000000000000", FUTURE_DATE, "19:00"], "no restaurant"),
            (["close", RESTAURANT_ID, FUTURE_DATE, "19:00", "--reason", " "], "--reason must say why"),
            (["close", RESTAURANT_ID, FUTURE_DATE, "19:00", "--reason", "x", "--until", "18:00"], "must be after"),
            (["close", RESTAURANT_ID, FUTURE_DATE, "19:07", "--reason", "x"], "TIME 19:07 is not on"),
            (["close", RESTAURANT_ID, FUTURE_DATE, "19:00", "--reason", "x", "--until", "19:10"], "--until 19:10"),
            (["close", RESTAURANT_ID, "2020-01-03", "19:00", "--reason", "x"], "has already begun"),
        ],
    )
    def test_bad_input_is_one_line(self, on_db, conn, capsys, argv, message):
        assert message in one_line_error(capsys, "slot", *argv)


class TestOperatorChangesHold:
    def test_a_range_close_beats_a_narrower_override_and_reaches_midnight(self, booking_app, on_db, conn, capsys):
        # PRIVATE_EVENT_DATE has an 18:00-20:00 override of 4: a close of the whole evening still closes it
        code, out, _ = run(
            capsys, "slot", "close", RESTAURANT_ID, PRIVATE_EVENT_DATE, "17:00", "--until", "00:00", "--reason", "fire"
        )
        assert code == 0 and "17:00-23:45 (28 slots)" in out
        for time in ("17:00", "18:30", "21:45"):
            event = post_booking_event(booking_body(date=PRIVATE_EVENT_DATE, time=time, partySize=1), key=f"k-{time}")
            assert invoke(booking_app, event)[2]["code"] == "slot_closed"

    def test_a_later_seed_leaves_an_operators_close_alone(self, booking_app, on_db, conn, tmp_path, capsys):
        run(capsys, "slot", "close", RESTAURANT_ID, FUTURE_DATE, "19:00", "--reason", "incident 7")
        code, out, _ = run(capsys, "seed", seed_file(tmp_path), "--actor", "deploy-bot")
        assert (code, out) == (0, "seeded 1 restaurant, 7 weekly rules, 3 overrides: no capacity change\n")
        status, _, body = invoke(booking_app, post_booking_event(booking_body(), key="after-deploy"))
        assert (status, body["code"]) == (409, "slot_closed")

    def test_a_removal_says_why_it_was_removed(self, on_db, conn, tmp_path, capsys):
        run(capsys, "seed", seed_file(tmp_path, LOWER_19), "--actor", "alice")
        run(capsys, "seed", seed_file(tmp_path), "--actor", "bob")
        last = changes(conn)[-1]
        assert (last["actor"], last["kind"], last["reason"]) == ("bob", "override.delete", "capctl seed seed-1.json")

    def test_raising_a_capacity_still_below_its_bookings_is_not_refused(
        self, booking_app, on_db, conn, tmp_path, capsys
    ):
        for n in range(3):
            book(booking_app, f"k{n}", 6)  # 18 covers
        run(capsys, "seed", seed_file(tmp_path, {**LOWER_19, "maxCovers": 10}), "--allow-below-bookings")
        code, _, err = run(capsys, "seed", seed_file(tmp_path, {**LOWER_19, "maxCovers": 14}))
        assert (code, err) == (0, "")

    def test_rules_cannot_be_truncated_past_the_history(self, seeded_db, conn):
        for table in ("weekly_rules", "capacity_overrides"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"TRUNCATE {table}")


class TestOperatorCancel:
    def test_an_operator_cancels_as_the_api_would(self, booking_app, on_db, conn, capsys):
        booking = book(booking_app, "k1", 4)["booking"]
        code, out, _ = run(capsys, "booking", "cancel", booking["id"])
        assert (code, out) == (0, f"cancelled {booking['id']}: 4 covers freed at {RESTAURANT_ID} {FUTURE_DATE} 19:00\n")
        assert conn.execute("SELECT status FROM bookings").fetchone() == {"status": "cancelled"}
        assert conn.execute("SELECT booked_covers FROM slot_usage").fetchone() == {"booked_covers": 0}
        events = conn.execute("SELECT event_type FROM observability_events ORDER BY id").fetchall()
        assert [e["event_type"] for e in events] == ["booking.success", "booking.cancelled"]
        code, out, _ = run(capsys, "booking", "cancel", booking["id"])
        assert code == 0 and out.endswith(
            f"was already cancelled ({RESTAURANT_ID} {FUTURE_DATE} 19:00): nothing changed\n"
        )
        assert conn.execute("SELECT booked_covers FROM slot_usage").fetchone() == {"booked_covers": 0}

    @pytest.mark.parametrize(
        ("booking_id", "message"),
        [("nope", "BOOKING_ID must be a UUID"), ("00000000-0000-4000-8000-000000000000", "no booking")],
    )
    def test_bad_ids_are_one_line(self, on_db, capsys, booking_id, message):
        assert message in one_line_error(capsys, "booking", "cancel", booking_id)


class TestPastSlots:
    def test_a_dinner_that_is_over_has_no_guests_to_move(self, on_db, conn, capsys):
        yesterday = (dt.date.today() - dt.timedelta(days=2)).isoformat()
        conn.execute(
            "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source, guarded,"
            " accepted_max_covers) VALUES (gen_random_uuid(), %s, %s, '19:00', 12, 'confirmed', 'api', true, 20)",
            (RESTAURANT_ID, yesterday),
        )
        conn.execute("UPDATE weekly_rules SET max_covers = 4")
        code, out, _ = run(capsys, "verify", "--json")
        result = json.loads(out)
        assert (code, result["overCapacitySlots"], result["belowBookingsSlots"]) == (0, [], [])


class TestHistoryCannotBeForged:
    """capacity_changes is written by its trigger function alone, as the function's owner
    (SECURITY DEFINER, migration 009): a role needs no right on the history to change a rule, and
    a role with no right on it cannot write a row that no change caused."""

    @pytest.fixture
    def operator(self, seeded_db: str, conn: Any) -> Iterator[str]:
        """An operator's role: may change the weekly rules and overrides, nothing on the history."""
        with temporary_role(seeded_db, "ops_alice") as name:
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON weekly_rules, capacity_overrides TO {name}")
            conn.execute(f"GRANT USAGE ON SEQUENCE capacity_overrides_id_seq TO {name}")
            yield name

    def test_an_operator_without_rights_on_the_history_changes_a_rule_and_it_is_recorded(self, operator, conn):
        may = "SELECT has_table_privilege(%s, 'capacity_changes', 'INSERT') AS may"
        assert conn.execute(may, (operator,)).fetchone()["may"] is False
        conn.execute(f"SET ROLE {operator}")
        conn.execute("UPDATE weekly_rules SET max_covers = 12 WHERE weekday = 5")
        conn.execute("RESET ROLE")
        last = changes(conn)[-1]
        assert (last["actor"], last["kind"], last["before"]["max_covers"], last["after"]["max_covers"]) == (
            f"{operator} via postgres",
            "weekly_rule.update",
            20,
            12,
        )
        # the application's own name for the actor still wins
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {operator}")
            conn.execute("SET LOCAL capacity.actor = 'deploy-bot'")
            conn.execute("DELETE FROM capacity_overrides WHERE reason = 'closed'")
        last = changes(conn)[-1]
        assert (last["actor"], last["kind"], last["reason"]) == (
            "deploy-bot",
            "override.delete",
            "removed; it said: closed",
        )
        # a name any session may give itself; beside it, the role that made the change, which it may not
        roles = conn.execute("SELECT db_role FROM capacity_changes ORDER BY id DESC LIMIT 2").fetchall()
        assert [r["db_role"] for r in roles] == [f"{operator} via postgres"] * 2

    def test_an_operator_logged_in_as_themselves_is_named_alone(self, seeded_db, conn):
        with temporary_role(seeded_db, "ops_carol", login=True) as name:
            conn.execute(f"GRANT SELECT, INSERT ON capacity_overrides TO {name}")
            conn.execute(f"GRANT USAGE ON SEQUENCE capacity_overrides_id_seq TO {name}")
            with psycopg.connect(login_url(seeded_db, name), autocommit=True) as ops:
                ops.execute(
                    "INSERT INTO capacity_overrides (restaurant_id, override_date, max_covers, reason)"
                    " VALUES (%s, %s, 0, 'burst pipe')",
                    (RESTAURANT_ID, FUTURE_DATE),
                )
            last = conn.execute("SELECT actor, db_role, kind, reason FROM capacity_changes ORDER BY id DESC").fetchone()
            assert tuple(last.values()) == (name, name, "override.insert", "burst pipe")

    def test_the_operator_cannot_write_the_history_directly(self, operator, conn):
        count = len(changes(conn))
        conn.execute(f"SET ROLE {operator}")
        try:
            for statement in (
                "INSERT INTO capacity_changes (restaurant_id, actor, kind)"
                f" VALUES ('{RESTAURANT_ID}', 'someone else', 'weekly_rule.update')",
                "SELECT nextval('capacity_changes_id_seq')",
                "UPDATE capacity_changes SET actor = 'someone else'",
                "DELETE FROM capacity_changes",
                "TRUNCATE capacity_changes",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        finally:
            conn.execute("RESET ROLE")
        assert len(changes(conn)) == count
        assert "someone else" not in {c["actor"] for c in changes(conn)}

    def test_a_table_of_the_callers_named_capacity_changes_does_not_receive_the_row(self, operator, conn):
        conn.execute(f"GRANT TEMPORARY ON DATABASE {conn.info.dbname} TO {operator}")
        count = len(changes(conn))
        conn.execute(f"SET ROLE {operator}")
        try:
            # a temporary table comes first on an unqualified name: the writer's path has none
            conn.execute(
                "CREATE TEMP TABLE capacity_changes (id bigserial, restaurant_id uuid, changed_at timestamptz"
                " DEFAULT now(), actor text, kind text, before jsonb, after jsonb, reason text)"
            )
            conn.execute("SET search_path = pg_temp, public")
            conn.execute("UPDATE weekly_rules SET max_covers = 12 WHERE weekday = 5")
            assert conn.execute("SELECT count(*)::int AS n FROM pg_temp.capacity_changes").fetchone()["n"] == 0
        finally:
            conn.execute("RESET ROLE")
            conn.execute("RESET search_path")
            conn.execute("DROP TABLE IF EXISTS pg_temp.capacity_changes")
        assert len(changes(conn)) == count + 1
        assert changes(conn)[-1]["actor"] == f"{operator} via postgres"

    def test_the_writer_refuses_a_table_that_holds_no_rules(self, seeded_db, conn):
        count = len(changes(conn))
        conn.execute("CREATE TABLE decoy (restaurant_id uuid, weekday int, max_covers int)")
        conn.execute(
            "CREATE TRIGGER decoy_history AFTER INSERT ON decoy"
            " FOR EACH ROW EXECUTE FUNCTION record_capacity_change('weekly_rule')"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="capacity rules only"):
            conn.execute("INSERT INTO decoy VALUES (%s, 5, 99)", (RESTAURANT_ID,))
        assert len(changes(conn)) == count

    def test_the_writer_is_the_historys_owner_with_a_fixed_search_path(self, conn):
        row = conn.execute(
            "SELECT p.prosecdef, p.proconfig, p.proowner = c.relowner AS owns_history, p.proacl::text[] AS acl"
            "  FROM pg_proc p, pg_class c"
            " WHERE p.oid = 'record_capacity_change()'::regprocedure AND c.oid = 'capacity_changes'::regclass"
        ).fetchone()
        assert row["prosecdef"] and row["owns_history"]
        assert row["proconfig"] == ["search_path=pg_catalog, pg_temp"]
        assert [entry.split("=")[0] for entry in row["acl"]] == [conn.info.user]  # no EXECUTE for anyone else

    def test_009_takes_back_every_right_to_write_the_history(self, seeded_db, conn):
        with temporary_role(seeded_db, "ops_bob") as bob, temporary_role(seeded_db, "ops_dan") as dan:
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON capacity_changes TO {bob}")
            conn.execute(f"GRANT INSERT (actor, kind, restaurant_id) ON capacity_changes TO {dan}")
            conn.execute("GRANT INSERT ON capacity_changes TO PUBLIC")
            conn.execute("GRANT USAGE ON SEQUENCE capacity_changes_id_seq TO PUBLIC")
            conn.execute(MIGRATION_009.read_text().encode())
            rights = conn.execute(
                "SELECT r.rolname,"
                "       has_table_privilege(r.oid, 'capacity_changes', 'SELECT') AS reads,"
                "       has_any_column_privilege(r.oid, 'capacity_changes', 'INSERT') AS inserts,"
                "       has_table_privilege(r.oid, 'capacity_changes', 'UPDATE, DELETE, TRUNCATE') AS rewrites,"
                "       has_sequence_privilege(r.oid, 'capacity_changes_id_seq', 'USAGE') AS numbers"
                "  FROM pg_roles r WHERE r.rolname IN (%s, %s, 'capacity_app') ORDER BY r.rolname = 'capacity_app', 1",
                (bob, dan),
            ).fetchall()
            assert [tuple(r.values())[1:] for r in rights] == [
                (True, False, False, False),  # bob keeps reading
                (False, False, False, False),
                (True, False, False, False),  # the alert check reads the history
            ]
