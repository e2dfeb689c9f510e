"""`capctl demo`: the whole main job, end to end, on this machine.

1. the database: a fresh embedded PostgreSQL of its own in a temporary data directory, migrated
   and seeded with load/seed.json; never DATABASE_URL nor the `capctl db up` server, whose data
   it did not create (``--database-url URL --i-know-this-is-not-production`` overrides that);
2. stand-ins for the outside world on 127.0.0.1: a moto server (an SNS topic with an SQS queue
   subscribed, so published alerts can be read back) and a Slack-compatible webhook sink;
3. the API: `capctl serve` with 4 Lambda-like instances, a generated API key and a usage plan;
4. the Artillery load test (load/capacity-load.yml, 50+ concurrent diners) with its verification
   and report, with faults injected during the contention phase (by default db-crash,
   instance-kill and db-stall: the demo's own PostgreSQL is killed and restarted, then stalled,
   and a handler instance is killed), then a dashboard snapshot beside the report;
5. the scheduled functions once: `capctl rollup`, then `capctl check-alerts` delivering to the
   topic and the webhook, with load-test traffic included (ALERTS_INCLUDE_LOAD_TEST=true);
6. what was delivered, read back from the queue and the sink; then cleanup of the synthetic
   bookings and every process it started is stopped (and its database removed), also on failure
   or Ctrl-C. The logs of the processes it started stay beside the report
   (``<report dir>/<stem>-logs/``).

Exit code: the load test's (0 passed, 1 failed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from capacity.figures import COUNTERS_SQL
from capacity.outcomes import LOAD_TEST_SOURCE
from capctl import faults as fault_injection
from capctl import load as load_test
from capctl import report as reports
from capctl.errors import UserError
from capctl.procs import postmaster_pid
from capctl.serve import LocalApi
from capctl.sns_inbox import SnsInbox
from capctl.text import plural
from capctl.webhook_sink import WebhookSink

SEED_FILE = Path("load/seed.json")
REGION = "us-east-1"
TOPIC_NAME = "capacity-alerts-demo"
QUEUE_NAME = "capacity-alerts-demo-inbox"
INSTANCES = 4
# The usage plan of the demo key: well above the ~120 requests/s the scenario peaks at.
RATE, BURST = 400, 800
START_TIMEOUT_S = 90.0
# Alert settings of the demo, unless the environment sets them. A lost race needs two requests
# between one's read and its one-statement write, so even 10x demand on a few slots loses well
# under 1 % of requests on this machine: the production threshold (5 %) would show nothing. The
# short cooldown lets a second demo within the hour deliver again (as a reminder).
DEMO_ALERT_SETTINGS = {
    "CONFLICT_RATE_THRESHOLD": "0.0005",
    "CONFLICT_MIN_REQUESTS": "20",
    "ALERT_COOLDOWN_MINUTES": "1",
}
# The run's figures as capacity.figures counts them (the roll-up, the alert and the report agree).
_RUN_CONFLICTS = f"""
SELECT e.restaurant_id::text AS restaurant_id, {COUNTERS_SQL}
  FROM observability_events e
 WHERE e.metadata ->> 'runId' = %(run_id)s
 GROUP BY 1 ORDER BY 1
