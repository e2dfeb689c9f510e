"""One incident per capacity change, not one per slot: a lowering that puts a year of Fridays
below their bookings is one WARNING notice naming the change, updated as its slots are freed and
resolved once all are; an overbooking stays one CRITICAL incident per slot. Real PostgreSQL,
SNS faked by moto (read back through a subscribed SQS queue), a webhook receiver on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from capacity.alerts import AlertChecker
from capacity.notifiers import notifiers_from_settings
from capacity.scheduled_settings import AlertSettings
from capctl import cli
from tests.alerting import GUEST, LONDON, overbook
from tests.command_line import on_database, one_line_error, run
from tests.support import FUTURE, RESTAURANT_ID

pytestmark = pytest.mark.integration

MIGRATION_008 = Path(__file__).resolve().parents[2] / "migrations" / "008_incident_groups.sql"
# The seed's overrides (FUTURE + 1..3 days) give those dates capacities of their own: avoided.
SEEDED_OVERRIDES = {FUTURE + dt.timedelta(days=n) for n in (1, 2, 3)}


def weekdays(isoweekday: int, count: int, *, weeks_ahead: int = 1) -> list[dt.date]:
    """``count`` dates of this weekday from ``weeks_ahead`` weeks on (London), none overridden."""
    start = dt.datetime.now(LONDON).date() + dt.timedelta(weeks=weeks_ahead)
    start += dt.timedelta(days=(isoweekday - start.isoweekday()) % 7)
    dates = (start + dt.timedelta(weeks=n) for n in range(count + len(SEEDED_OVERRIDES)))
    return [d for d in dates if d not in SEEDED_OVERRIDES][:count]


def book(conn: Any, date: dt.date, *parties: int, time: str = "19:00") -> list[str]:
    """Confirmed bookings the guard accepted under the seed's 20 covers (as the booking path
    writes them: guarded, with the capacity it checked)."""
    ids = []
    for party in parties:
        booking_id = str(uuid.uuid4())
        conn.execute(
            """INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source,
                                     idempotency_key, tenant, guest_name, guest_email, guest_phone,
                                     guarded, accepted_max_covers)
               VALUES (%s, %s, %s, %s, %s, 'confirmed', 'web', %s, 'tenant-a', %s, %s, %s, true, 20)""",
            (booking_id, RESTAURANT_ID, date, time, party, f"k-{booking_id}", *GUEST.values()),
        )
        ids.append(booking_id)
    return ids


def lower(conn: Any, isoweekday: int, covers: int, *, actor: str = "ops_alice", reason: str = "kitchen refit") -> int:
    """An operator's change of one weekday's rule, recorded under their name; its change id."""
    with conn.transaction():
        conn.execute(
            "SELECT set_config('capacity.actor', %s, true), set_config('capacity.reason', %s, true)", (actor, reason)
        )
        conn.execute("UPDATE weekly_rules SET max_covers = %s WHERE weekday = %s", (covers, isoweekday))
    row = conn.execute("SELECT max(id) AS id FROM capacity_changes").fetchone()
    return int(row["id"])


def cancel(conn: Any, booking_ids: list[str]) -> None:
    conn.execute("UPDATE bookings SET status = 'cancelled' WHERE id = ANY(%s::uuid[])", (booking_ids,))


def check(conn: Any, topic: Any, webhook: Any | None = None, now: dt.datetime | None = None) -> Any:
    env = {
        "ENVIRONMENT": "test",
        "RUNBOOK_URL": "https://runbooks.example/capacity",
        "ALERT_TOPIC_ARN": topic.topic_arn,
    }
    if webhook is not None:
        env["ALERT_WEBHOOK_URL"] = webhook.url
    config = AlertSettings.from_env(env)
    clock = (lambda: now) if now else (lambda: dt.datetime.now(dt.UTC))
    return AlertChecker(config, notifiers_from_settings(config), now=clock).run(conn)


def incidents(conn: Any) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT kind, incident_key, change_id, slot_date, slot_time, status, severity,
                  jsonb_array_length(slots) AS slots, figures
             FROM alert_state ORDER BY id"""
    ).fetchall()


