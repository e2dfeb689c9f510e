"""Faults injected into a local stack during a load test (`capctl load --faults`, `capctl demo`).

* ``db-crash``: SIGKILL the PostgreSQL postmaster, then start it again on the same data directory
  (same socket, same port) a few seconds later: crash recovery replays the WAL, nothing committed
  may be lost.
* ``db-stall``: SIGSTOP the postmaster and every backend for a few seconds, then SIGCONT: requests
  wait, some time out, none may be answered wrongly.
* ``instance-kill``: SIGKILL one handler instance of `capctl serve` (a busy one when there is
  one): the gateway answers that request 502 and replaces the instance.

Only on this machine: the processes are found from the database itself (``data_directory`` and
its ``postmaster.pid``) and from the local API's ``/__health``, and signalled directly. Against a
remote target there is nothing to signal and a load test must never break shared infrastructure,
so `capctl load` refuses ``--faults`` with ``--allow-remote``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from capacity.camel_json import iso_millis
from capctl.errors import UserError
from capctl.procs import child_pids, postmaster_pid
from capctl.serve import health

KINDS = ("db-crash", "instance-kill", "db-stall")
DB_DOWN_S = 3.0  # from the kill to the restart of a db-crash
STALL_S = 2.5  # SIGSTOP .. SIGCONT of a db-stall
RESTART_ATTEMPTS = 10
# Between two faults, so that each one's recovery is measured on its own.
GAP_S = 1.0


def parse_kinds(raw: str) -> list[str]:
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    if not kinds:
        raise UserError(f"--faults needs one or more of {', '.join(KINDS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise UserError(f"--faults: unknown fault {kind!r} (known: {', '.join(KINDS)})")
    return kinds


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    """A PostgreSQL server of this machine, by its data directory."""

    pgdata: Path

    @classmethod
    def of(cls, database_url: str) -> Postgres:
        """The server behind ``database_url``, when it runs here and this user may signal it."""
        from capctl.database import connection

        with connection(database_url) as conn:
            row = conn.execute("SELECT current_setting('data_directory') AS d").fetchone()
        assert row is not None
        pg = cls(Path(row["d"]))
        if not (pg.pgdata / "postmaster.pid").exists():
            raise UserError(
                f"--faults: the database's data directory {pg.pgdata} is not on this machine: "
                "faults are injected into a local stack only"
            )
        return pg

    def pid(self) -> int | None:
        return postmaster_pid(self.pgdata)

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        root = self.pid()
        return [] if root is None else [root, *sorted(child_pids(root))]

    def _command(self) -> tuple[Path, list[str]]:
        """The pg_ctl beside the running postgres binary and the server's own options."""
        argv = shlex.split((self.pgdata / "postmaster.opts").read_text())
        binary = Path(argv[0])
        options: list[str] = []
        args = argv[1:]
        i = 0
        while i < len(args):
            if args[i] == "-D":
                i += 2
                continue
            options.append(args[i])
            i += 1
        return binary.parent / "pg_ctl", options

    def crash(self, down_s: float = DB_DOWN_S, sleep: Callable[[float], None] = time.sleep) -> None:
        """SIGKILL the postmaster; start it again ``down_s`` later, as it was started."""
        pg_ctl, options = self._command()  # read before the kill: the files stay, but be safe
        owner = self.pgdata.stat().st_uid
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"no postmaster.pid in {self.pgdata}")
        os.kill(pid, signal.SIGKILL)
        sleep(down_s)
        log = self.pgdata / "log" if (self.pgdata / "log").exists() else self.pgdata / "capctl-faults.log"
        command = [str(pg_ctl), "-D", str(self.pgdata), "-w", "-t", "30", "-l", str(log)]
        if options:
            command += ["-o", shlex.join(options)]
        command.append("start")
        user = owner if os.geteuid() == 0 and owner != 0 else None
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            # Backends of the killed postmaster may still hold its shared memory for a moment.
            result = subprocess.run(  # noqa: S603 (the server's own pg_ctl, no shell)
                command, user=user, capture_output=True, text=True, timeout=60, check=False
            )
            if result.returncode == 0:
                return
            if attempt == RESTART_ATTEMPTS:
                raise RuntimeError(f"PostgreSQL did not restart: {result.stderr.strip()[-300:]} (see {log})")
            sleep(1.0)

    def stall(self, stall_s: float = STALL_S, sleep: Callable[[float], None] = time.sleep) -> None:
        """SIGSTOP every server process, SIGCONT them ``stall_s`` later."""
        stopped = []
        try:
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            sleep(stall_s)
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


