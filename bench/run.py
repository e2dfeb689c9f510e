"""`make bench`: the whole product's figures, contenders side by side in one run.

Every benchmark runs its contenders on the same PostgreSQL in the same run, alternating, over
several rounds, and reports medians and ratios: compare ratios of one run, never a figure
across runs (the machine is shared). Nothing asserts a time; the targets are reported, met or
not, in the table and in ``reports/bench/<UTC timestamp>.json``. See bench/README.md.

    make bench                                  # everything, embedded PostgreSQL (< 15 min)
    BENCH_ROUNDS=5 BENCH_SECONDS=5 make bench   # steadier figures, longer
    BENCH_ONLY=hot_slot_50,cold_start make bench
    DATABASE_URL=postgresql://… make bench      # a real server (needs CREATE DATABASE, max_connections >= 260)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import booking, coldstart, harness, overhead, pgbench, scheduled

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
# `capctl serve` instances for the http contender; more than 50 processes take minutes to start
# on two cores. At 200 clients the gateway queues requests for them, as a reserved concurrency would.
HTTP_INSTANCES = int(os.environ.get("BENCH_HTTP_INSTANCES", "50"))
ROLLUP_SIZES = [int(x) for x in os.environ.get("BENCH_ROLLUP_EVENTS", "10000,100000,1000000").split(",")]
ALERT_SIZES = [int(x) for x in os.environ.get("BENCH_ALERT_RESTAURANTS", "100,1000,10000").split(",")]

BENCHMARKS = ("hot_slot_50", "hot_slot_200", "many_slots", "latency_overhead", "cold_start", "scheduled")


def log(line: str) -> None:
    print(line, flush=True)


def run_benchmarks(admin_url: str, only: set[str]) -> dict[str, Any]:
    hot = [harness.Slot(harness.restaurant_id(0), harness.HOT_TIME)]
    spread = harness.spread_slots(10, 10)
    plan: dict[str, Callable[[], dict[str, Any]]] = {
        "hot_slot_50": lambda: booking.benchmark(
            admin_url, clients=50, slots=hot, restaurants=1, rounds=ROUNDS, seconds=SECONDS,
            http_instances=min(50, HTTP_INSTANCES), log=log,
        ),
        "hot_slot_200": lambda: booking.benchmark(
            admin_url, clients=200, slots=hot, restaurants=1, rounds=ROUNDS, seconds=SECONDS,
            http_instances=HTTP_INSTANCES, log=log,
        ),
        "many_slots": lambda: booking.benchmark(
            admin_url, clients=50, slots=spread, restaurants=10, rounds=ROUNDS, seconds=SECONDS,
            http_instances=min(50, HTTP_INSTANCES), log=log,
        ),
        "latency_overhead": lambda: overhead.benchmark(admin_url, 300),
        "cold_start": lambda: coldstart.benchmark(7),
        "scheduled": lambda: {
            "rollup": scheduled.rollup(admin_url, ROLLUP_SIZES, 2, log),
            "alert_check": scheduled.alert_check(admin_url, ALERT_SIZES, 1, log),
        },
    }  # fmt: skip
    results: dict[str, Any] = {}
    for name, fn in plan.items():
        if only and name not in only:
            continue
        log(f"{name} …")
        began = time.perf_counter()
        results[name] = fn()
        results[name]["took_s"] = round(time.perf_counter() - began, 1)
    return results


def _contender(results: dict[str, Any], bench: str, name: str) -> dict[str, Any]:
    figures: dict[str, Any] = results.get(bench, {}).get("contenders", {}).get(name, {})
    return figures


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 11, in the benchmark's own figures; ``met`` is None when not measured."""
    out: list[dict[str, Any]] = []

    def target(name: str, wanted: str, value: Any, met: bool | None) -> None:
        out.append({"name": name, "target": wanted, "value": value, "met": met})

    def at_least(name: str, value: float | None, bound: float) -> None:
        target(name, f">= {bound}", value, None if value is None else value >= bound)

    hot = "hot_slot_50"
    at_least("engine / raw_sql at 50 clients", _contender(results, hot, "engine").get("ratio_to_raw"), 0.6)
    at_least("engine / engine_sql at 50 clients", _contender(results, hot, "engine").get("ratio_to_engine_sql"), 0.9)
    at_least("handler / raw_sql at 50 clients", _contender(results, hot, "handler").get("ratio_to_raw"), 0.5)
    at_least("http / raw_sql at 50 clients", _contender(results, hot, "http").get("ratio_to_raw"), 0.4)
    h200 = results.get("hot_slot_200")
    for field in ("over_capacity_slots", "retries_exhausted"):
        value = h200.get(field) if h200 else None
        target(f"{field} at 200 clients", "== 0", value, None if value is None else value == 0)
    cold = results.get("cold_start", {}).get("create_booking")
    ratio = cold.get("ratio") if cold else None
    target("create_booking cold-start ratio to powertools+psycopg+pydantic", "<= 1.3", ratio,
           None if ratio is None else ratio <= 1.3)  # fmt: skip
    boto = cold.get("boto3_imported") if cold else None
    target("boto3 not imported on the booking path", "false", boto, None if boto is None else not boto)
    sched = results.get("scheduled", {})
    roll = sched.get("rollup")
    if roll:
        done = [r for r in roll["sizes"] if r.get("ratio") is not None]
        largest = done[-1] if done else None
        value = largest["ratio"] if largest else None
        target(f"roll-up / bare GROUP BY at {largest['events'] if largest else '?'} events", "<= 2", value,
               None if value is None else value <= 2)  # fmt: skip
        target("roll-up linear in events", "linear", roll.get("linear"), roll.get("linear"))
    alerts = sched.get("alert_check")
    if alerts:
        target("alert check linear in restaurants", "linear", alerts.get("linear"), alerts.get("linear"))
        ten_k = next((r for r in alerts["sizes"] if r["restaurants"] == 10_000), None)
        half = alerts["timeout_s"] / 2
        value = ten_k.get("function_s") if ten_k else None
        met = None if ten_k is None else (value is not None and value <= half)
        target("alert check, 10,000 restaurants (s)", f"<= {half:g} (half the timeout)",
               "timed out" if ten_k and value is None else value, met)  # fmt: skip
    return out