"""  # noqa: S608 (fragments of capacity.figures; values are bound parameters)
DEFAULT_FAULTS = "db-crash,instance-kill,db-stall"
# Bookings the demo did not create: their run_id is not this run's (live bookings have none).
_FOREIGN_BOOKINGS = "SELECT count(*)::int AS n FROM bookings WHERE run_id IS DISTINCT FROM %(run_id)s"
CONFIRM_FLAG = "--i-know-this-is-not-production"


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = (
        "The whole main job on a fresh embedded PostgreSQL of its own: local API, Artillery load test with "
        "faults, verification, report, roll-up, alert check and delivery; everything it starts is stopped."
    )
    parser.add_argument("--smoke", action="store_true", help="the reduced scenario (~15 s) instead of the full one")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic bookings afterwards")
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=load_test.DEFAULT_REPORT_DIR,
        help=f"where the report, its logs and the dashboard snapshot go (default: {load_test.DEFAULT_REPORT_DIR})",
    )
    parser.add_argument(
        "--faults",
        metavar="LIST",
        nargs="?",
        const=DEFAULT_FAULTS,
        default=DEFAULT_FAULTS,
        help=f"faults injected during the load test (default, and --faults alone: {DEFAULT_FAULTS}); 'none' for none",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help=f"run on this existing database instead of a fresh one (needs {CONFIRM_FLAG}; the alert check "
        "is skipped when it holds bookings the demo did not create)",
    )
    parser.add_argument(
        CONFIRM_FLAG,
        dest="not_production",
        action="store_true",
        help="confirm that --database-url is a disposable database: the demo writes to it and kills its server "
        "with --faults db-crash/db-stall",
    )


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """The moto server: a child in its own process group, stopped (SIGTERM, then SIGKILL) with
    everything it forked. (`capctl serve` is run by `capctl.serve.LocalApi`, as the tests run it.)"""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(  # noqa: S603 (fixed command lines, no shell)
            list(command),
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=dict(env),
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def wait_http(url: str, timeout_s: float, ok: Sequence[int] = (200,)) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own 127.0.0.1 URL)
                if response.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UserError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


# --------------------------------------------------------------------------- AWS stand-in


def moto_server_binary() -> str:
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise UserError("moto_server not found: install the dev requirements (`make setup`)")
    return found


# --------------------------------------------------------------------------- steps


def _step(out: TextIO, text: str) -> None:
    print(f"\n== {text}", file=out, flush=True)


def demo_restaurants() -> dict[str, str]:
    """The demo seed's restaurants, id to name (read, and checked, as `capctl seed` reads it)."""
    from capctl.seed import load_seed

    return {str(r.id): r.name for r in load_seed(load_test.resolve_path(SEED_FILE)).restaurants}


def _migrate_and_seed(url: str) -> tuple[list[str], int]:
    from capctl import database
    from capctl.migrate import migrate
    from capctl.seed import apply_seed, load_seed

    with database.connection(url) as conn:
        applied = migrate(conn)
        counts = apply_seed(conn, load_seed(load_test.resolve_path(SEED_FILE)))
    return applied, counts.restaurants


def fresh_database(stack: contextlib.ExitStack, out: TextIO) -> str:
    """A new embedded PostgreSQL in a temporary data directory, stopped and removed on exit."""
    from capctl.database import embedded_server

    home = Path(tempfile.mkdtemp(prefix="capctl-demo-pg-"))
    stack.callback(shutil.rmtree, home, True)
    server = embedded_server(home / "pgdata", cleanup_mode=None)
    stack.callback(_stop_server_quietly, server, home / "pgdata", out)
    url: str = server.get_uri()
    applied, restaurants = _migrate_and_seed(url)
    print(
        f"   fresh embedded PostgreSQL in {home} ({'applied ' + ', '.join(applied) if applied else 'migrated'}); "
        f"seeded {restaurants} restaurants from {SEED_FILE}",
        file=out,
    )
    if os.environ.get("DATABASE_URL"):
        print("   (DATABASE_URL is set and left alone: the demo never touches data it did not create)", file=out)
    return url


def given_database(url: str, out: TextIO) -> str:
    """--database-url with its confirmation: migrated and seeded like a fresh one."""
    applied, restaurants = _migrate_and_seed(url)
    print(
        f"   --database-url ({'applied ' + ', '.join(applied) if applied else 'schema up to date'}); "
        f"seeded {restaurants} restaurants from {SEED_FILE}",
        file=out,
    )
    return url


def _stop_server_quietly(server: Any, pgdata: Path, out: TextIO) -> None:
    with contextlib.suppress(Exception):
        server.cleanup()
    # A db-crash fault starts the postmaster again by itself, out of the server object's sight:
    # whatever still runs on the data directory is stopped too (fast shutdown), and waited for.
    pid = postmaster_pid(pgdata)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                os.kill(pid, 0)  # raises once it is gone
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
    print("stopped the embedded PostgreSQL this demo started", file=out)


def foreign_bookings(database_url: str, run_id: str) -> int:
    """Bookings in the database that this run did not create."""
    from capctl.database import connection

    with connection(database_url) as conn:
        row = conn.execute(_FOREIGN_BOOKINGS, {"run_id": run_id}).fetchone()
    return int(row["n"]) if row else 0


