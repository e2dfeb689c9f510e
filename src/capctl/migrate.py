"""Numbered SQL migrations (migrations/NNN_name.sql), each applied once, in order. One run applies
every pending migration in a single transaction (all or none) under an advisory lock, so
concurrent runs cannot interleave."""

from __future__ import annotations

import os
import re
from pathlib import Path

from capacity.db import DictConnection

_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_LOCK_ID = 7_347_201  # any constant shared by every migrate run


def migrations_dir() -> Path:
    configured = os.environ.get("CAPCTL_MIGRATIONS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "migrations"


def migration_files(directory: Path | None = None) -> list[tuple[int, Path]]:
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError("two migrations share a number")
    return found


def migrate(conn: DictConnection, directory: Path | None = None) -> list[str]:
    """Apply every migration not yet applied; returns the names applied now."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, path in migration_files(directory):
            if version in done:
                continue
            conn.execute(path.read_text().encode())  # trusted files from the repo: many statements
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, path.name))
            applied_now.append(path.name)
    return applied_now
