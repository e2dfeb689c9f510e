"""`capctl load`: the Artillery load test, its race verification, report and cleanup.

1. Plan: read each target restaurant's availability from the test date (the first date 30+ days
   ahead on which all of them have open slots, unless LOAD_TEST_DATE says) over --days dates,
   pick three hot slots on the test date, and record every slot's covers before the run.
2. Run Artillery (load/capacity-load.yml, or --smoke) with a compact progress line per period.
3. Verify. With database access (DATABASE_URL or the embedded `capctl db up`): reconcile every
   slot of the run's restaurants and dates from `bookings`, compare 201 responses with the
   bookings stored for the run id, check one booking per Idempotency-Key and one success event
   per booking, compare the slot_usage ledger with the bookings, count the run's events. Without
   it (a staging target): re-read availability, bookedCovers <= maxCovers for every slot.
4. Report: reports/load-tests/<UTC timestamp>.json + .html, and a table here.
5. Clean up the run's synthetic bookings (unless --keep; needs database access).

Every request the diners make is also recorded as the client saw it (the history,
raw/<stem>.history.jsonl) and checked against the database by capctl.history: no acknowledged
booking or cancellation lost, replays return the original, no key with two bookings, the slot
ledger equals its recount. With --faults (local targets only) capctl.faults kills or stalls
PostgreSQL and kills a handler instance during the contention phase, and the report says how long
the service took to answer a booking again after each fault.

Exit 0 only when every check passed; 1 when a check failed; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from capacity import figures
from capacity.camel_json import iso_instant
from capacity.outcomes import LOAD_TEST_SOURCE, REQUEST_EVENTS, EventType
from capctl import faults as fault_injection
from capctl import history as run_history
from capctl import report as reports
from capctl.cleanup import CleanupResult
from capctl.errors import UserError
from capctl.load_report import EnsureCheck, HotSlot, LedgerFinding, LoadReport, PlanDay, PlanFile, SlotFinding
from capctl.text import plural

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCENARIO = Path("load/capacity-load.yml")
SMOKE_SCENARIO = Path("load/capacity-smoke.yml")
DEFAULT_REPORT_DIR = Path("reports/load-tests")
RUN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HOT_SLOTS = 3
MAX_PARTY = 4
DEFAULT_DAYS = 7
# The opt-in probe: diners with no think time for 8 s, 40 arriving a second, far above any sane
# usage plan, so the gateway must answer 429.
PROBE_SECONDS, PROBE_RATE = 8, 40
DATE_SEARCH_DAYS = (30, 60)
HTTP_TIMEOUT_S = 10.0
EVENT_BUCKET_S = 5
# With faults, a request held by a stalled or restarting database answers late by design: the
# latency limit is then the gateway's function timeout (a client still gets its answer).
FAULT_ENSURE_OVERRIDE = {"config": {"ensure": {"thresholds": [{"http.response_time.p99": 10000}], "maxErrorRate": 0}}}


# --------------------------------------------------------------------------- settings


@dataclass
class LoadOptions:
    base_url: str
    service_key: str
    restaurant_ids: list[str]
    date: dt.date | None = None
    scenario: Path = DEFAULT_SCENARIO
    report_dir: Path = DEFAULT_REPORT_DIR
    run_id: str | None = None
    keep: bool = False
    database_url: str | None = None
    artillery: Path | None = None
    days: int = DEFAULT_DAYS
    probe_seconds: int = 0
    probe_rate: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    restaurant_names: dict[str, str] = field(default_factory=dict)
    stem: str | None = None  # the report's file name stem (default: the run's UTC start)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = (
        "Run the Artillery load test against LOAD_TEST_BASE_URL, verify that no slot was overbooked "
        "and every 201 is one stored booking, write the report and clean up."
    )
    parser.epilog = (
        "environment: LOAD_TEST_BASE_URL (the API, e.g. http://127.0.0.1:3000), LOAD_TEST_SERVICE_KEY "
        "(its x-api-key), LOAD_TEST_RESTAURANT_ID (one or more restaurant ids, comma-separated), "
        "LOAD_TEST_DATE (optional, YYYY-MM-DD), DATABASE_URL (optional: verify in the database)."
    )
    parser.add_argument("--scenario", type=Path, default=None, help=f"Artillery scenario (default {DEFAULT_SCENARIO})")
    parser.add_argument("--smoke", action="store_true", help=f"the reduced scenario ({SMOKE_SCENARIO}, ~15 s)")
    parser.add_argument("--keep", action="store_true", help="keep the run's synthetic bookings (no cleanup)")
    parser.add_argument("--run-id", help="tag for the run's bookings and events (default lt-<timestamp>-<random>)")
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help=f"default {DEFAULT_REPORT_DIR}")
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        help=f"dates to spread bookings over, from the test date on (default {DEFAULT_DAYS})",
    )
    parser.add_argument(
        "--no-db", action="store_true", help="verify through the availability endpoint only, even with database access"
    )
    parser.add_argument(
        "--probe-rate-limit",
        action="store_true",
        help="add the opt-in phase that deliberately exceeds the usage plan and expects 429s "
        "(or LOAD_TEST_PROBE_RATE_LIMIT=true)",
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not localhost (e.g. staging)"
    )
    parser.add_argument(
        "--faults",
        metavar="LIST",
        default=None,
        help=f"inject faults during the contention phase, comma-separated: {', '.join(fault_injection.KINDS)} "
        "(local targets only; needs the database)",
    )


def options_from(args: argparse.Namespace, env: Mapping[str, str]) -> LoadOptions:
    """Validated options; a missing or malformed setting is a one-line UserError (exit 2)."""
    base_url = _required(env, "LOAD_TEST_BASE_URL", "the API to load, e.g. http://127.0.0.1:3000")
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"LOAD_TEST_BASE_URL must be an http(s) URL, got {base_url!r}")
    if parsed.hostname not in LOCAL_HOSTS and not args.allow_remote:
        raise UserError(
            f"LOAD_TEST_BASE_URL points at {parsed.hostname}, not this machine: pass --allow-remote to load it"
        )
    service_key = _required(env, "LOAD_TEST_SERVICE_KEY", "the x-api-key the API accepts")
    raw_ids = _required(env, "LOAD_TEST_RESTAURANT_ID", "one or more restaurant ids, comma-separated")
    restaurant_ids = parse_restaurant_ids(raw_ids)
    date = None
    if env.get("LOAD_TEST_DATE"):
        try:
            date = dt.date.fromisoformat(env["LOAD_TEST_DATE"])
        except ValueError:
            raise UserError(f"LOAD_TEST_DATE must be YYYY-MM-DD, got {env['LOAD_TEST_DATE']!r}") from None
        if date <= dt.datetime.now(dt.UTC).date():
            raise UserError(f"LOAD_TEST_DATE {date} is not in the future: the API refuses past slots")
    if not 1 <= args.days <= 31:
        raise UserError("--days must be between 1 and 31")
    run_id = args.run_id
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise UserError("--run-id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    scenario = args.scenario or (SMOKE_SCENARIO if args.smoke else DEFAULT_SCENARIO)
    probe = args.probe_rate_limit or _flag(env, "LOAD_TEST_PROBE_RATE_LIMIT")
    database_url = None
    if not args.no_db:
        from capctl.database import database_url as configured_database

        database_url = configured_database(required=False)
    faults: list[str] = []
    if getattr(args, "faults", None) is not None:
        if args.allow_remote or parsed.hostname not in LOCAL_HOSTS:
            raise UserError("--faults kills and stalls processes of this machine: it is refused with --allow-remote")
        faults = fault_injection.parse_kinds(args.faults)
        if database_url is None:
            raise UserError("--faults needs database access to verify the run (DATABASE_URL or `capctl db up`)")
    return LoadOptions(
        base_url=base_url.rstrip("/"),
        service_key=service_key,
        restaurant_ids=restaurant_ids,
        date=date,
        scenario=resolve_path(scenario),
        report_dir=args.report_dir,
        run_id=run_id,
        keep=args.keep,
        database_url=database_url,
        artillery=find_artillery(env),
        days=args.days,
        probe_seconds=PROBE_SECONDS if probe else 0,
        probe_rate=PROBE_RATE if probe else 0,
        faults=faults,
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UserError(f"{name} must be true or false, got {env[name]!r}")


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        raise UserError(f"{name} is not set: {what}")
    return value


def parse_restaurant_ids(raw: str) -> list[str]:
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    if not ids:
        raise UserError("LOAD_TEST_RESTAURANT_ID holds no restaurant id")
    for rid in ids:
        try:
            uuid.UUID(rid)
        except ValueError:
            raise UserError(f"LOAD_TEST_RESTAURANT_ID: {rid!r} is not a UUID") from None
    return list(dict.fromkeys(ids))


def resolve_path(path: Path) -> Path:
    """A relative path from the working directory, else from the repository root."""
    if path.is_absolute() or path.exists():
        if not path.exists():
            raise UserError(f"scenario {path} does not exist")
        return path
    candidate = REPO_ROOT / path
    if candidate.exists():
        return candidate
    raise UserError(f"scenario {path} does not exist")


def find_artillery(env: Mapping[str, str]) -> Path:
    """node_modules/.bin/artillery of the working directory or the repository (ARTILLERY_BIN overrides)."""
    if env.get("ARTILLERY_BIN"):
        configured = Path(env["ARTILLERY_BIN"])
        if not configured.exists():
            raise UserError(f"ARTILLERY_BIN {configured} does not exist")
        return configured
    for root in (Path.cwd(), REPO_ROOT):
        candidate = root / "node_modules" / ".bin" / "artillery"
        if candidate.exists():
            if shutil.which("node") is None:
                raise UserError("node is not on PATH: Artillery needs Node.js 20+")
            return candidate
    raise UserError(
        "Artillery is not installed (node_modules/.bin/artillery): run `make setup` "
        "(PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)"
    )


def new_run_id(now: dt.datetime) -> str:
    return f"lt-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


# --------------------------------------------------------------------------- the API


class Api:
    """The few reads the runner makes itself (availability), with one-line errors."""

    def __init__(self, base_url: str, service_key: str) -> None:
        self.base_url = base_url
        self.service_key = service_key

    def availability(self, restaurant_id: str, date: dt.date) -> list[dict[str, Any]]:
        url = f"{self.base_url}/restaurants/{restaurant_id}/availability?date={date.isoformat()}"
        headers = {"x-api-key": self.service_key, "Accept": "application/json"}
        # The scheme was checked to be http(s) when the options were read.
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 403:
                raise UserError("the API refused LOAD_TEST_SERVICE_KEY (403 forbidden)") from None
            if exc.code == 404:
                raise UserError(f"restaurant {restaurant_id} does not exist at {self.base_url}") from None
            raise UserError(f"availability of {restaurant_id} on {date}: HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot reach LOAD_TEST_BASE_URL {self.base_url}: {reason}") from None
        slots: list[dict[str, Any]] = body.get("slots") or []
        return slots


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """What the diners book: restaurants x dates with their slots as availability showed them
    before the run (the covers booked before), and the hot slots of the contention phase."""

    run_id: str
    restaurant_ids: list[str]
    dates: list[dt.date]
    days: dict[tuple[str, dt.date], list[dict[str, Any]]]  # (restaurant, date) -> slots before the run
    hot: list[dict[str, str]]

    def file(self) -> PlanFile:
        """What load/processor.js reads (LOAD_TEST_PLAN)."""
        return PlanFile(
            run_id=self.run_id,
            restaurants=[
                PlanDay(id=rid, date=date.isoformat(), times=[s["time"] for s in slots])
                for (rid, date), slots in self.days.items()
                if slots
            ],
            hot=[HotSlot.model_validate(h) for h in self.hot],
            hot_dates=[date.isoformat() for date in self.dates if self.days.get((self.hot[0]["restaurantId"], date))],
            max_party_size=MAX_PARTY,
        )


def _has_room(slot: Mapping[str, Any]) -> bool:
    remaining = slot.get("remainingCovers")
    return remaining is None or remaining > 0


def choose_date(api: Api, restaurant_ids: Sequence[str], today: dt.date) -> dt.date:
    """The first date 30-60 days ahead on which every restaurant has a slot with room."""
    first, last = DATE_SEARCH_DAYS
    for offset in range(first, last + 1):
        date = today + dt.timedelta(days=offset)
        if all(any(_has_room(s) for s in api.availability(rid, date)) for rid in restaurant_ids):
            return date
    raise UserError(f"no date {first}-{last} days ahead has open slots at every restaurant: set LOAD_TEST_DATE")


def choose_hot_slots(restaurant_id: str, date: dt.date, slots: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Three adjacent limited slots mid-service: contention, then diners chase the alternatives."""
    limited = [s for s in slots if s.get("maxCovers") and _has_room(s)] or list(slots)
    middle = len(limited) // 2
    start = max(0, min(middle - 1, len(limited) - HOT_SLOTS))
    return [
        {"restaurantId": restaurant_id, "date": date.isoformat(), "time": s["time"]}
        for s in limited[start : start + HOT_SLOTS]
    ]


