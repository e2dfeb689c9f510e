"""PgBouncer in transaction-pooling mode in front of the test PostgreSQL: the stand-in for RDS
Proxy. Load it from a test module with ``pytest_plugins = ("tests.pooler",)``.

A transaction pooler hands a server connection to a client for one transaction only, so it
breaks whatever relies on session state, as RDS Proxy pins (or, here, breaks) it:
server-side prepared statements (PgBouncer 1.18 does not carry them: the functions run with
``DB_PREPARE_THRESHOLD=off``, as deployed behind RDS Proxy), session ``SET``s, session advisory
locks, temporary tables. The startup parameter ``options`` (the functions' timeouts) is
accepted and ignored (``ignore_startup_parameters``), which is what a pooler that multiplexes
can do with it: those timeouts do not reach the server through the pool.

``default_pool_size`` is below the number of concurrent instances the tests start, so
transactions of different instances really share server connections.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capctl.handlers import load_handler

POOL_SIZE = 4  # server connections per database and user: fewer than the test's instances


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgBouncer:
    """One pgbouncer process in front of ``server_url``'s server; ``url(db_url)`` is the same
    database reached through the pool. ``stop()`` and ``start()`` model a proxy outage."""

    def __init__(self, server_url: str, workdir: Path) -> None:
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        self.user = str(info.get("user") or "postgres")
        password = str(info.get("password") or "")
        host = str(info.get("host") or "/var/run/postgresql")
        port = str(info.get("port") or 5432)
        self.port = _free_port()
        self.pool_size = POOL_SIZE
        self.dir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        # pgbouncer will not run as root: it switches to the owner of the server's socket directory
        self.run_as: str | None = None
        if os.geteuid() == 0:
            owner = Path(host).stat().st_uid if host.startswith("/") else 65534
            self.run_as = pwd.getpwuid(owner).pw_name
            os.chown(self.dir, owner, -1)
        (self.dir / "userlist.txt").write_text(f'"{self.user}" "{password}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={host} port={port}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.dir / 'userlist.txt'}",
                    "pool_mode = transaction",
                    f"default_pool_size = {POOL_SIZE}",
                    "max_client_conn = 400",
                    "ignore_startup_parameters = extra_float_digits,options",
                    "server_reset_query =",
                    f"logfile = {self.dir / 'pgbouncer.log'}",
                    f"pidfile = {self.dir / 'pgbouncer.pid'}",
                    f"admin_users = {self.user}",
                    "",
                ]
            )
        )
        for name in ("userlist.txt", "pgbouncer.ini"):
            (self.dir / name).chmod(0o644)
        self.dir.chmod(0o755)

    def url(self, db_url: str) -> str:
        dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        return psycopg.conninfo.make_conninfo(host="127.0.0.1", port=str(self.port), dbname=str(dbname), user=self.user)

    def start(self) -> None:
        binary = pgbouncer_binary()
        assert binary, "pgbouncer is not installed"
        cmd = [binary, *(["-u", self.run_as] if self.run_as else []), str(self.dir / "pgbouncer.ini")]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(self.url("dbname=pgbouncer"), autocommit=True, connect_timeout=2) as admin:
                    admin.execute("SHOW VERSION")
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def show(self, what: str) -> list[dict[str, Any]]:
        """The admin console's ``SHOW <what>`` (pools, servers, clients, ...)."""
        with psycopg.connect(self.url("dbname=pgbouncer"), autocommit=True, row_factory=psycopg.rows.dict_row) as admin:
            return admin.execute(f"SHOW {what}").fetchall()  # type: ignore[arg-type]

    def log_tail(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"


@contextmanager
def running_pooler(server_url: str) -> Iterator[PgBouncer]:
    """A pgbouncer (transaction pooling) in front of ``server_url`` while the block runs."""
    if not pgbouncer_binary():
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    with tempfile.TemporaryDirectory(prefix="capacity-pgbouncer-") as tmp:
        bouncer = PgBouncer(server_url, Path(tmp))
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.stop()


@pytest.fixture(scope="session")
def pooler(pg_server_url: str) -> Iterator[PgBouncer]:
    """A pgbouncer in front of the test server, for the whole session."""
    with running_pooler(pg_server_url) as bouncer:
        yield bouncer


@pytest.fixture
def own_pooler(pg_server_url: str) -> Iterator[PgBouncer]:
    """A pgbouncer of this test alone, which the test may stop and start (a proxy outage)."""
    with running_pooler(pg_server_url) as bouncer:
        yield bouncer


POOLED_ENV = {
    # behind a transaction pooler (and RDS Proxy) nothing is prepared server-side
    "DB_PREPARE_THRESHOLD": "off",
    "DB_SESSION_OPTIONS": "off",  # as behind RDS Proxy (once capacity.settings has it; ignored before)
    "BOOKING_BACKOFF_BASE_MS": "1",
    "BOOKING_BACKOFF_CAP_MS": "5",
}


@pytest.fixture
def pooled_app_for(handler_env: Callable[..., None]) -> Iterator[Callable[[str], Any]]:
    """``pooled_app_for(url)``: create_booking cold-started against ``url`` (a pooled URL)."""
    from capacity import settings

    loaded: list[Any] = []

    def load(url: str) -> Any:
        handler_env(url, **POOLED_ENV)
        settings.booking_settings.cache_clear()
        module = load_handler("create_booking", fresh=True, instance=f"pooled{len(loaded)}")
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.service.db.close()
    settings.booking_settings.cache_clear()


@pytest.fixture
def pooled_app(seeded_db: str, pooler: PgBouncer, pooled_app_for: Callable[[str], Any]) -> Any:
    """create_booking against the seeded test database through the session's pgbouncer."""
    return pooled_app_for(pooler.url(seeded_db))
