"""DB_SESSION_OPTIONS: the session settings come either from the connection's startup options
(default) or, behind RDS Proxy (where startup options pin), from the login role's own defaults."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from capacity.db import Database, session_options
from capacity.settings import DatabaseSettings, SettingsError

SHOWN = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "TimeZone")
# The login role's session defaults, as deploy.md tells an operator to set them.
ROLE_DEFAULTS = {
    "statement_timeout": "3s",
    "lock_timeout": "2s",
    "idle_in_transaction_session_timeout": "10s",
    "TimeZone": "UTC",
}


def shown(db: Database) -> dict[str, str]:
    conn = db.connection()
    values = {}
    for name in SHOWN:
        row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
        assert row is not None
        values[name] = next(iter(row.values()))
    return values


def test_by_default_the_connection_sets_its_session(db_url):
    db = Database(DatabaseSettings.from_env({"DATABASE_URL": db_url, "DB_STATEMENT_TIMEOUT_MS": "2500"}))
    try:
        assert shown(db) == {
            "statement_timeout": "2500ms",
            "lock_timeout": "2s",
            "idle_in_transaction_session_timeout": "10s",
            "TimeZone": "UTC",
        }
    finally:
        db.close()


@pytest.fixture
def login_role(db_url: str) -> Any:
    """A login role with ROLE_DEFAULTS."""
    name = f"capacity_fn_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE capacity_app").format(role))
        for setting, value in ROLE_DEFAULTS.items():
            admin.execute(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(role, sql.Identifier(setting), sql.Literal(value))
            )
    yield psycopg.conninfo.make_conninfo(db_url, user=name)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


def test_off_sends_no_startup_options_and_the_role_defaults_apply(login_role):
    settings = DatabaseSettings.from_env({"DATABASE_URL": login_role, "DB_SESSION_OPTIONS": "off"})
    assert session_options(settings) is None
    db = Database(settings)
    try:
        assert shown(db) == ROLE_DEFAULTS
        # nothing of ours was sent: a statement timeout set here would have shown 9999ms
        off = DatabaseSettings.from_env(
            {"DATABASE_URL": login_role, "DB_SESSION_OPTIONS": "off", "DB_STATEMENT_TIMEOUT_MS": "9999"}
        )
        other = Database(off)
        assert shown(other)["statement_timeout"] == "3s"
        other.close()
    finally:
        db.close()


@pytest.mark.parametrize(("raw", "on"), [("on", True), (" OFF ", False), ("off", False)])
def test_the_setting_is_on_or_off(raw, on):
    assert DatabaseSettings.from_env({"DB_SESSION_OPTIONS": raw}).session_options is on
    assert DatabaseSettings.from_env({}).session_options is True


def test_anything_else_stops_the_function():
    with pytest.raises(SettingsError, match=r"^invalid setting DB_SESSION_OPTIONS: must be on or off$"):
        DatabaseSettings.from_env({"DB_SESSION_OPTIONS": "maybe"})