def make_plan(api: Api, options: LoadOptions, run_id: str) -> Plan:
    """The main date (LOAD_TEST_DATE, or the first suitable one 30+ days ahead) and the days after
    it: spreading over several dates keeps later phases from meeting only full slots."""
    if options.date is not None:
        main = options.date
    else:
        main = choose_date(api, options.restaurant_ids, dt.datetime.now(dt.UTC).date())
    dates = [main + dt.timedelta(days=n) for n in range(options.days)]
    days = {(rid, date): api.availability(rid, date) for rid in options.restaurant_ids for date in dates}
    first = options.restaurant_ids[0]
    if not days[(first, main)]:
        raise UserError(f"restaurant {first} has no open slot on {main}: choose another LOAD_TEST_DATE")
    return Plan(
        run_id=run_id,
        restaurant_ids=list(options.restaurant_ids),
        dates=dates,
        days=days,
        hot=choose_hot_slots(first, main, days[(first, main)]),
    )


# --------------------------------------------------------------------------- running Artillery


_METRIC_LINE = re.compile(r"^(?P<indent>\s*)(?P<name>[^:]+?):\s*\.*\s*(?P<value>-?[\d.]+)(?:/sec)?\s*$")
_HEADER_LINE = re.compile(r"^(?P<name>[^:]+):\s*$")


