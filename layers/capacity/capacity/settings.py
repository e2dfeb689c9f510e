"""Typed settings, read from the environment and validated once, at cold start.

A setting that is present but invalid raises ``SettingsError`` with a one-line message naming
the variable, so a misconfigured function fails at init rather than on some later request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from capacity.outcomes import DEFAULT_PROBLEM_TYPE_BASE

# The scheduled functions' settings live in capacity.scheduled_settings: the booking function's
# cold start builds only its own.
__all__ = [
    "BookingSettings",
    "DatabaseSettings",
    "SettingsError",
    "booking_settings",
    "problem_type_base",
]


class SettingsError(RuntimeError):
    pass


_HTTP_URL = re.compile(r"https?://\S+")


def _absolute_base(value: str) -> str:
    if not _HTTP_URL.fullmatch(value):
        raise ValueError("must be an absolute http(s):// URL, to which each problem code is appended")
    return value


def problem_type_base(env: Mapping[str, str] | None = None) -> str:
    """PROBLEM_TYPE_BASE (empty counts as unset), checked as ``BookingSettings`` checks it at cold
    start. Read when a problem is written rather than cached: the handler, the booking service
    and ``capctl serve``'s gateway all name the documentation the environment names now."""
    value = (os.environ if env is None else env).get("PROBLEM_TYPE_BASE") or DEFAULT_PROBLEM_TYPE_BASE
    try:
        return _absolute_base(value)
    except ValueError as exc:
        raise SettingsError(f"invalid setting PROBLEM_TYPE_BASE: {exc}") from None


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """Every field's alias is its environment variable; empty counts as unset."""
        source = os.environ if env is None else env
        names = [f.alias for f in cls.model_fields.values() if f.alias]
        values = {name: source[name] for name in names if source.get(name, "") != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            var = str(first["loc"][0]) if first["loc"] else cls.__name__
            # The value is not echoed: it may hold a password (DATABASE_URL, webhook URLs).
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise SettingsError(f"invalid setting {var}: {msg}") from None


class DatabaseSettings(_Settings):
    environment: str = Field(default="dev", pattern=r"^[A-Za-z0-9_-]{1,32}$", alias="ENVIRONMENT")
    service_name: str = Field(default="capacity-engine", alias="POWERTOOLS_SERVICE_NAME")
    metrics_namespace: str = Field(default="CapacityEngine", alias="POWERTOOLS_METRICS_NAMESPACE")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    database_secret_arn: str | None = Field(default=None, alias="DATABASE_SECRET_ARN")
    connect_timeout_s: int = Field(default=3, ge=1, le=30, alias="DB_CONNECT_TIMEOUT_SECONDS")
    statement_timeout_ms: int = Field(default=3000, ge=100, le=60000, alias="DB_STATEMENT_TIMEOUT_MS")
    lock_timeout_ms: int = Field(default=2000, ge=10, le=60000, alias="DB_LOCK_TIMEOUT_MS")
    # psycopg prepares a statement server-side after this many runs on a connection; "off" never
    # does, which keeps connections through RDS Proxy from being pinned to their backend.
    prepare_threshold: int | None = Field(default=5, ge=0, le=1000, alias="DB_PREPARE_THRESHOLD")
    # "off": the connection sends no session settings (statement/lock/idle timeouts, TimeZone) as
    # startup options, which RDS Proxy would pin; the login role's own defaults give them instead
    # (ALTER ROLE ... SET, docs/capacity/deploy.md).
    session_options: bool = Field(default=True, alias="DB_SESSION_OPTIONS")

    @field_validator("session_options", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        if isinstance(value, str):
            word = value.strip().lower()
            if word not in ("on", "off"):
                raise ValueError("must be on or off")
            return word == "on"
        return value

    @field_validator("prepare_threshold", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() == "off" else value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith(("postgresql://", "postgres://")) or "=" in value):
            raise ValueError("must be a postgresql:// URL or a libpq connection string")
        return value


class BookingSettings(DatabaseSettings):
    max_attempts: int = Field(default=4, ge=1, le=10, alias="BOOKING_MAX_ATTEMPTS")
    backoff_base_ms: int = Field(default=20, ge=1, le=5000, alias="BOOKING_BACKOFF_BASE_MS")
    backoff_cap_ms: int = Field(default=400, ge=1, le=10000, alias="BOOKING_BACKOFF_CAP_MS")
    # The whole request, retries included, must end well inside the Lambda timeout.
    request_budget_ms: int = Field(default=8000, ge=100, le=60000, alias="BOOKING_REQUEST_BUDGET_MS")
    idempotency_ttl_hours: int = Field(default=24, ge=24, le=24 * 30, alias="IDEMPOTENCY_TTL_HOURS")
    retry_after_s: int = Field(default=1, ge=1, le=120, alias="RETRY_AFTER_SECONDS")
    # A problem's ``type`` is this base followed by its code: each code is a section of the
    # published docs/problems.md. Validated here at cold start; ``problem_type_base`` is how
    # every producer of a problem reads it.
    problem_type_base: str = Field(default=DEFAULT_PROBLEM_TYPE_BASE, alias="PROBLEM_TYPE_BASE")

    @field_validator("problem_type_base")
    @classmethod
    def _absolute_base(cls, value: str) -> str:
        return _absolute_base(value)


@lru_cache(maxsize=1)
def booking_settings() -> BookingSettings:
    return BookingSettings.from_env()
