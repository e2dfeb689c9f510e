"""A malformed or unreachable DATABASE_URL never puts its password on the CLI's error line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from capctl.database import redact

PASSWORD = "hunter2-Secret"
CLI = [sys.executable, "-c", "import sys; from capctl.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@[bad",  # libpq quotes the whole URI
        f"postgresql://app:{PASSWORD}@127.0.0.1:1/db?sslmode=bogus",
        f"postgresql://app:pre@{PASSWORD}@127.0.0.1:1/db",  # the tail of the password parsed as the host
        f"host=127.0.0.1 port=1 password={PASSWORD} bogus=1",
        f"host=127.0.0.1 port=notaport password='{PASSWORD} x'",
        f"postgres://app:{PASSWORD}@127.0.0.1:1/db",  # unreachable
    ],
)
def test_the_cli_error_line_never_shows_the_password(url):
    env = {**os.environ, "DATABASE_URL": url, "PGCONNECT_TIMEOUT": "2"}
    result = subprocess.run([*CLI, "verify"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capctl: error: "), result.stderr
    for piece in (PASSWORD, "hunter2", "Secret"):
        assert piece not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("text", "url", "want"),
    [
        ('in URI: "postgresql://u:pw-1@[bad"', None, 'in URI: "postgresql://u:***@[bad"'),
        ("password=pw-1 host=x", None, "password=*** host=x"),
        ("password = 'a b' host=x", None, "password = *** host=x"),
        (
            "failed to resolve host 'tail@127.0.0.1'",
            "postgresql://u:head@tail@127.0.0.1/db",
            "failed to resolve host '***@127.0.0.1'",
        ),
        ("no password here", "postgresql://u@h/db", "no password here"),
    ],
)
def test_redact(text, url, want):
    assert redact(text, url or "") == want