def table(results: dict[str, Any], goals: list[dict[str, Any]]) -> str:
    lines = []
    for bench in ("hot_slot_50", "hot_slot_200", "many_slots"):
        if bench not in results:
            continue
        r = results[bench]
        lines.append(
            f"\n{bench}: {r['clients']} clients, {r['slots']} slot(s), {r['restaurants']} restaurant(s), "
            f"{r['rounds']} rounds x {r['seconds_per_run']:g} s"
        )
        lines.append(
            f"  {'contender':<11}{'bookings/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}  over-cap  exhausted"
        )
        for name, c in r["contenders"].items():
            if "skipped" in c:
                lines.append(f"  {name:<11} skipped: {c['skipped']}")
                continue
            lines.append(
                f"  {name:<11}{c['bookings_per_s'] or 0:>11.1f}{c['p50_ms'] or 0:>9.2f}{c['p99_ms'] or 0:>9.2f}"
                f"{c.get('ratio_to_raw', 0):>7.2f}  {c['over_capacity_slots']:>8}  {c['retries_exhausted']:>9}"
            )
    if "latency_overhead" in results:
        o = results["latency_overhead"]
        lines.append(f"\nlatency overhead per booking (1 client, {o['bookings']} bookings)")
        for name in ("raw_sql", "engine", "handler"):
            row = o[name]
            extra = (
                f"  (+{row['cpu_us_beyond_bare']:.0f} µs CPU, +{row['round_trips_beyond_bare']:g} round trips)"
                if "cpu_us_beyond_bare" in row
                else ""
            )
            lines.append(
                f"  {name:<9} CPU {row['cpu_us']:>7.0f} µs  wall {row['wall_us']:>7.0f} µs  "
                f"round trips {row['round_trips']:g}{extra}"
            )
    if "cold_start" in results:
        lines.append("\ncold start (import in a fresh interpreter, median)")
        for name, c in results["cold_start"].items():
            if not isinstance(c, dict):
                continue
            model = c.get("ratio_to_model_baseline")
            lines.append(
                f"  {name:<15} {c['import_app_ms']:>6.0f} ms vs {c['import_baseline_ms']:>5.0f} ms"
                f"  ratio {c['ratio']:.2f} (from source {c['ratio_from_source']:.2f}"
                f"{'' if model is None else f'; to one EmailStr model {model:.2f}'})"
                f"  boto3 {'yes' if c['boto3_imported'] else 'no'}"
                f"  botocore client {'yes' if c['botocore_client_imported'] else 'no'}"
            )
    sched = results.get("scheduled", {})
    for key, unit in (("rollup", "events"), ("alert_check", "restaurants")):
        if key not in sched:
            continue
        s = sched[key]
        lines.append(f"\n{key} (timeout {s['timeout_s']} s)")
        for row in s["sizes"]:
            took = "timed out" if row.get("timed_out") else f"{row['function_s']:.2f} s"
            ratio = f"  ratio {row['ratio']:.1f}" if row.get("ratio") is not None else ""
            lines.append(f"  {row[unit]:>9,} {unit:<12} {took:>10}  GROUP BY {row['group_by_s']:.2f} s{ratio}")
        lines.append(
            f"  linear: {s['linear']}; largest within half the timeout: {s['largest_size_within_half_timeout']:,}"
        )
    lines.append("\ntargets (ratios of this run; the machine may be busy)")
    for g in goals:
        mark = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        lines.append(f"  {mark:<12} {g['name']}: {g['value']} (target {g['target']})")
    return "\n".join(lines)


def main() -> int:
    only = {x for x in os.environ.get("BENCH_ONLY", "").split(",") if x}
    unknown = only - set(BENCHMARKS)
    if unknown:
        print(f"bench: error: unknown BENCH_ONLY entries {sorted(unknown)}; choose from {BENCHMARKS}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    log(f"make bench: rounds {ROUNDS}, {SECONDS:g} s per run; the machine may be busy: compare ratios only")
    with harness.server() as admin_url:
        results = run_benchmarks(admin_url, only)
    goals = targets(results)
    report = {
        "createdAt": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "rounds": ROUNDS,
            "seconds_per_run": SECONDS,
            "http_instances": HTTP_INSTANCES,
            "pgbench_mode": pgbench.MODE,
        },
        "benchmarks": results,
        "targets": goals,
    }
    out_dir = Path("reports/bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results, goals))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
