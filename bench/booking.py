"""Booking throughput: the five contenders side by side on the same slots, alternating, rounds.

raw_sql     pgbench, the bare conditional write (upsert the slot's usage, insert the booking)
engine_sql  pgbench, the statements one real booking sends (read + guarded write)
engine      BookingService.book() in client processes
handler     the Lambda handler in-process: API Gateway event -> handler -> database
http        wrk -> `capctl serve` (local API Gateway, one process per instance) -> handler
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench import harness, pgbench
from bench import http as http_load
from bench.harness import API_KEY, TENANT, MakeWorker, Run, Slot, Worker

CONTENDERS = ("raw_sql", "engine_sql", "engine", "handler", "http")

HANDLER_ENV = {
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_METRICS_NAMESPACE": "Bench",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_SERVICE_NAME": "capacity-engine",
    "ENVIRONMENT": "bench",
}


def engine_clients(url: str, slots: Sequence[Slot], clients: int, run_id: str) -> MakeWorker:
    from capacity.booking import BookingService, Caller
    from capacity.db import Database
    from capacity.models import BookingRequest
    from capacity.settings import BookingSettings

    settings = BookingSettings.from_env({"DATABASE_URL": url})
    requests = [BookingRequest.model_validate(pgbench.booking_body(s)) for s in slots]

    def make(i: int) -> Worker:
        service = BookingService(Database(settings), settings)
        service.db.connection()

        def book(n: int) -> bool:
            request = requests[(i + clients * n) % len(requests)]
            caller = Caller(tenant=TENANT, idempotency_key=f"e-{run_id}-{i}-{n}")
            return service.book(request, caller).status == 201

        return book

    return make


def handler_clients(url: str, slots: Sequence[Slot], clients: int, run_id: str) -> MakeWorker:
    from capctl.apigw import LambdaContext, rest_event
    from capctl.handlers import load_handler

    os.environ.update({**HANDLER_ENV, "DATABASE_URL": url})
    bodies = [json.dumps(pgbench.booking_body(s)) for s in slots]

    def make(i: int) -> Worker:
        module = load_handler("create_booking", fresh=True, instance=f"bench{i}")
        context = LambdaContext(function_name="bench")

        def book(n: int) -> bool:
            event = rest_event(
                "POST",
                "/bookings",
                body=bodies[(i + clients * n) % len(bodies)],
                api_key=API_KEY,
                api_key_id=TENANT,
                headers={"Content-Type": "application/json", "Idempotency-Key": f"h-{run_id}-{i}-{n}"},
            )
            return bool(module.lambda_handler(event, context)["statusCode"] == 201)

        return book

    return make


@contextlib.contextmanager
def local_api(url: str, instances: int) -> Iterator[Any]:
    from capctl.serve import LocalApi

    api = LocalApi(
        database_url=url,
        instances=instances,
        api_keys=[API_KEY],
        function_logs=False,
        env=HANDLER_ENV,
        startup_timeout_s=600.0,
    )
    with api:
        yield api


def drain(api: Any, limit_s: float = 180.0) -> None:
    """Wait until the gateway has answered every request it queued: requests that wrk gave up on
    at the end of its run still reach an instance and book (the gateway shields them)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        health = api.health()
        if not health["queued"] and not any(i["busy"] for i in health["instances"]):
            return
        time.sleep(0.2)
    raise RuntimeError("capctl serve did not drain its queue")


def benchmark(
    admin_url: str,
    *,
    clients: int,
    slots: Sequence[Slot],
    restaurants: int,
    rounds: int,
    seconds: float,
    http_instances: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every contender ``rounds`` times, alternating, each on a truncated database; medians."""
    url = harness.create_database(admin_url, harness.seed(restaurants))
    runs: dict[str, list[Run]] = {name: [] for name in CONTENDERS}
    checks: dict[str, list[dict[str, int]]] = {name: [] for name in CONTENDERS}
    skipped: dict[str, str] = {}
    try:
        raw_scripts = pgbench.raw_scripts(slots)
        harness.reset(url)
        engine_scripts = pgbench.engine_scripts(url, slots)
        api_cm: Any = local_api(url, http_instances) if http_load.available() else contextlib.nullcontext(None)
        if not http_load.available():
            skipped["http"] = "wrk is not installed"
        with api_cm as api:
            for r in range(rounds):
                for name in CONTENDERS:
                    if name in skipped:
                        continue
                    harness.reset(url)
                    run_id = uuid.uuid4().hex[:8]
                    if name == "raw_sql":
                        run = pgbench.run(url, raw_scripts, clients, seconds)
                    elif name == "engine_sql":
                        run = pgbench.run(url, engine_scripts, clients, seconds)
                    elif name == "engine":
                        run = harness.run_clients(clients, seconds, engine_clients(url, slots, clients, run_id))
                    elif name == "handler":
                        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                            run = harness.run_clients(clients, seconds, handler_clients(url, slots, clients, run_id))
                    else:
                        run = http_load.run(api.base_url, slots, clients, seconds, prefix=run_id)
                        drain(api)
                    runs[name].append(run)
                    checks[name].append(harness.correctness(url))
                    log(f"    round {r + 1} {name:<10} {run.per_second:>8.1f} bookings/s")
    finally:
        harness.drop_database(admin_url, url)
    contenders: dict[str, Any] = {}
    base = None
    for name in CONTENDERS:
        if name in skipped:
            contenders[name] = {"skipped": skipped[name]}
            continue
        figures = harness.summarise(runs[name])
        if name == "raw_sql":
            base = figures["bookings_per_s"]
        if base and figures["bookings_per_s"] is not None:
            figures["ratio_to_raw"] = round(figures["bookings_per_s"] / base, 3)
        figures["over_capacity_slots"] = max(c["over_capacity_slots"] for c in checks[name])
        figures["ledger_mismatches"] = max(c["ledger_mismatches"] for c in checks[name])
        figures["retries_exhausted"] = sum(c["retries_exhausted"] for c in checks[name])
        contenders[name] = figures
    engine_sql = contenders["engine_sql"].get("bookings_per_s")
    if engine_sql and contenders["engine"].get("bookings_per_s") is not None:
        contenders["engine"]["ratio_to_engine_sql"] = round(contenders["engine"]["bookings_per_s"] / engine_sql, 3)
    return {
        "clients": clients,
        "slots": len(slots),
        "restaurants": restaurants,
        "rounds": rounds,
        "seconds_per_run": seconds,
        "http_instances": http_instances,
        "contenders": contenders,
        "over_capacity_slots": sum(c.get("over_capacity_slots", 0) for c in contenders.values()),
        "ledger_mismatches": sum(c.get("ledger_mismatches", 0) for c in contenders.values()),
        "retries_exhausted": sum(c.get("retries_exhausted", 0) for c in contenders.values()),
    }