def actions(summary: Any) -> list[tuple[str, str, str]]:
    return [(t.action.value, t.key.kind.value, t.key.incident) for t in summary.transitions]


@pytest.fixture
def twelve_fridays(seeded_db: str, conn: Any) -> dict[str, Any]:
    """12 booked Fridays at 19:00 (12 covers each, 16 on the fourth), then the Friday rule
    lowered from 20 to 10 covers by ops_alice: every one of them below its bookings."""
    fridays = weekdays(5, 12)
    bookings = {d: book(conn, d, 4, 4, 4) + (book(conn, d, 4) if n == 3 else []) for n, d in enumerate(fridays)}
    change_id = lower(conn, 5, 10)
    return {"fridays": fridays, "bookings": bookings, "change_id": change_id}


class TestOneIncidentPerChange:
    def test_a_lowering_of_twelve_booked_fridays_is_one_incident_and_one_notice(
        self, twelve_fridays, conn, topic, webhook
    ):
        fridays, change_id = twelve_fridays["fridays"], twelve_fridays["change_id"]
        summary = check(conn, topic, webhook)
        assert actions(summary) == [("open", "capacity_below_bookings", f"change {change_id}")]
        assert (summary.opened, summary.overbook_detected, summary.sent) == (1, 0, 2)
        [row] = incidents(conn)
        assert (row["kind"], row["change_id"], row["slot_date"], row["status"], row["severity"], row["slots"]) == (
            "capacity_below_bookings",
            change_id,
            None,
            "open",
            "warning",
            12,
        )

        [message] = topic.messages()
        assert message["subject"] == (
            "[WARNING] Capacity lowered below bookings in 12 slots (Fridays 17:00-22:00) - Test Trattoria (test)"
        )
        assert message["attributes"]["alertType"] == "capacity_below_bookings"
        text = message["message"]
        changed_at = conn.execute("SELECT changed_at FROM capacity_changes WHERE id = %s", (change_id,)).fetchone()
        when = changed_at["changed_at"].astimezone(dt.UTC).strftime("%Y-%m-%d at %H:%M UTC")
        worst = fridays[3].isoformat()
        assert text.splitlines()[:9] == [
            "WARNING: Capacity lowered below bookings in 12 slots (Fridays 17:00-22:00)",
            "",
            f"Restaurant: Test Trattoria ({RESTAURANT_ID})",
            f"What happened: On {when} ops_alice lowered the weekly rule for Fridays 17:00-22:00 from 20 to "
            "10 covers (reason: kitchen refit). 12 booked slots now hold more confirmed covers than their capacity.",
            f"How bad: 12 slots from {fridays[0]} to {fridays[-1]}, 28 covers over capacity, in 37 bookings. "
            "Nothing is broken: each booking was accepted under the capacity of its time, and the lowered "
            "capacity already refuses new bookings of these slots.",
            "Most covers to move (dates and times in Europe/London, the restaurant's local time):",
            f"  {worst} 19:00: 16 covers in 4 bookings, capacity now 10 (6 over): "
            f"capctl slot show {RESTAURANT_ID} {worst} 19:00",
            f"  {fridays[0]} 19:00: 12 covers in 3 bookings, capacity now 10 (2 over): "
            f"capctl slot show {RESTAURANT_ID} {fridays[0]} 19:00",
            f"  {fridays[1]} 19:00: 12 covers in 3 bookings, capacity now 10 (2 over): "
            f"capctl slot show {RESTAURANT_ID} {fridays[1]} 19:00",
        ]
        listing = f"capctl verify --restaurant {RESTAURANT_ID} --change {change_id}"
        assert f"  and 7 more: {listing} lists them all" in text
        assert f"Next: {listing}" in text
        assert "Runbook: https://runbooks.example/capacity#capacity-below-bookings" in text
        for personal in GUEST.values():
            assert personal not in text
        # the webhook says the same words
        [payload] = webhook.messages()
        assert payload["text"] == f"{message['subject']}\n{text}"

        again = check(conn, topic, webhook)
        assert actions(again) == [("update", "capacity_below_bookings", f"change {change_id}")]
        assert (again.opened, again.reminders, again.sent) == (0, 0, 0)
        assert topic.messages() == [] and len(webhook.messages()) == 1
        assert len(incidents(conn)) == 1

    def test_a_freed_slot_leaves_the_incident_open_and_all_freed_resolve_it_once(self, twelve_fridays, conn, topic):
        fridays, bookings = twelve_fridays["fridays"], twelve_fridays["bookings"]
        check(conn, topic)
        topic.messages()

        cancel(conn, bookings[fridays[0]][:1])  # 8 covers of 10: within capacity
        freed = check(conn, topic)
        assert actions(freed) == [("update", "capacity_below_bookings", f"change {twelve_fridays['change_id']}")]
        assert topic.messages() == []
        [row] = incidents(conn)
        assert (row["status"], row["slots"], row["figures"]["slotCount"], row["figures"]["firstDate"]) == (
            "open",
            11,
            11,
            fridays[1].isoformat(),
        )

        cancel(conn, [ids[0] for d, ids in bookings.items() if d != fridays[0]] + bookings[fridays[3]][1:2])
        cleared = check(conn, topic)
        assert (cleared.resolved, cleared.opened, cleared.sent) == (1, 0, 1)
        [resolved] = topic.messages()
        assert resolved["subject"] == (
            "[RESOLVED] Capacity lowered below bookings (Fridays 17:00-22:00) - Test Trattoria (test)"
        )
        assert resolved["message"].startswith(
            "RESOLVED: Capacity lowered below bookings (Fridays 17:00-22:00) has cleared."
        )
        assert (
            "Now: every slot of it is back within its capacity (12 slots when it opened): guests moved or "
            "cancelled, the capacity restored, or the slot's time has passed. Nothing to do." in resolved["message"]
        )
        assert [r["status"] for r in incidents(conn)] == ["resolved"]
        assert check(conn, topic).transitions == [] and topic.messages() == []

    def test_two_changes_are_two_incidents(self, twelve_fridays, conn, topic):
        saturdays = weekdays(6, 2)
        for date in saturdays:
            book(conn, date, 6, 6)
        saturday_change = lower(conn, 6, 8, actor="ops_bob", reason="short-staffed")
        summary = check(conn, topic)
        assert sorted(actions(summary)) == [
            ("open", "capacity_below_bookings", f"change {twelve_fridays['change_id']}"),
            ("open", "capacity_below_bookings", f"change {saturday_change}"),
        ]
        subjects = sorted(m["subject"] for m in topic.messages())
        assert subjects == [
            "[WARNING] Capacity lowered below bookings in 12 slots (Fridays 17:00-22:00) - Test Trattoria (test)",
            "[WARNING] Capacity lowered below bookings in 2 slots (Saturdays 17:00-22:00) - Test Trattoria (test)",
        ]
        assert sorted((r["change_id"], r["slots"]) for r in incidents(conn)) == [
            (twelve_fridays["change_id"], 12),
            (saturday_change, 2),
        ]

    def test_a_partial_raise_still_below_stays_with_the_lowering_that_caused_it(self, twelve_fridays, conn, topic):
        check(conn, topic)
        topic.messages()
        lower(conn, 5, 14, actor="ops_carol", reason="two more tables")  # 12 fit now; the 16-cover Friday does not
        summary = check(conn, topic)
        assert actions(summary) == [("update", "capacity_below_bookings", f"change {twelve_fridays['change_id']}")]
        assert topic.messages() == []
        [row] = incidents(conn)
        assert (row["slots"], row["figures"]["change"]["actor"], row["figures"]["coversOver"]) == (1, "ops_alice", 2)

    def test_an_overbooking_is_still_one_incident_per_slot(self, twelve_fridays, conn, topic):
        thursdays = weekdays(4, 2)
        for date in thursdays:
            overbook(conn, date=date)  # plain SQL, around the guard: 24 covers of 20
        summary = check(conn, topic)
        assert sorted(actions(summary)) == [
            ("open", "capacity_below_bookings", f"change {twelve_fridays['change_id']}"),
            ("open", "overbooking", f"{thursdays[0]} 19:00"),
            ("open", "overbooking", f"{thursdays[1]} 19:00"),
        ]
        assert summary.overbook_detected == 2
        critical = [m for m in topic.messages() if m["attributes"]["severity"] == "critical"]
        assert sorted(m["subject"] for m in critical) == [
            f"[CRITICAL] Overbooked slot {d} 19:00 - Test Trattoria (test)" for d in thursdays
        ]
        rows = [r for r in incidents(conn) if r["kind"] == "overbooking"]
        assert sorted((r["slot_date"], r["slot_time"], r["change_id"]) for r in rows) == [
            (d, dt.time(19, 0), None) for d in thursdays
        ]

    def test_a_reminder_comes_a_day_later_with_the_slots_below_now(self, twelve_fridays, conn, topic):
        """A planning task, reminded daily (BELOW_BOOKINGS_REMINDER_HOURS, 24), not every hour."""
        fridays, bookings = twelve_fridays["fridays"], twelve_fridays["bookings"]
        start = dt.datetime.now(dt.UTC)
        check(conn, topic, now=start)
        topic.messages()
        cancel(conn, bookings[fridays[0]][:1])
        # past the other alerts' cooldown (60 minutes): figures refreshed, nobody notified
        summary = check(conn, topic, now=start + dt.timedelta(hours=2))
        assert (summary.reminders, summary.sent, topic.messages()) == (0, 0, [])
        assert check(conn, topic, now=start + dt.timedelta(hours=24, minutes=1)).reminders == 1
        [reminder] = topic.messages()
        assert reminder["subject"] == (
            # the rule it names is left out before the restaurant's name would be cut
            "[WARNING, still open] Capacity lowered below bookings in 11 slots - Test Trattoria (test)"
        )
        assert f"How bad: 11 slots from {fridays[1]} to {fridays[-1]}, 26 covers over" in reminder["message"]

    def test_slots_no_recorded_change_explains_are_one_incident_per_restaurant(self, seeded_db, conn, topic):
        """Rules set and changed before the capacity history existed: emulated by a history that
        holds nothing of this restaurant."""
        fridays, saturdays = weekdays(5, 2), weekdays(6, 2)
        for date in fridays + saturdays:
            book(conn, date, 6, 6)
        with conn.transaction():
            conn.execute("ALTER TABLE weekly_rules DISABLE TRIGGER weekly_rules_history")
            conn.execute("UPDATE weekly_rules SET max_covers = 8 WHERE weekday IN (5, 6)")
            conn.execute("ALTER TABLE weekly_rules ENABLE TRIGGER weekly_rules_history")
            conn.execute("ALTER TABLE capacity_changes DISABLE TRIGGER capacity_changes_append_only")
            conn.execute("DELETE FROM capacity_changes WHERE restaurant_id = %s", (RESTAURANT_ID,))
            conn.execute("ALTER TABLE capacity_changes ENABLE TRIGGER capacity_changes_append_only")
        summary = check(conn, topic)
        assert actions(summary) == [("open", "capacity_below_bookings", "no recorded change")]
        [row] = incidents(conn)
        assert (row["change_id"], row["slots"], row["figures"]["change"]) == (None, 4, None)
        [message] = topic.messages()
        assert message["subject"] == (
            "[WARNING] Capacity lowered below bookings in 4 slots (no recorded change) - Test Trattoria (test)"
        )
        assert (
            "What happened: No recorded change explains it (the rule changed before the capacity history "
            "existed). 4 booked slots now hold more confirmed covers than their capacity." in message["message"]
        )


