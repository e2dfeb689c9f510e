"""Secret rotation reaches a warm instance: Secrets Manager faked by moto, a real PostgreSQL
whose password is changed. Before the fix the URL read at the first connect was kept for the life
of the instance, so every reconnect after a rotation failed (503) until a cold start."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from moto import mock_aws
from psycopg import sql

from capacity.db import SECRET_MAX_AGE_S, Database, DatabaseUnavailable
from capacity.settings import BookingSettings, DatabaseSettings
from capctl.handlers import load_handler
from tests.support import booking_body, invoke, post_booking_event

ROLE = "capacity_rotating"
REGION = "eu-west-1"


@pytest.fixture
def password_login(pg_server_url: str) -> Iterator[str]:
    """The role ROLE must log in with its password (the embedded server trusts everyone else)."""
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        hba = Path(admin.execute("SHOW hba_file").fetchone()[0])
        if not hba.is_file():
            pytest.skip("the test server's pg_hba.conf is not on this machine")
        original = hba.read_text()
        rules = f"host all {ROLE} all scram-sha-256\nlocal all {ROLE} scram-sha-256\n"
        hba.write_text(rules + original)
        admin.execute("SELECT pg_reload_conf()")
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'first-password'").format(sql.Identifier(ROLE)))
    try:
        yield ROLE
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            hba.write_text(original)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (ROLE,))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Vault:
    """The database secret in (moto's) Secrets Manager, rotated as the rotation Lambda would."""

    def __init__(self, server_url: str, dbname: str) -> None:
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        self.server_url = server_url
        self.fields = {
            "username": ROLE,
            "password": "first-password",
            "host": info.get("host", "localhost"),
            "port": int(info.get("port", 5432)),
            "dbname": dbname,
        }
        self.client = boto3.client("secretsmanager", region_name=REGION)
        self.arn = self.client.create_secret(
            Name=f"capacity/db-{secrets.token_hex(4)}", SecretString=json.dumps(self.fields)
        )["ARN"]

    def rotate(self, password: str, **changes: Any) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(password)))
        self.fields.update(password=password, **changes)
        self.client.put_secret_value(SecretId=self.arn, SecretString=json.dumps(self.fields))


@pytest.fixture
def vault(password_login: str, pg_server_url: str, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vault]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(ROLE)))
        owner.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(ROLE)))
    with mock_aws():
        yield Vault(pg_server_url, dbname)


def whoami(db: Database) -> tuple[str, str]:
    row = db.connection().execute("SELECT current_user AS u, current_database() AS d").fetchone()
    assert row is not None
    return row["u"], row["d"]


def test_a_rotated_password_is_read_again_when_the_login_is_refused(vault):
    db = Database(DatabaseSettings.from_env({"DATABASE_SECRET_ARN": vault.arn}), clock=Clock())
    assert whoami(db)[0] == ROLE
    vault.rotate("second-password")
    db.discard()  # the connection is lost (a proxy restart, an idle timeout): the next one reconnects
    assert whoami(db)[0] == ROLE
    # and the next rotation too
    vault.rotate("third-password")
    db.discard()
    assert whoami(db)[0] == ROLE


def test_the_secret_is_read_again_once_its_cache_is_stale(vault, pg_server_url):
    clock = Clock()
    db = Database(DatabaseSettings.from_env({"DATABASE_SECRET_ARN": vault.arn}), clock=clock)
    first_db = whoami(db)[1]
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier("rotation_target")))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("rotation_target")))
    try:
        # the secret now names another database (the password is unchanged, so no login fails)
        vault.rotate("first-password", dbname="rotation_target")
        clock.now += SECRET_MAX_AGE_S - 1
        db.discard()
        assert whoami(db)[1] == first_db  # within the cache's life: not read again
        clock.now += 1
        db.discard()
        assert whoami(db)[1] == "rotation_target"
        db.close()
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier("rotation_target")))


def test_a_live_connection_is_kept_whatever_the_cache_says(vault):
    clock = Clock()
    db = Database(DatabaseSettings.from_env({"DATABASE_SECRET_ARN": vault.arn}), clock=clock)
    conn = db.connection()
    clock.now += 10 * SECRET_MAX_AGE_S
    assert db.connection() is conn


def test_a_wrong_password_in_the_secret_is_still_unavailable_not_a_crash(vault):
    db = Database(DatabaseSettings.from_env({"DATABASE_SECRET_ARN": vault.arn}), clock=Clock())
    vault.fields["password"] = "not-the-password"
    vault.client.put_secret_value(SecretId=vault.arn, SecretString=json.dumps(vault.fields))
    with pytest.raises(DatabaseUnavailable) as info:
        db.connection()
    assert "not-the-password" not in str(info.value)


def test_a_fixed_database_url_is_never_re_resolved(db_url):
    clock = Clock()
    db = Database(DatabaseSettings.from_env({"DATABASE_URL": db_url}), clock=clock)
    conn = db.connection()
    db.discard()
    clock.now += 10 * SECRET_MAX_AGE_S
    assert db.url == db_url and db.connection() is not conn


def test_a_warm_booking_function_books_again_after_a_rotation(vault, seeded_db, handler_env, monkeypatch):
    handler_env(seeded_db)
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("DATABASE_SECRET_ARN", vault.arn)
    vault.fields["dbname"] = psycopg.conninfo.conninfo_to_dict(seeded_db)["dbname"]
    vault.client.put_secret_value(SecretId=vault.arn, SecretString=json.dumps(vault.fields))
    with psycopg.connect(seeded_db, autocommit=True) as owner:
        owner.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(ROLE)))
        owner.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(ROLE)))
    from capacity import settings

    settings.booking_settings.cache_clear()
    module = load_handler("create_booking", fresh=True)
    try:
        assert isinstance(module.settings, BookingSettings) and module.settings.database_url is None
        assert invoke(module, post_booking_event(booking_body(), key="before"))[0] == 201
        vault.rotate("rotated-password")
        module.service.db.discard()  # the warm instance's connection is gone
        status, _, body = invoke(module, post_booking_event(booking_body(time="19:15"), key="after"))
        assert status == 201, body
        with psycopg.connect(seeded_db) as check:
            assert check.execute("SELECT count(*) FROM bookings").fetchone()[0] == 2
    finally:
        module.service.db.close()
        settings.booking_settings.cache_clear()


def test_secrets_manager_failing_is_unavailable_at_first_and_keeps_the_old_url_later(monkeypatch):
    import capacity.db as db_module

    settings = DatabaseSettings.from_env({"DATABASE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:x"})
    clock = Clock()
    db = Database(settings, clock=clock)

    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise ConnectionError("endpoint unreachable")

    monkeypatch.setattr(db_module, "resolve_database_url", unreachable)
    with pytest.raises(DatabaseUnavailable, match=r"^cannot read the database secret \(ConnectionError\)$"):
        _ = db.url
    monkeypatch.setattr(db_module, "resolve_database_url", lambda *a, **k: "host=old-proxy dbname=capacity")
    assert db.url == "host=old-proxy dbname=capacity"
    clock.now += SECRET_MAX_AGE_S
    monkeypatch.setattr(db_module, "resolve_database_url", unreachable)
    assert db.url == "host=old-proxy dbname=capacity"  # stale, but the refresh failed: the old URL may still work
    monkeypatch.setattr(db_module, "resolve_database_url", lambda *a, **k: "host=new-proxy dbname=capacity")
    assert db.url == "host=new-proxy dbname=capacity"