def run_capctl(args: Sequence[str], env: Mapping[str, str], timeout_s: float = 300) -> dict[str, Any]:
    """`capctl …` as a subprocess (its own settings from ``env``); its --json output, parsed."""
    result = subprocess.run(  # noqa: S603 (fixed command lines, no shell)
        [sys.executable, "-m", "capctl.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise UserError(f"capctl {args[0]} failed: {message}")
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def print_run_conflicts(database_url: str, run_id: str, names: Mapping[str, str], out: TextIO) -> None:
    """Per restaurant, what the conflict-rate alert measures, for this run's requests alone."""
    from capacity import figures
    from capctl.database import connection

    with connection(database_url) as conn:
        rows = conn.execute(_RUN_CONFLICTS, {"run_id": run_id}).fetchall()
    for r in rows:
        rate = figures.conflict_rate(r["conflicts"], r["requests"])
        print(
            f"   this run at {names.get(r['restaurant_id'], r['restaurant_id'])}: {r['requests']} requests, "
            f"{r['conflicts']} met a conflict ({r['overbook_prevented']} lost races, {r['retried_failures']} "
            f"retried failures, {r['retry_exhausted']} out of retries): conflict rate "
            f"{'-' if rate is None else f'{rate:.2%}'}",
            file=out,
        )


def _figures_line(alert: str, figures: Mapping[str, Any]) -> str:
    if alert == "conflict_rate" and {"conflicts", "requests", "conflictRate", "threshold"} <= figures.keys():
        return (
            f"{figures['conflicts']} of {figures['requests']} requests in the last hour met a conflict "
            f"({float(figures['conflictRate']):.2%} > {float(figures['threshold']):.2%})"
        )
    return json.dumps(dict(figures), default=str)


def explain_alerts(summary: Mapping[str, Any], names: Mapping[str, str], out: TextIO) -> None:
    transitions = summary.get("transitions") or []
    if not transitions:
        print(
            "   no alert opened: no slot is over capacity (reconciled from bookings) and no restaurant's "
            "conflict rate (lost races + retried requests / requests, last hour) or retry exhaustion "
            "crossed its threshold",
            file=out,
        )
    for t in transitions:
        name = t.get("restaurantName") or names.get(t["restaurantId"], t["restaurantId"])
        incident = f" {t['incident']}" if t.get("incident") else ""
        print(f"   {t['action'].upper():<8} {t['alert']}{incident} ({t['severity']}) at {name}", file=out)
        if t.get("figures"):
            print(f"            {_figures_line(t['alert'], t['figures'])}", file=out)
    actions = {(t["alert"], t["action"]) for t in transitions}
    if ("conflict_rate", "open") in actions or ("conflict_rate", "remind") in actions:
        print(
            "   why the conflict-rate alert fires: the contention phase sends every diner at the same few slots "
            "at the same instant; a request whose own read saw room but lost the race to a concurrent booking "
            "is refused by the guarded write (booking.overbook_prevented) - a conflict. Nothing was overbooked: "
            "the guard held. ALERTS_INCLUDE_LOAD_TEST=true lets this synthetic traffic count (live alerting "
            "leaves it out), and the demo's threshold is low because lost races stay rare on this path.",
            file=out,
        )
    if any(t["alert"] == "overbooking" and t["action"] in ("open", "remind") for t in transitions):
        print("   OVERBOOKING: a slot's confirmed covers exceed its capacity - investigate at once", file=out)
    if any(t["action"] == "update" for t in transitions):
        print("   (an incident still open inside its cooldown is updated, not notified again)", file=out)


def print_delivered(inbox: SnsInbox, sink: WebhookSink, out: TextIO) -> None:
    published = inbox.messages()
    posted = sink.messages()
    print(f"   SNS topic {inbox.topic_arn} -> SQS queue: {plural(len(published), 'message')}", file=out)
    for m in published:
        print(f"     - {m['subject'] or (m['message'] or '').strip()[:120]}", file=out)
    print(f"   webhook {sink.url}: {plural(len(posted), 'message')}", file=out)
    for body in posted:
        text = str(body.get("text", "")).strip().splitlines() if isinstance(body, dict) else []
        print(f"     - {text[0] if text else json.dumps(body)[:120]}", file=out)


# --------------------------------------------------------------------------- the demo


def _options(args: argparse.Namespace) -> list[str]:
    """The faults to inject; refuses an existing database without its confirmation (exit 2)."""
    if args.database_url is not None and not args.not_production:
        raise UserError(
            f"--database-url points the demo at an existing database it would write to (and, with --faults, "
            f"kill): add {CONFIRM_FLAG} if it is a disposable one"
        )
    if args.not_production and args.database_url is None:
        raise UserError(f"{CONFIRM_FLAG} confirms --database-url, which is missing")
    raw = (args.faults or "").strip()
    return [] if raw.lower() in ("", "none") else fault_injection.parse_kinds(raw)


def run(args: argparse.Namespace, command: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    started = time.monotonic()
    faults = _options(args)
    artillery = load_test.find_artillery(os.environ)
    moto = moto_server_binary()
    started_at = dt.datetime.now(dt.UTC)
    run_id = load_test.new_run_id(started_at)
    stem = reports.report_stem(started_at)
    # The logs of everything the demo starts stay beside its report.
    logs = args.report_dir / f"{stem}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        _step(out, "1/6 database")
        database_url = given_database(args.database_url, out) if args.database_url else fresh_database(stack, out)
        base_env = dict(os.environ)
        base_env.update(
            {
                "DATABASE_URL": database_url,
                "ENVIRONMENT": "demo",
                "POWERTOOLS_TRACE_DISABLED": "1",
                "POWERTOOLS_METRICS_NAMESPACE": "CapacityEngineDemo",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            }
        )
        # Whatever happens next, the run's synthetic bookings do not stay behind (unless --keep);
        # the end of a run that got there removes them itself, and says what it removed.
        cleanup_pending = not args.keep

        def cleanup_unless_done() -> None:
            if cleanup_pending:
                _cleanup_quietly(database_url, run_id)

        stack.callback(cleanup_unless_done)

        _step(out, "2/6 AWS and Slack stand-ins on 127.0.0.1")
        moto_port = free_port()
        moto_process = Process(
            "moto_server", [moto, "-H", "127.0.0.1", "-p", str(moto_port)], base_env, logs / "moto.log"
        )
        stack.callback(moto_process.stop)
        endpoint = f"http://127.0.0.1:{moto_port}"
        wait_http(f"{endpoint}/moto-api/", START_TIMEOUT_S, ok=(200, 404))
        inbox = SnsInbox(endpoint, region=REGION, topic_name=TOPIC_NAME, queue_name=QUEUE_NAME, wait_seconds=1)
        sink = stack.enter_context(WebhookSink())
        print(f"   moto server {endpoint}: topic {inbox.topic_arn}, queue {QUEUE_NAME} subscribed", file=out)
        print(f"   webhook sink {sink.url}", file=out)

        _step(out, f"3/6 local API: capctl serve, {INSTANCES} instances, usage plan {RATE}/s burst {BURST}")
        api_key = "demo-" + secrets.token_hex(12)
        serve = LocalApi(
            instances=INSTANCES,
            api_keys=[api_key],
            rate=RATE,
            burst=BURST,
            env=base_env,
            log_path=logs / "serve.log",
            startup_timeout_s=START_TIMEOUT_S,
        )
        stack.callback(serve.stop)
        try:
            base_url = serve.start()
        except RuntimeError as exc:
            raise UserError(str(exc)) from None
        wait_http(f"{base_url}/__health", START_TIMEOUT_S)
        assert serve.log_path is not None
        print(f"   {base_url} (access log and the functions' logs: {serve.log_path.resolve()})", file=out)

        _step(out, "4/6 load test" + (f" with faults: {', '.join(faults)}" if faults else ""))
        names = demo_restaurants()
        options = load_test.LoadOptions(
            base_url=base_url,
            service_key=api_key,
            restaurant_ids=list(names),
            scenario=load_test.resolve_path(load_test.SMOKE_SCENARIO if args.smoke else load_test.DEFAULT_SCENARIO),
            report_dir=args.report_dir,
            run_id=run_id,
            keep=True,  # rollup and the alert check read the run's rows first; cleanup comes last
            database_url=database_url,
            artillery=artillery,
            faults=faults,
            restaurant_names=names,
            stem=stem,
        )
        result = load_test.run_load(options, env=base_env, out=out)

        _step(out, "5/6 scheduled functions: rollup, then the alert check (load-test traffic included)")
        alert_env = {**DEMO_ALERT_SETTINGS, **base_env}
        alert_env.update(
            {
                "AWS_ENDPOINT_URL_SNS": endpoint,
                "ALERT_TOPIC_ARN": inbox.topic_arn,
                "ALERT_WEBHOOK_URL": sink.url,
                "ALERTS_INCLUDE_LOAD_TEST": "true",
            }
        )
        print_run_conflicts(database_url, run_id, names, out)
        rollup = run_capctl(["rollup", "--json"], alert_env)
        print(f"   rollup: {_rollup_line(rollup)}", file=out)
        foreign = foreign_bookings(database_url, run_id)
        if foreign:
            # Lowered thresholds on somebody else's bookings would alert on their traffic.
            print(
                f"   check-alerts skipped: the database holds {foreign} bookings this demo did not create, and the "
                "demo's lowered alert thresholds are only for its own data",
                file=out,
            )
        else:
            threshold = float(alert_env["CONFLICT_RATE_THRESHOLD"])
            print(
                f"   alert settings: conflict rate > {threshold:.2%} with >= {alert_env['CONFLICT_MIN_REQUESTS']} "
                f"requests (production default 5.00%), cooldown {alert_env['ALERT_COOLDOWN_MINUTES']} min; "
                "load-test traffic included",
                file=out,
            )
            alerts = run_capctl(["check-alerts", "--json"], alert_env)
            print(
                f"   check-alerts: {alerts.get('restaurants', 0)} restaurants, {alerts.get('slotsChecked', 0)} "
                f"booked slots; opened {alerts.get('opened', 0)}, resolved {alerts.get('resolved', 0)}, "
                f"sent {alerts.get('sent', 0)}, delivery failures {alerts.get('deliveryFailures', 0)}",
                file=out,
            )
            explain_alerts(alerts, names, out)

        # After the alert check, so the snapshot shows the incidents it opened.
        snapshot = write_dashboard(database_url, args.report_dir / f"{stem}.dashboard.html", serve.log_path, out)

        _step(out, "6/6 delivered alerts")
        print_delivered(inbox, sink, out)

        print(f"\nreport:    {result.json_path}\nhtml:      {result.html_path}", file=out)
        print(f"dashboard: {snapshot}", file=out)
        print(f"logs:      {logs.resolve()}", file=out)
        if not args.keep:
            from capctl.cleanup import remove_synthetic
            from capctl.database import connection

            with connection(database_url) as conn:
                cleaned = remove_synthetic(conn, source=LOAD_TEST_SOURCE, run_id=run_id)
            cleanup_pending = False
            print(f"cleanup: {cleaned.describe()}", file=out)
        verdict = "PASSED" if result.passed else "FAILED"
        print(f"demo finished in {time.monotonic() - started:.0f} s: load test {verdict}", file=out, flush=True)
    return 0 if result.passed else 1


def write_dashboard(database_url: str, path: Path, serve_log: Path, out: TextIO) -> Path:
    """The dashboard as one HTML file beside the report (the run's synthetic traffic)."""
    from capctl.dashboard import write_snapshot

    written = write_snapshot(database_url, path, emf_logs=[serve_log], synthetic=True)
    print(f"   dashboard snapshot {written}", file=out)
    return written


def _rollup_line(rollup: Mapping[str, Any]) -> str:
    synthetic = rollup.get("synthetic") or {}
    live = rollup.get("live") or {}
    return (
        f"{rollup.get('windowStart', '?')} .. {rollup.get('windowEnd', '?')}; "
        f"synthetic rows {synthetic.get('rows', 0)}, live rows {live.get('rows', 0)}"
    )


def _cleanup_quietly(database_url: str, run_id: str) -> None:
    from capctl.cleanup import remove_synthetic
    from capctl.database import connection

    with contextlib.suppress(Exception), connection(database_url) as conn:
        remove_synthetic(conn, source=LOAD_TEST_SOURCE, run_id=run_id)