class Progress:
    """Condenses Artillery's console output: phase lines, then one line per 10 s period."""

    def __init__(self, out: TextIO, load_started: threading.Event | None = None) -> None:
        self.out = out
        self.load_started = load_started
        self.block: dict[str, float] | None = None
        self.block_end = ""
        self.parent = ""
        self.summary = False
        self.lines: list[str] = []

    def feed(self, raw: str) -> None:
        line = reports._strip_ansi(raw.rstrip("\n"))
        self.lines.append(line)
        if self.summary:
            if line.startswith(("ok: ", "fail: ")):
                self._print(f"  ensure {line}")
            return
        if line.startswith("Phase started:"):
            if self.load_started is not None:
                self.load_started.set()
            self.flush()
            if "duration: 0s" in line:  # the opt-in probe phase when it is off
                return
            self._print("  " + line.split(" (index")[0].replace("Phase started: ", "phase ") + " started")
        elif line.startswith("Metrics for period to:"):
            self.flush()
            self.block = {}
            self.block_end = line.split("to: ", 1)[1].split("(")[0]
        elif line.startswith(("Summary report", "All VUs finished")):
            self.flush()
            self.summary = line.startswith("Summary report")
            if line.startswith("All VUs finished"):
                self._print("  " + line)
        elif self.block is not None:
            m = _METRIC_LINE.match(line)
            if m:
                key = m["name"].strip()
                if m["indent"]:
                    key = f"{self.parent}.{key}"
                self.block[key] = float(m["value"])
            else:
                h = _HEADER_LINE.match(line)
                if h:
                    self.parent = h["name"].strip()

    def flush(self) -> None:
        if not self.block:
            self.block = None
            return
        b = self.block
        codes = {k.removeprefix("http.codes."): int(v) for k, v in b.items() if re.fullmatch(r"http\.codes\.\d+", k)}
        other = sum(n for c, n in codes.items() if int(c) not in reports.ALLOWED_STATUSES)
        errors = sum(int(v) for k, v in b.items() if k.startswith("errors."))
        p95 = b.get("http.response_time.p95")
        p99 = b.get("http.response_time.p99")
        self._print(
            f"  {self.block_end}  {int(b.get('http.requests', 0)):>5} req ({int(b.get('http.request_rate', 0))}/s)"
            f"  201 {codes.get('201', 0):>4}  409 {codes.get('409', 0):>4}  429 {codes.get('429', 0):>3}"
            f"  other {other + errors}  p95 {'-' if p95 is None else f'{p95:.0f}'} ms"
            f"  p99 {'-' if p99 is None else f'{p99:.0f}'} ms"
            f"  diners in flight {int(b.get('load.vusers_in_flight.max', 0))}"
        )
        self.block = None

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