# --------------------------------------------------------------------------- capctl serve


def kill_instance(base_url: str) -> int:
    """SIGKILL one handler instance of the local API (a busy one if any); its pid."""
    instances = [i for i in health(base_url, timeout_s=5).get("instances") or [] if i.get("pid")]
    if not instances:
        raise RuntimeError("the local API reports no instance to kill")
    chosen = next((i for i in instances if i.get("busy")), instances[0])
    os.kill(int(chosen["pid"]), signal.SIGKILL)
    return int(chosen["pid"])


# --------------------------------------------------------------------------- the schedule


@dataclass
class Injector:
    """Runs the faults in order, each at its offset from the start of the load (seconds), in a
    thread; records what happened as ``{kind, startedAt, endedAt, error}``."""

    kinds: Sequence[str]
    offsets: Sequence[float]
    database_url: str | None
    base_url: str
    out: TextIO
    down_s: float = DB_DOWN_S
    stall_s: float = STALL_S
    records: list[dict[str, Any]] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _postgres: Postgres | None = None

    def prepare(self) -> None:
        """Find the processes before the run (a mistake is a one-line error, not a failed run)."""
        if any(k.startswith("db-") for k in self.kinds):
            if not self.database_url:
                raise UserError("--faults db-crash/db-stall need the database (DATABASE_URL or `capctl db up`)")
            self._postgres = Postgres.of(self.database_url)

    def describe(self) -> str:
        return ", ".join(f"{k} at +{o:.0f} s" for k, o in zip(self.kinds, self.offsets, strict=True))

    def start(self, load_started: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(load_started,), name="faults", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel what has not begun; wait for a fault in progress to heal (a stalled or killed
        database is never left behind)."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self, load_started: threading.Event) -> None:
        load_started.wait(timeout=60)
        origin = time.monotonic()
        for kind, offset in zip(self.kinds, self.offsets, strict=True):
            if self._cancel.wait(max(0.0, origin + offset - time.monotonic())):
                return
            self.inject(kind)
            if self._cancel.wait(GAP_S):
                return

    def inject(self, kind: str) -> dict[str, Any]:
        started = _now()
        record: dict[str, Any] = {"kind": kind, "startedAt": iso_millis(started), "endedAt": None, "error": None}
        self.records.append(record)
        print(f"  fault      {kind} at {started:%H:%M:%S}", file=self.out, flush=True)
        try:
            if kind == "db-crash":
                assert self._postgres is not None
                self._postgres.crash(self.down_s)
                what = f"PostgreSQL killed (SIGKILL), restarted after {self.down_s:g} s"
            elif kind == "db-stall":
                assert self._postgres is not None
                self._postgres.stall(self.stall_s)
                what = f"PostgreSQL stopped (SIGSTOP) for {self.stall_s:g} s"
            else:
                pid = kill_instance(self.base_url)
                what = f"handler instance pid {pid} killed (SIGKILL)"
        except Exception as exc:  # reported in the run's checks: a fault that did not heal
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  fault      {kind} FAILED: {record['error']}", file=self.out, flush=True)
            return record
        record["endedAt"] = iso_millis(_now())
        print(f"  fault      {kind}: {what}", file=self.out, flush=True)
        return record


def schedule(kinds: Sequence[str], phases: Sequence[tuple[str, float]]) -> list[float]:
    """Offsets (s from the first phase's start) spreading the faults over the contention phase,
    or over the middle of the run when the scenario has none; never in its last 5 s, so that
    diners are still there to show the recovery."""
    total = sum(seconds for _, seconds in phases)
    start, end = total * 0.2, total * 0.6
    elapsed = 0.0
    for name, seconds in phases:
        if "contention" in name.lower() and seconds > 0:
            start, end = elapsed, elapsed + seconds
            break
        elapsed += seconds
    end = min(end, max(start, total - 5))
    step = (end - start) / max(len(kinds), 1)
    return [round(start + step * (i + 0.25), 1) for i in range(len(kinds))]


def scenario_phases(path: Path) -> list[tuple[str, float]]:
    """(name, seconds) of the scenario's phases; templated durations (the opt-in probe) are 0."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    phases = []
    for phase in ((doc or {}).get("config") or {}).get("phases") or []:
        raw = phase.get("duration", phase.get("pause", 0))
        try:
            seconds = float(raw)
        except (TypeError, ValueError):
            seconds = 0.0
        phases.append((str(phase.get("name", "")), seconds))
    return phases
