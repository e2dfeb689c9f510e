"""`capctl demo` never touches data it did not create: pointed at an existing database without its
confirmation it refuses (one line, exit 2) before starting anything, and the lowered alert
thresholds are refused on a database holding bookings of anyone but this run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from capctl import demo
from tests.support import FUTURE_DATE, RESTAURANT_ID

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def capctl(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAD_TEST_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "capctl.cli", "demo", "--report-dir", str(tmp_path / "reports"), *args],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def test_an_existing_database_without_the_confirmation_is_refused(db_url: str, conn: Any, tmp_path: Path) -> None:
    result = capctl("--database-url", db_url, tmp_path=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("capctl: error: --database-url points the demo at an existing database")
    assert "--i-know-this-is-not-production" in result.stderr
    assert result.stderr.count("\n") == 1
    # refused before anything: no seed, no report
    assert conn.execute("SELECT count(*) AS n FROM restaurants").fetchone()["n"] == 0
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--i-know-this-is-not-production"], "--i-know-this-is-not-production confirms --database-url"),
        (["--faults", "db-crash,disk-full"], "--faults: unknown fault 'disk-full'"),
    ],
)
def test_bad_demo_options_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = capctl(*args, tmp_path=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith(f"capctl: error: {message}")
    assert result.stderr.count("\n") == 1


def _insert_booking(conn: Any, run_id: str | None) -> None:
    conn.execute(
        """INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source,
                                 idempotency_key, tenant, run_id, guest_name)
           VALUES (%s, %s, %s, '19:00', 2, 'confirmed', %s, %s, 't', %s, 'Someone')""",
        (uuid.uuid4(), RESTAURANT_ID, FUTURE_DATE, "load-test" if run_id else "api", str(uuid.uuid4()), run_id),
    )


def test_bookings_of_anyone_but_this_run_are_foreign(seeded_db: str, conn: Any) -> None:
    assert demo.foreign_bookings(seeded_db, "lt-this-run") == 0
    _insert_booking(conn, "lt-this-run")
    assert demo.foreign_bookings(seeded_db, "lt-this-run") == 0

    _insert_booking(conn, "lt-another-run")
    assert demo.foreign_bookings(seeded_db, "lt-this-run") == 1
    _insert_booking(conn, None)  # a live booking
    assert demo.foreign_bookings(seeded_db, "lt-this-run") == 2


@pytest.mark.parametrize(
    ("argv", "faults"),
    [
        ([], ["db-crash", "instance-kill", "db-stall"]),
        (["--faults"], ["db-crash", "instance-kill", "db-stall"]),
        (["--faults", "db-stall"], ["db-stall"]),
        (["--faults", "none"], []),
    ],
)
def test_the_demo_injects_all_three_faults_unless_told_otherwise(argv: list[str], faults: list[str]) -> None:
    from capctl import cli

    args = cli.build_parser().parse_args(["demo", *argv])

    assert demo._options(args) == faults
