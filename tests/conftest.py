"""Shared fixtures. Anything touching the database uses a real PostgreSQL: the embedded server
by default (started once per session), or the server of TEST_DATABASE_URL / DATABASE_URL.
Each test gets a fresh database cloned from a migrated template, so tests never share rows."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from capctl.database import embedded_server
from capctl.handlers import load_handler
from capctl.migrate import migrate
from capctl.seed import SeedFile, apply_seed
from capctl.sns_inbox import SnsInbox
from capctl.webhook_sink import WebhookSink
from tests.alerting import REGION
from tests.roles import login_url, temporary_role
from tests.support import BASE_SEED

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DB = "capacity_test_template"


def pytest_report_header(config: pytest.Config) -> str:
    from tests.browser.conftest import chromium_path

    path = chromium_path()
    return (
        f"browser tests: {path}" if path else "browser tests: SKIPPED - no chromium on PATH (apt-get install chromium)"
    )


def _admin_url(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(autouse=True)
def _no_metrics_state_between_tests() -> Iterator[None]:
    """Powertools keeps metrics, dimensions and default dimensions on its Metrics class, shared by
    every function this process loads (on Lambda each function has a process of its own): a
    scheduled function's default ``environment`` dimension must not reach the next test's
    booking function."""
    yield
    from aws_lambda_powertools.metrics import Metrics

    metrics = Metrics(namespace="TestReset")
    metrics.clear_default_dimensions()
    metrics.clear_metrics()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="capacity-test-pg-") as tmp:
        server = embedded_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        yield server.get_uri()
        server.cleanup()


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> str:
    """A migrated database that every test database is cloned from."""
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    with psycopg.connect(_admin_url(pg_server_url, TEMPLATE_DB), autocommit=True, row_factory=dict_row) as conn:
        migrate(conn)
    return TEMPLATE_DB


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated, empty database for this test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
        )
    yield _admin_url(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def function_user(db_url: str) -> Iterator[str]:
    """The URL of a login that is a member of capacity_app and nothing else, as the functions'
    user (the one in DATABASE_SECRET_ARN) is; the role is dropped after the test."""
    with temporary_role(db_url, "capacity_fn", login=True, member_of="capacity_app") as name:
        yield login_url(db_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def seed(conn: psycopg.Connection[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        apply_seed(conn, SeedFile.model_validate(data))

    return apply


@pytest.fixture
def seeded_db(db_url: str, conn: psycopg.Connection[dict[str, Any]], seed: Callable[[dict[str, Any]], None]) -> str:
    """``db_url`` holding BASE_SEED's restaurant."""
    seed(BASE_SEED)
    return db_url


@pytest.fixture
def handler_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Point the functions at a database, as their Lambda environment would."""

    def apply(url: str, **extra: str) -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
        monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "CapacityEngineTest")
        monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "capacity-engine")
        monkeypatch.setenv("ENVIRONMENT", "test")
        for name, value in extra.items():
            monkeypatch.setenv(name, value)

    return apply


@pytest.fixture
def booking_app(seeded_db: str, handler_env: Callable[..., None]) -> Any:
    """The create_booking function, cold-started against the seeded test database."""
    handler_env(seeded_db)
    from capacity import settings

    settings.booking_settings.cache_clear()
    module = load_handler("create_booking", fresh=True)
    yield module
    module.service.db.close()
    settings.booking_settings.cache_clear()


# -- alert channels (test_alerts, test_alerts_cli, test_scheduled_events) ----------------------


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> Iterator[SnsInbox]:
    """An SNS topic faked by moto in-process; ``topic.messages()`` reads back what was published."""
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_SQS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield SnsInbox(region=REGION)


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    """A Slack-style receiver on 127.0.0.1 answering ``webhook.status``; ``webhook.messages()``
    are the bodies it accepted."""
    with WebhookSink() as sink:
        yield sink