@dataclass
class ArtilleryRun:
    exit_code: int | None
    output: dict[str, Any] | None
    checks: list[EnsureCheck]
    log_path: Path


def run_artillery(
    artillery: Path,
    scenario: Path,
    env: Mapping[str, str],
    output_path: Path,
    log_path: Path,
    out: TextIO,
    *,
    overrides: Mapping[str, Any] | None = None,
    load_started: threading.Event | None = None,
) -> ArtilleryRun:
    """Artillery in its own process group (so Ctrl-C or a failure stops all of it)."""
    command = [str(artillery), "run", "--output", str(output_path)]
    if overrides:
        command += ["--overrides", json.dumps(overrides)]
    command.append(str(scenario))
    progress = Progress(out, load_started)
    stderr_lines: list[str] = []
    with log_path.open("w") as log:
        process = subprocess.Popen(  # noqa: S603 (a fixed command line, no shell)
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env),
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        reader = threading.Thread(target=_drain, args=(process.stderr, log, stderr_lines), daemon=True)
        reader.start()
        try:
            for line in process.stdout:
                log.write(line)
                progress.feed(line)
            exit_code = process.wait()
        except BaseException:
            _stop_group(process)
            raise
        finally:
            reader.join(timeout=5)
        progress.flush()
    for line in stderr_lines[:10]:
        print(f"  artillery: {line.rstrip()}", file=out)
    if len(stderr_lines) > 10:
        print(f"  artillery: … {len(stderr_lines) - 10} more lines in {log_path}", file=out)
    output = json.loads(output_path.read_text()) if output_path.exists() else None
    return ArtilleryRun(exit_code, output, reports.parse_ensure_checks(progress.lines), log_path)


