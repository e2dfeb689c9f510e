"""`capctl` run in-process by the tests: pointed at a test database, its exit code and what this
command alone printed."""

from __future__ import annotations

import pytest

from capctl import cli


def on_database(monkeypatch: pytest.MonkeyPatch, url: str, *unset: str) -> str:
    """DATABASE_URL set to ``url`` for the test; the settings named in ``unset`` removed."""
    monkeypatch.setenv("DATABASE_URL", url)
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``capctl ARGV``: (exit code, stdout, stderr)."""
    capsys.readouterr()  # what was printed before (e.g. a handler's EMF lines) is not this command's
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``capctl ARGV`` refused as bad input is: exit 2, nothing on stdout and one line on stderr,
    which is returned."""
    code, out, err = run(capsys, *argv)
    assert (code, out, err.count("\n")) == (2, "", 1), (code, out, err)
    return err