class TestBeforeMigration008:
    def test_open_per_slot_warnings_are_closed_into_their_group_or_resolved(self, twelve_fridays, conn, topic):
        """Per-slot below-bookings incidents opened by the code before 008 (key = the slot's text,
        no slot columns): three still below close into the change's one incident without a notice
        each; one whose slot fits again resolves with its own notice, as it opened with one."""
        fridays, bookings = twelve_fridays["fridays"], twelve_fridays["bookings"]
        before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
        for date in fridays[:4]:
            conn.execute(
                """INSERT INTO alert_state (restaurant_id, kind, incident_key, severity, status, opened_at,
                                            last_seen_at, last_notified_at, figures)
                   VALUES (%s, 'capacity_below_bookings', %s, 'warning', 'open', %s, %s, %s, %s)""",
                (RESTAURANT_ID, f"{date} 19:00", before, before, before, json.dumps({"maxCovers": 10})),
            )
        conn.execute(MIGRATION_008.read_text())  # what `capctl db migrate` does to them (re-runnable)
        cancel(conn, bookings[fridays[0]][:1])  # the first one fits again

        summary = check(conn, topic)
        group = f"change {twelve_fridays['change_id']}"
        assert sorted(actions(summary)) == [
            ("open", "capacity_below_bookings", group),
            ("resolve", "capacity_below_bookings", f"{fridays[0]} 19:00"),
            *[("supersede", "capacity_below_bookings", f"{d} 19:00") for d in fridays[1:4]],
        ]
        rows = incidents(conn)
        assert [(r["incident_key"], r["status"], r["slot_date"]) for r in rows[:4]] == [
            (f"{d} 19:00", "resolved", d) for d in fridays[:4]
        ]
        assert [r["figures"].get("supersededBy") for r in rows[:4]] == [None, group, group, group]
        assert (rows[4]["incident_key"], rows[4]["status"], rows[4]["slots"]) == (group, "open", 11)

        messages = sorted(topic.messages(), key=lambda m: m["subject"])
        assert [m["subject"] for m in messages] == [
            f"[RESOLVED] Capacity lowered below bookings {fridays[0]} 19:00 - Test Trattoria (test)",
            "[WARNING] Capacity lowered below bookings in 11 slots (Fridays 17:00-22:00) - Test Trattoria (test)",
        ]
        assert (
            "This replaces 3 earlier per-slot warnings of these slots, closed without a notice."
            in messages[1]["message"]
        )
        assert [(t.action.value, t.key.incident) for t in check(conn, topic).transitions] == [("update", group)]
        assert topic.messages() == []


