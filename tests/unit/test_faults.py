"""capctl.faults without a server: the restart command is read from the running server's own
postmaster.opts, the schedule spreads faults over the contention phase, kinds are validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from capctl import faults
from capctl.errors import UserError


def test_a_restart_uses_the_servers_own_binary_dir_and_options(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "postmaster.opts").write_text(
        f'/opt/pg/bin/postgres "-D" "{pgdata}" "-h" "" "-k" "/tmp/sock dir" "-p" "5433"\n'
    )
    (pgdata / "postmaster.pid").write_text(f"4242\n{pgdata}\n1764467000\n5433\n/tmp/sock dir\n\n1 2\nready\n")
    pg = faults.Postgres(pgdata)

    pg_ctl, options = pg._command()

    assert pg_ctl == Path("/opt/pg/bin/pg_ctl")
    assert options == ["-h", "", "-k", "/tmp/sock dir", "-p", "5433"]  # the data directory is given apart
    assert pg.pid() == 4242


def test_a_server_without_a_pid_file_has_no_processes(tmp_path: Path) -> None:
    assert faults.Postgres(tmp_path).pid() is None
    assert faults.Postgres(tmp_path).processes() == []


def test_fault_kinds_are_validated() -> None:
    assert faults.parse_kinds(" db-crash , db-stall") == ["db-crash", "db-stall"]
    with pytest.raises(UserError, match="unknown fault 'oom'"):
        faults.parse_kinds("oom")


def test_the_schedule_without_a_contention_phase_uses_the_middle_of_the_run() -> None:
    offsets = faults.schedule(["db-crash", "db-stall"], [("warm-up", 20.0), ("spread", 40.0)])

    assert all(12 <= o <= 36 for o in offsets)
    assert offsets[0] < offsets[1]
