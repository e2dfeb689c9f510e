"""Database roles for the privilege tests: a login user that is a member of a group role (as the
functions' user is of capacity_app), or an operator's role, each with a name of its own and gone
after the test (roles are cluster-wide; the test's database is not)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql


@contextmanager
def temporary_role(db_url: str, prefix: str, *, login: bool = False, member_of: str | None = None) -> Iterator[str]:
    """A new role ``<prefix>_<hex>``; yields its name. Its objects and grants in the test's
    database are dropped with it."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    create = sql.SQL("CREATE ROLE {} {}").format(role, sql.SQL("LOGIN" if login else "NOLOGIN"))
    if member_of is not None:
        create = sql.SQL("{} IN ROLE {}").format(create, sql.Identifier(member_of))
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(create)
    try:
        yield name
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
            admin.execute(sql.SQL("DROP ROLE {}").format(role))


def login_url(db_url: str, name: str) -> str:
    """The test database's URL, logging in as ``name`` (the embedded server trusts local logins)."""
    return psycopg.conninfo.make_conninfo(db_url, user=name)
