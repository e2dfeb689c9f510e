"""One PostgreSQL connection per Lambda instance: opened lazily, reused, re-opened when broken.

Connections run in autocommit: the booking path's write is one statement, so it is its own
transaction and holds the slot's row lock for that statement only. Multi-statement work opens
an explicit ``conn.transaction()``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from capacity.settings import DatabaseSettings

DictConnection = psycopg.Connection[dict[str, Any]]
T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database cannot be reached at all (connect failed or timed out)."""


# SQLSTATEs that a retry of the whole unit can cure.
_TRANSIENT = (
    errors.SerializationFailure,  # 40001
    errors.DeadlockDetected,  # 40P01
    errors.LockNotAvailable,  # 55P03 lock_timeout
    errors.QueryCanceled,  # 57014 statement_timeout
    errors.AdminShutdown,  # 57P01 connection terminated by the server
    errors.CannotConnectNow,  # 57P03 server starting up
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    # OperationalError without a SQLSTATE is a lost connection (the server went away mid-call).
    return isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None


# How long a URL built from the secret is trusted before a reconnect reads the secret again
# (docs/capacity/deploy.md: rotation reaches a running instance within this time).
SECRET_MAX_AGE_S = 300

# SQLSTATEs of a refused login (28P01 invalid_password, 28000 invalid_authorization_specification).
_AUTH_FAILED = frozenset({"28P01", "28000"})


def resolve_database_url(settings: DatabaseSettings, *, force: bool = False) -> str:
    """DATABASE_URL, or a connection string built from the DATABASE_SECRET_ARN secret (cached
    for SECRET_MAX_AGE_S; ``force`` reads it from Secrets Manager whatever the cache holds)."""
    if settings.database_url:
        return settings.database_url
    if settings.database_secret_arn:
        # Imported here: boto3 stays off the cold start of functions that are given a URL.
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(
            settings.database_secret_arn, transform="json", max_age=SECRET_MAX_AGE_S, force_fetch=force
        )
        assert isinstance(secret, dict)
        # A libpq keyword string quotes every value, so any character in a password is safe.
        return psycopg.conninfo.make_conninfo(
            host=secret["host"],
            port=str(secret.get("port", 5432)),
            dbname=secret.get("dbname", "postgres"),
            user=secret["username"],
            password=secret["password"],
        )
    raise DatabaseUnavailable("no DATABASE_URL or DATABASE_SECRET_ARN configured")


class Database:
    """The instance's connection. A URL built from the secret is read again on a reconnect once
    it is older than SECRET_MAX_AGE_S, and at once when the database refuses the login (the
    password was rotated): a rotation never leaves a warm instance failing until its cold start."""

    def __init__(
        self, settings: DatabaseSettings, url: str | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._url = url
        # A URL given here or in DATABASE_URL is fixed; one from the secret can be rotated.
        self._rotatable = url is None and not settings.database_url
        self._resolved_at = 0.0
        self._clock = clock
        self._conn: DictConnection | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._resolve(force=False)
        elif self._rotatable and self._clock() - self._resolved_at >= SECRET_MAX_AGE_S:
            self._resolve(force=True, keep_on_failure=True)
        assert self._url is not None
        return self._url

    def _resolve(self, *, force: bool, keep_on_failure: bool = False) -> None:
        try:
            url = resolve_database_url(self._settings, force=force)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            # Secrets Manager unreachable or the secret unreadable: an old URL may still work.
            if keep_on_failure and self._url is not None:
                return
            raise DatabaseUnavailable(f"cannot read the database secret ({type(exc).__name__})") from None
        self._url = url
        self._resolved_at = self._clock()

    def connection(self) -> DictConnection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        try:
            conn = self._connect(self.url)
        except psycopg.OperationalError as exc:
            if not (self._rotatable and _login_refused(exc)):
                raise DatabaseUnavailable(_first_line(exc)) from None
            # The password may have been rotated since the secret was read: read it again, once.
            self._resolve(force=True)
            try:
                conn = self._connect(self.url)
            except psycopg.OperationalError as again:
                raise DatabaseUnavailable(_first_line(again)) from None
        self._conn = conn
        return conn

    def _connect(self, url: str) -> DictConnection:
        s = self._settings
        options = session_options(s)
        return psycopg.connect(
            psycopg.conninfo.make_conninfo(url, options=options) if options else url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=s.connect_timeout_s,
            application_name="capacity-engine",
            prepare_threshold=s.prepare_threshold,
        )

    def discard(self) -> None:
        """Drop the connection after an error that may have left it unusable."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        self.discard()

    @contextmanager
    def run(self, what: str, log_error: Callable[..., Any]) -> Iterator[DictConnection]:
        """The connection for one scheduled run. If the run fails: one line ``<what> failed`` with
        the error's type and SQLSTATE only (``error_fields``), the connection dropped (the next
        invocation reconnects), and the error raised again for Lambda to record."""
        try:
            yield self.connection()
        except Exception as exc:
            self.discard()
            log_error(f"{what} failed", extra=error_fields(exc))
            raise


def session_options(settings: DatabaseSettings) -> str | None:
    """The session settings sent as the startup parameter ``options``; None with
    DB_SESSION_OPTIONS=off (behind RDS Proxy they pin: the login role's defaults apply then)."""
    if not settings.session_options:
        return None
    return (
        f"-c statement_timeout={settings.statement_timeout_ms} -c lock_timeout={settings.lock_timeout_ms}"
        " -c idle_in_transaction_session_timeout=10000 -c TimeZone=UTC"
    )


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: sleep uniform(0, min(cap, base * 2**attempt))."""

    base_ms: int
    cap_ms: int
    rand: Callable[[float, float], float] = random.uniform

    def delay_s(self, attempt: int) -> float:
        ceiling = min(self.cap_ms, self.base_ms * (2 ** max(attempt - 1, 0)))
        return self.rand(0, ceiling) / 1000.0


class RetriesExhausted(Exception):
    """Every attempt the policy allowed failed transiently; ``failures`` holds their SQLSTATEs."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__(f"{len(failures)} transient failures")
        self.failures = failures


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy of the functions' database work: a transient failure (see
    ``is_transient``) repeats the whole unit, after ``backoff`` (at once without one), until
    ``max_attempts`` or the time ``budget_s`` would be exceeded. The unit must be safe to repeat:
    the booking write is idempotent by its key, reads and the cancel are idempotent."""

    max_attempts: int
    backoff: Backoff | None = None
    budget_s: float | None = None
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    def run(
        self, db: Database, unit: Callable[[], T], failures: list[str] | None = None, *, since: float | None = None
    ) -> T:
        """``unit()`` under the policy. Each transient failure's SQLSTATE ("connection" for a lost
        connection) is appended to ``failures``; a connection an error may have broken is
        discarded. The time budget runs from ``since`` (a ``monotonic`` reading; default now), so
        repeated runs for one request share it. Raises ``RetriesExhausted``,
        ``DatabaseUnavailable`` or the first non-transient error."""
        failures = [] if failures is None else failures
        start = self.monotonic() if since is None else since
        deadline = None if self.budget_s is None else start + self.budget_s
        while True:
            try:
                return unit()
            except DatabaseUnavailable:
                db.discard()
                raise
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or not is_transient(exc):
                    db.discard()  # the connection may be gone, or in a state worth not reusing
                if not is_transient(exc):
                    raise
                failures.append(getattr(exc, "sqlstate", None) or "connection")
                delay = self.backoff.delay_s(len(failures)) if self.backoff else 0.0
                out_of_time = deadline is not None and self.monotonic() + delay >= deadline
                if len(failures) >= self.max_attempts or out_of_time:
                    raise RetriesExhausted(failures) from exc
                if delay:
                    self.sleep(delay)


def error_fields(exc: BaseException) -> dict[str, str | None]:
    """What a log line may say about a failure: its type and SQLSTATE, never its text (a
    database error's message can quote a row, guest data included)."""
    return {"errorType": type(exc).__name__, "sqlstate": getattr(exc, "sqlstate", None)}


def _login_refused(exc: psycopg.OperationalError) -> bool:
    # A failed connect carries no SQLSTATE in every libpq version: the server's message says it.
    if getattr(exc, "sqlstate", None) in _AUTH_FAILED:
        return True
    return "authentication failed" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