def test_check_alerts_json_names_the_change_and_its_slots(seeded_db, twelve_fridays, conn, topic, monkeypatch, capsys):
    on_database(monkeypatch, seeded_db, "ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_SECRET_ARN", "ALERTS_INCLUDE_LOAD_TEST")
    monkeypatch.setenv("ALERT_TOPIC_ARN", topic.topic_arn)
    capsys.readouterr()
    assert cli.main(["check-alerts", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    [transition] = summary["transitions"]
    assert {k: transition[k] for k in ("action", "alert", "incident", "severity", "restaurantId")} == {
        "action": "open",
        "alert": "capacity_below_bookings",
        "incident": f"change {twelve_fridays['change_id']}",
        "severity": "warning",
        "restaurantId": RESTAURANT_ID,
    }
    figures = transition["figures"]
    assert (figures["slotCount"], figures["coversOver"], figures["command"], len(figures["slots"])) == (
        12,
        28,
        f"capctl verify --restaurant {RESTAURANT_ID} --change {twelve_fridays['change_id']}",
        5,
    )
    assert figures["change"]["actor"] == "ops_alice"
    assert [(d["channel"], d["notice"], d["incident"], d["status"]) for d in summary["deliveries"]] == [
        ("sns", "opened", f"change {twelve_fridays['change_id']}", "sent")
    ]


def test_the_command_a_notice_names_lists_exactly_its_slots(seeded_db, twelve_fridays, conn, monkeypatch, capsys):
    """`capctl verify --restaurant R --change N`, the grouped notice's command: the change's slots
    below bookings, all twelve (the notice names five); no others, none for another change."""
    on_database(monkeypatch, seeded_db)
    change_id = twelve_fridays["change_id"]
    listed = verified(capsys, "--restaurant", RESTAURANT_ID, "--change", str(change_id))
    assert sorted(s["date"] for s in listed["belowBookingsSlots"]) == [d.isoformat() for d in twelve_fridays["fridays"]]
    assert {s["change"]["id"] for s in listed["belowBookingsSlots"]} == {change_id}
    assert verified(capsys, "--restaurant", RESTAURANT_ID, "--change", "none")["belowBookingsSlots"] == []
    assert verified(capsys, "--restaurant", RESTAURANT_ID, "--change", str(change_id + 1))["belowBookingsSlots"] == []
    unknown = str(uuid.uuid4())  # a mistyped id is said so, never "0 slots, all fine"
    assert one_line_error(capsys, "verify", "--restaurant", unknown) == (
        f"capctl: error: no restaurant {unknown} in the database\n"
    )
    assert len(verified(capsys)["belowBookingsSlots"]) == 12


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--restaurant", "trattoria"], "not a restaurant id (a UUID): 'trattoria'"),
        (["--change", "latest"], "not a change id (a number, or none): 'latest'"),
    ],
)
def test_verify_refuses_a_bad_restaurant_or_change_with_its_usage(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.splitlines()[-1].endswith(says) and err.startswith("usage: capctl verify")


def verified(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "verify", "--json", *argv)
    assert (code, err) == (0, "")
    result: dict[str, Any] = json.loads(out)
    return result


def test_a_recorded_change_that_still_fits_the_covers_is_not_named_as_the_cause(seeded_db, conn, topic):
    """The seed's own history ("new weekly rule … max covers 20") stays; the lowering to 8 is made
    unrecorded. 12 covers fit under 20, so that rule's creation explains nothing: the incident is
    'no recorded change', not a notice blaming whoever seeded the restaurant."""
    fridays = weekdays(5, 2)
    for date in fridays:
        book(conn, date, 6, 6)
    with conn.transaction():
        conn.execute("ALTER TABLE weekly_rules DISABLE TRIGGER weekly_rules_history")
        conn.execute("UPDATE weekly_rules SET max_covers = 8 WHERE weekday = 5")
        conn.execute("ALTER TABLE weekly_rules ENABLE TRIGGER weekly_rules_history")
    created = conn.execute(
        "SELECT count(*) AS n FROM capacity_changes WHERE restaurant_id = %s AND kind = 'weekly_rule.insert'",
        (RESTAURANT_ID,),
    ).fetchone()
    assert created["n"] > 0  # the seed's creation of the rules is in the history
    summary = check(conn, topic)
    assert actions(summary) == [("open", "capacity_below_bookings", "no recorded change")]
    [row] = incidents(conn)
    assert (row["change_id"], row["slots"], row["figures"]["change"]) == (None, 2, None)


def test_check_alerts_text_says_how_many_slots_a_change_holds(seeded_db, twelve_fridays, monkeypatch, capsys):
    on_database(monkeypatch, seeded_db, "ALERT_TOPIC_ARN", "ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_SECRET_ARN")
    code, out, _ = run(capsys, "check-alerts", "--dry-run")
    assert code == 0
    line = (
        f"  open     capacity_below_bookings change {twelve_fridays['change_id']} (12 slots) restaurant {RESTAURANT_ID}"
    )
    assert line in out.splitlines()
