"""One PostgreSQL connection per Lambda instance: opened lazily, reused, re-opened when broken.

Connections run in autocommit: the booking path's write is one statement, so it is its own
transaction and holds the slot's row lock for that statement only. Multi-statement work opens
an explicit ``conn.transaction()``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from capacity.settings import DatabaseSettings

DictConnection = psycopg.Connection[dict[str, Any]]


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


def resolve_database_url(settings: DatabaseSettings) -> str:
    if settings.database_url:
        return settings.database_url
    if settings.database_secret_arn:
        # Imported here: boto3 stays off the cold start of functions that are given a URL.
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(settings.database_secret_arn, transform="json", max_age=300)
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
    def __init__(self, settings: DatabaseSettings, url: str | None = None) -> None:
        self._settings = settings
        self._url = url
        self._conn: DictConnection | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = resolve_database_url(self._settings)
        return self._url

    def connection(self) -> DictConnection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        s = self._settings
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=s.connect_timeout_s,
                options=(
                    f"-c statement_timeout={s.statement_timeout_ms} -c lock_timeout={s.lock_timeout_ms}"
                    " -c idle_in_transaction_session_timeout=10000 -c TimeZone=UTC"
                ),
                application_name="capacity-engine",
                prepare_threshold=s.prepare_threshold,
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(_first_line(exc)) from None
        self._conn = conn
        return conn

    def discard(self) -> None:
        """Drop the connection after an error that may have left it unusable."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        self.discard()


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: sleep uniform(0, min(cap, base * 2**attempt))."""

    base_ms: int
    cap_ms: int
    rand: Callable[[float, float], float] = random.uniform

    def delay_s(self, attempt: int) -> float:
        ceiling = min(self.cap_ms, self.base_ms * (2 ** max(attempt - 1, 0)))
        return self.rand(0, ceiling) / 1000.0


def error_fields(exc: BaseException) -> dict[str, str | None]:
    """What a log line may say about a failure: its type and SQLSTATE, never its text (a
    database error's message can quote a row, guest data included)."""
    return {"errorType": type(exc).__name__, "sqlstate": getattr(exc, "sqlstate", None)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
