"""The README's "Try the API by hand" section, run as a newcomer would, twice in a row: it must
work as written and stop what it started (a second run would meet "address already in use")."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def by_hand_script(port: int, home: Path) -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Try the API by hand") :]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert block is not None
    script = block.group(1).replace("make setup\n", "")  # done: the suite runs in the set-up venv
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    script = script.replace(".capctl/serve.log", str(home / "serve.log"))
    return "set -euo pipefail\n" + script.replace("3000", str(port))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def home() -> Iterator[Path]:
    """The section's CAPCTL_HOME, outside pytest's base directory: the embedded server runs as
    another user and needs its parents traversable, which any pytest starting meanwhile on this
    machine resets (it keeps /tmp/pytest-of-<user> at mode 0700)."""
    with tempfile.TemporaryDirectory(prefix="capctl-readme-") as directory:
        yield Path(directory)


def test_the_by_hand_section_works_twice_in_a_row(home: Path) -> None:
    port = free_port()
    env = {**os.environ, "CAPCTL_HOME": str(home / "home")}
    env.pop("DATABASE_URL", None)
    script = by_hand_script(port, home)
    outputs = []
    for _ in range(2):
        run = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert run.returncode == 0, run.stderr[-2000:]
        outputs.append(run.stdout)
    for out in outputs:
        assert '"status": "confirmed"' in out and "rule in force: 40 covers" in out
    # the second run replayed the first booking (same Idempotency-Key): still one booking in the slot
    assert "bookings (1 confirmed of 1)" in outputs[1]
    with socket.socket() as probe:  # nothing left listening on the port
        assert probe.connect_ex(("127.0.0.1", port)) != 0