def _drain(stream: IO[str], log: IO[str], lines: list[str]) -> None:
    for line in stream:
        log.write(line)
        lines.append(line)


def _stop_group(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def artillery_env(
    options: LoadOptions, base: Mapping[str, str], plan_path: Path, run_id: str, history_path: Path | None = None
) -> dict[str, str]:
    env = dict(base)
    env.update(options.extra_env)
    env.update(
        {
            "LOAD_TEST_BASE_URL": options.base_url,
            "LOAD_TEST_SERVICE_KEY": options.service_key,
            "LOAD_TEST_RESTAURANT_ID": ",".join(options.restaurant_ids),
            "LOAD_TEST_RUN_ID": run_id,
            "LOAD_TEST_PLAN": str(plan_path),
            "LOAD_TEST_PROBE_SECONDS": str(options.probe_seconds),
            "LOAD_TEST_PROBE_RATE": str(options.probe_rate),
            "ARTILLERY_DISABLE_TELEMETRY": "true",
            "NO_COLOR": "1",
        }
    )
    if history_path is not None:
        env[run_history.HISTORY_ENV] = str(history_path)
    return env


# --------------------------------------------------------------------------- verification

_RUN_BOOKINGS = """
SELECT count(*)::int AS bookings,
       count(*) FILTER (WHERE status = 'confirmed')::int AS confirmed,
       coalesce(sum(party_size), 0)::int AS covers
  FROM bookings WHERE run_id = %(run_id)s AND source = %(source)s
"""
_RUN_BOOKINGS_BY_SLOT = """
SELECT restaurant_id::text AS restaurant_id, booking_date, to_char(booking_time, 'HH24:MI') AS time,
       sum(party_size)::int AS covers
  FROM bookings WHERE run_id = %(run_id)s AND source = %(source)s AND status = 'confirmed'
 GROUP BY 1, 2, 3
"""
_DUPLICATE_KEYS = """
SELECT count(*)::int AS n FROM (
    SELECT tenant, idempotency_key FROM bookings
     WHERE run_id = %(run_id)s AND idempotency_key IS NOT NULL
     GROUP BY tenant, idempotency_key HAVING count(*) > 1) AS d
"""
_RUN_EVENTS = """
SELECT event_type, count(*)::int AS n FROM observability_events
 WHERE metadata ->> 'runId' = %(run_id)s AND occurred_at >= %(since)s
 GROUP BY event_type ORDER BY event_type
"""
_RUN_EVENTS_TIMELINE = """
SELECT to_timestamp(floor(extract(epoch FROM occurred_at) / %(bucket)s) * %(bucket)s) AS t,
       event_type, count(*)::int AS n
  FROM observability_events
 WHERE metadata ->> 'runId' = %(run_id)s AND occurred_at >= %(since)s
 GROUP BY 1, 2 ORDER BY 1
"""
# Booking requests and those that met a conflict, per bucket and for the run: capacity.figures'
# one definition, the same the roll-up, the alerts and the demo count with.
_RUN_FIGURES_TIMELINE = f"""
SELECT to_timestamp(floor(extract(epoch FROM e.occurred_at) / %(bucket)s) * %(bucket)s) AS t,
       count(*) FILTER (WHERE {figures.OUTCOME_SQL})::int AS requests,
       count(*) FILTER (WHERE {figures.CONFLICTED_SQL})::int AS conflicts
  FROM observability_events e
 WHERE e.metadata ->> 'runId' = %(run_id)s AND e.occurred_at >= %(since)s
 GROUP BY 1 ORDER BY 1
"""  # noqa: S608 (fragments of capacity.figures; values are bound parameters)
_LEDGER = """
SELECT u.restaurant_id::text AS restaurant_id, u.slot_date, to_char(u.slot_time, 'HH24:MI') AS time,
       u.booked_covers AS ledger,
       coalesce((SELECT sum(b.party_size) FROM bookings b
                  WHERE b.restaurant_id = u.restaurant_id AND b.booking_date = u.slot_date
                    AND b.booking_time = u.slot_time AND b.status = 'confirmed'), 0)::int AS confirmed
  FROM slot_usage u
 WHERE u.restaurant_id = ANY(%(ids)s::uuid[]) AND u.slot_date BETWEEN %(date_from)s AND %(date_to)s
"""


def _slot_key(restaurant_id: str, date: str, time: str) -> tuple[str, str, str]:
    return (restaurant_id, date, time)


def verify_in_database(conn: Any, plan: Plan, since: dt.datetime) -> reports.Verification:
    """Reconcile from `bookings` (never from counters) and check the run's rows."""
    from capacity.reconcile import slot_states

    ids = [uuid.UUID(r) for r in plan.restaurant_ids]
    states = slot_states(conn, restaurant_ids=ids, date_from=plan.dates[0], date_to=plan.dates[-1])
    by_run = {
        _slot_key(r["restaurant_id"], r["booking_date"].isoformat(), r["time"]): r["covers"]
        for r in conn.execute(_RUN_BOOKINGS_BY_SLOT, {"run_id": plan.run_id, "source": LOAD_TEST_SOURCE})
    }
    slots: dict[tuple[str, str, str], SlotFinding] = {}
    for (rid, date), before in plan.days.items():
        for s in before:
            key = _slot_key(rid, date.isoformat(), s["time"])
            slots[key] = SlotFinding(
                restaurantId=rid,
                date=date.isoformat(),
                time=s["time"],
                maxCovers=s["maxCovers"],
                confirmedCovers=0,
                bookedBefore=s["bookedCovers"],
                byRun=by_run.get(key, 0),
            )
    overbooked: set[tuple[str, str, str]] = set()
    for state in states:
        row = state.as_json()
        key = _slot_key(row["restaurantId"], row["date"], row["time"])
        entry = slots.setdefault(
            key,
            SlotFinding(
                restaurantId=row["restaurantId"],
                date=row["date"],
                time=row["time"],
                maxCovers=None,
                confirmedCovers=0,
                bookedBefore=None,  # a slot availability did not show before the run
                byRun=by_run.get(key, 0),
            ),
        )
        # The capacity in force now, resolved from the rules (not what availability said).
        entry["maxCovers"] = row["maxCovers"]
        entry["confirmedCovers"] = row["confirmedCovers"]
        if state.over_capacity:  # over the capacity the bookings were accepted under: a guard failure
            overbooked.add(key)
    ordered = [slots[k] for k in sorted(slots)]
    over = [slots[k] for k in sorted(overbooked)]
    run_rows = conn.execute(_RUN_BOOKINGS, {"run_id": plan.run_id, "source": LOAD_TEST_SOURCE}).fetchone()
    duplicates = conn.execute(_DUPLICATE_KEYS, {"run_id": plan.run_id}).fetchone()
    # Every event a booking request can record is listed, 0 when the run had none of it.
    events = {e.value: 0 for e in sorted(REQUEST_EVENTS)}
    events.update((r["event_type"], r["n"]) for r in conn.execute(_RUN_EVENTS, {"run_id": plan.run_id, "since": since}))
    buckets: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in conn.execute(_RUN_EVENTS_TIMELINE, {"run_id": plan.run_id, "since": since, "bucket": EVENT_BUCKET_S}):
        buckets[iso_instant(r["t"])][r["event_type"]] = r["n"]
    conflicted = 0
    for r in conn.execute(_RUN_FIGURES_TIMELINE, {"run_id": plan.run_id, "since": since, "bucket": EVENT_BUCKET_S}):
        buckets[iso_instant(r["t"])].update(requests=r["requests"], conflicts=r["conflicts"])
        conflicted += r["conflicts"]
    ledger = [
        LedgerFinding(
            restaurantId=r["restaurant_id"],
            date=r["slot_date"].isoformat(),
            time=r["time"],
            ledger=r["ledger"],
            confirmedCovers=r["confirmed"],
        )
        for r in conn.execute(_LEDGER, {"ids": ids, "date_from": plan.dates[0], "date_to": plan.dates[-1]})
        if r["ledger"] != r["confirmed"]
    ]
    return reports.Verification(
        mode="database",
        slots=ordered,
        over_capacity=over,
        bookings_stored=run_rows["bookings"],
        covers_stored=run_rows["covers"],
        duplicate_keys=duplicates["n"],
        success_events=events.get(EventType.SUCCESS, 0),
        ledger_mismatches=ledger,
        events=events,
        events_timeline=[{"t": t, **counts} for t, counts in sorted(buckets.items())],
        conflicted_requests=conflicted,
    )


def verify_history(
    conn: Any, verification: reports.Verification, run_id: str, history_path: Path, faults: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The client-side history against the database (capctl.history); fills the verification's
    acknowledgedLost / cancellationsLost and history checks, returns the faults with their
    recovery times."""
    outcomes = run_history.read_history(history_path)
    stored = run_history.stored_bookings(conn, run_id)
    verdict = run_history.check_history(
        outcomes, stored, ledger_mismatches=verification.ledger_mismatches, faults=faults
    )
    verification.acknowledged_lost = verdict.acknowledged_lost
    verification.cancellations_lost = verdict.cancellations_lost
    # The report shows the two "lost" figures as checks of their own; the ledger has its own too.
    shown = {"every acknowledged booking is stored", "every acknowledged cancellation is cancelled"}
    shown.add("slot ledger = recount from bookings")
    verification.history_checks = [c for c in verdict.checks if c["check"] not in shown]
    for fault, record in zip(verdict.faults, faults, strict=True):
        if record.get("error"):
            verification.history_checks.append(
                {"check": f"{fault['kind']} was injected and healed", "passed": False, "detail": record["error"]}
            )
    if not outcomes:
        verification.history_checks.append(
            {"check": "the diners recorded their history", "passed": False, "detail": f"{history_path} is empty"}
        )
    return verdict.faults


def verify_by_availability(api: Api, plan: Plan, created_covers: int) -> reports.Verification:
    """No database: every slot's bookedCovers <= maxCovers, as the API reports them now."""
    slots: list[SlotFinding] = []
    covers_delta = 0
    for (rid, date), before_slots in plan.days.items():
        before = {s["time"]: s["bookedCovers"] for s in before_slots}
        for s in api.availability(rid, date):
            covers_delta += s["bookedCovers"] - before.get(s["time"], 0)
            slots.append(
                SlotFinding(
                    restaurantId=rid,
                    date=date.isoformat(),
                    time=s["time"],
                    maxCovers=s["maxCovers"],
                    confirmedCovers=s["bookedCovers"],
                    bookedBefore=before.get(s["time"]),
                    byRun=None,
                )
            )
    over = [s for s in slots if (limit := s["maxCovers"]) is not None and s["confirmedCovers"] > limit]
    warnings = [
        "no database access: stored bookings, duplicate keys and events were not checked "
        "(availability reports the slot_usage ledger)"
    ]
    if covers_delta != created_covers:
        warnings.append(
            f"covers booked at the target grew by {covers_delta}, the run's 201s hold {created_covers} "
            "(other traffic or cancellations can explain a difference)"
        )
    return reports.Verification(mode="availability", slots=slots, over_capacity=over, warnings=warnings)


# --------------------------------------------------------------------------- the whole run


@dataclass
class LoadResult:
    report: LoadReport
    json_path: Path
    html_path: Path

    @property
    def passed(self) -> bool:
        return self.report.passed


def run_load(
    options: LoadOptions,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO = sys.stdout,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> LoadResult:
    base_env = os.environ if env is None else env
    started_at = now()
    run_id = options.run_id or new_run_id(started_at)
    api = Api(options.base_url, options.service_key)
    assert options.artillery is not None
    plan = make_plan(api, options, run_id)
    stem = options.stem or reports.report_stem(started_at)
    # Artillery's raw output and log go one level down, so that `reports/load-tests/*.json` are
    # the reports and nothing else.
    raw_dir = options.report_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"load test {run_id}: {options.scenario.name} against {options.base_url}, "
        f"{plural(len(plan.restaurant_ids), 'restaurant')}, {plan.dates[0]} + {len(plan.dates) - 1} days, "
        f"hot slots {plan.hot[0]['date']} {', '.join(h['time'] for h in plan.hot)}",
        file=out,
    )
    print(
        f"  verification: {'database' if options.database_url else 'availability endpoint (no database access)'}",
        file=out,
        flush=True,
    )
    history_path = raw_dir / f"{stem}.history.jsonl"
    history_path.unlink(missing_ok=True)
    injector = None
    if options.faults:
        injector = fault_injection.Injector(
            kinds=options.faults,
            offsets=fault_injection.schedule(options.faults, fault_injection.scenario_phases(options.scenario)),
            database_url=options.database_url,
            base_url=options.base_url,
            out=out,
        )
        injector.prepare()
        print(f"  faults: {injector.describe()} (from the first phase's start)", file=out, flush=True)
    cleaned = False
    try:
        with tempfile.TemporaryDirectory(prefix="capctl-load-") as tmp:
            plan_path = Path(tmp) / "plan.json"
            plan_path.write_text(plan.file().dumps())
            load_started = threading.Event()
            if injector is not None:
                injector.start(load_started)
            try:
                run = run_artillery(
                    options.artillery,
                    options.scenario,
                    artillery_env(options, base_env, plan_path, run_id, history_path),
                    raw_dir / f"{stem}.artillery.json",
                    raw_dir / f"{stem}.log",
                    out,
                    overrides=FAULT_ENSURE_OVERRIDE if injector is not None else None,
                    load_started=load_started,
                )
            finally:
                if injector is not None:
                    injector.stop()
        aggregate = run.output["aggregate"] if run.output else {}
        faults: list[dict[str, Any]] = []
        if options.database_url:
            from capctl.database import connection

            with connection(options.database_url) as conn:
                verification = verify_in_database(conn, plan, started_at - dt.timedelta(minutes=1))
                faults = verify_history(
                    conn, verification, run_id, history_path, injector.records if injector is not None else []
                )
        else:
            verification = verify_by_availability(api, plan, reports.counter(aggregate, "bookings.created_covers"))
        finished_at = now()
        report = reports.make_report(
            run_id=run_id,
            started_at=started_at,
            finished_at=finished_at,
            base_url=options.base_url,
            restaurant_ids=plan.restaurant_ids,
            dates=[d.isoformat() for d in plan.dates],
            scenario=_display_path(options.scenario),
            artillery_output=run.output,
            artillery_exit_code=run.exit_code,
            ensure_checks=run.checks,
            verification=verification,
            hot_slots=plan.hot,
            expect_rate_limit=options.probe_seconds > 0,
            faults=faults,
            restaurant_names=options.restaurant_names,
        )
        json_path, html_path = reports.write_report(report, options.report_dir, stem)
        print("", file=out)
        print(reports.render_table(report), file=out)  # its fault lines included
        print(f"\n  report     {json_path}\n  html       {html_path}\n  history    {history_path}", file=out)
        if not options.keep:
            report.cleanup = _cleanup(options, run_id, out)
            cleaned = True
            json_path.write_text(report.dumps())
        return LoadResult(report, json_path, html_path)
    finally:
        if not cleaned and not options.keep and options.database_url:
            # Interrupted or failed before the report: the synthetic rows must not stay behind.
            with contextlib.suppress(Exception):
                _cleanup(options, run_id, out)


def _cleanup(options: LoadOptions, run_id: str, out: TextIO) -> CleanupResult | None:
    if not options.database_url:
        print(
            f"  cleanup    skipped (no database access): remove the run's bookings with "
            f"`DATABASE_URL=… capctl cleanup --source load-test --run-id {run_id}`",
            file=out,
        )
        return None
    from capctl.cleanup import remove_synthetic
    from capctl.database import connection

    with connection(options.database_url) as conn:
        result = remove_synthetic(conn, source=LOAD_TEST_SOURCE, run_id=run_id)
    print(f"  cleanup    {result.describe()}", file=out)
    return result


def _display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO_ROOT))
    return str(path)


def run(args: argparse.Namespace, command: str) -> int:
    options = options_from(args, os.environ)
    result = run_load(options)
    return 0 if result.passed else 1
