"""Processes as Linux shows them under /proc, and the postmaster a data directory names: the one
place the local tooling reads them (serve reaps its own children, the fault injector finds the
database's processes, db up/down and the demo stop a server)."""

from __future__ import annotations

import os
from pathlib import Path


def child_pids(parent: int | None = None) -> set[int]:
    """The child processes of ``parent`` (default: this process), alive or zombie; none where
    there is no /proc."""
    wanted = str(os.getpid() if parent is None else parent)
    children: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]  # the comm before ")" may hold spaces
        except (OSError, IndexError):  # it exited meanwhile
            continue
        if ppid == wanted:
            children.add(int(stat.parent.name))
    return children


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid the data directory's postmaster.pid names (its first line), if it names one."""
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
