"""The scheduled functions at scale, each against a bare SQL GROUP BY of the same rows.

    roll-up      10 k, 100 k, 1 M events in its window (100 restaurants)
    alert check  100, 1,000, 10,000 restaurants, each with a year of future bookings (one a day)

Each size is measured through the function's own handler (in process, as Lambda runs it),
alternating with the bare GROUP BY; growth per step tells whether it is linear, and the largest
size that fits in half the function's configured timeout is extrapolated from the largest run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench import harness

ROOT = Path(__file__).resolve().parents[1]
EVENT_RESTAURANTS = 100
DAYS_AHEAD = 365

_GENERATE_RESTAURANTS = """
INSERT INTO restaurants (id, name, timezone) SELECT md5('r' || r)::uuid, 'Bench ' || r, 'UTC'
  FROM generate_series(%(lo)s::int, %(hi)s::int) r
"""

_GENERATE_RULES = """
INSERT INTO weekly_rules (restaurant_id, weekday, start_time, end_time, max_covers)
SELECT md5('r' || r)::uuid, wd, '17:00', '22:00', 40
  FROM generate_series(%(lo)s::int, %(hi)s::int) r, generate_series(1, 7) wd;
"""

# one booking a day for a year, party of 2 at 19:00: a slot each, none over capacity
_GENERATE_BOOKINGS = """
INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source, tenant,
                      guest_name, guarded, accepted_max_covers)
SELECT gen_random_uuid(), md5('r' || r)::uuid, current_date + d, '19:00', 2, 'confirmed', 'web', 'bench',
       'Bench Guest', true, 40
  FROM generate_series(%(lo)s::int, %(hi)s::int) r, generate_series(1, %(days)s::int) d
"""

# events spread over the last ~2 hours (inside the roll-up's default 3-hour window)
_GENERATE_EVENTS = """
INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata)
SELECT CASE WHEN g %% 10 = 0 THEN 'booking.capacity_exceeded' WHEN g %% 25 = 0 THEN 'booking.conflict'
            ELSE 'booking.success' END,
       md5('r' || (g %% %(restaurants)s::int))::uuid,
       now() - make_interval(secs => (g %% 7000)),
       jsonb_build_object('restaurantId', md5('r' || (g %% %(restaurants)s::int))::uuid, 'date', current_date + 1,
                          'time', '19:00', 'attempts', 1, 'source', 'web', 'partySize', 2)
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""

_BARE_EVENTS = """
SELECT restaurant_id, date_trunc('hour', occurred_at, 'UTC') AS hour, event_type, count(*)
  FROM observability_events WHERE occurred_at >= now() - interval '3 hours' GROUP BY 1, 2, 3
"""

_BARE_SLOTS = """
SELECT restaurant_id, booking_date, booking_time, sum(party_size), count(*)
  FROM bookings WHERE status = 'confirmed' AND booking_date >= current_date - 1 GROUP BY 1, 2, 3
"""


def template_timeout(function: str) -> int:
    """The function's Timeout in template.yaml (its logical id's block)."""
    text = (ROOT / "template.yaml").read_text()
    block = text.split(f"  {function}:", 1)[1]
    match = re.search(r"^\s+Timeout:\s*(\d+)", block, re.MULTILINE)
    assert match, f"no Timeout for {function}"
    return int(match.group(1))


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _growth(all_sizes: Sequence[int], all_seconds: Sequence[float | None], timeout: int) -> dict[str, Any]:
    done = [(n, s) for n, s in zip(all_sizes, all_seconds, strict=True) if s is not None]
    sizes, seconds = [n for n, _ in done], [s for _, s in done]
    if not done:
        return {"steps": [], "linear": None, "timeout_s": timeout, "largest_size_within_half_timeout": 0}
    steps = [
        {"from": sizes[i - 1], "to": sizes[i], "time_ratio": round(seconds[i] / seconds[i - 1], 2)}
        for i in range(1, len(sizes))
    ]
    per_item = [s / n for s, n in zip(seconds, sizes, strict=True)]
    # small sizes carry fixed costs (imports are warm, but connection, rules, planning): judge
    # linearity on the step between the two largest sizes, where per-item cost dominates
    linear = per_item[-1] <= 1.5 * per_item[-2] if len(per_item) > 1 else None
    half = timeout / 2
    return {
        "steps": steps,
        "linear": linear,
        "linear_judged_on": sizes[-2:],
        "timeout_s": timeout,
        "largest_size_within_half_timeout": int(sizes[-1] * half / seconds[-1]) if seconds[-1] else None,
    }


def _handler(function: str, url: str) -> Any:
    from capctl.handlers import load_handler

    os.environ.update(
        {
            "DATABASE_URL": url,
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "Bench",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    for name in ("ALERT_TOPIC_ARN", "ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_SECRET_ARN"):
        os.environ.pop(name, None)
    return load_handler(function, fresh=True, instance="bench")


def _invoke(module: Any, event: dict[str, Any]) -> None:
    from capctl.apigw import LambdaContext

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        module.lambda_handler(event, LambdaContext(function_name="bench"))


def _within_timeout(function: str, url: str, event: dict[str, Any], timeout: int) -> float | None:
    """One invocation in a fresh process, killed at the function's timeout as Lambda would; its
    seconds, or None when it ran out of time."""
    ctx = multiprocessing.get_context("fork")
    box: Any = ctx.SimpleQueue()

    def child() -> None:
        module = _handler(function, url)
        box.put(_timed(lambda: _invoke(module, event)))

    process = ctx.Process(target=child)
    process.start()
    process.join(timeout + 15)  # + the child's own start (import and connect)
    if process.is_alive():
        process.kill()
        process.join()
        return None
    return float(box.get()) if not box.empty() else None


def _measure_sizes(
    function: str,
    url: str,
    conn: psycopg.Connection[Any],
    sizes: Sequence[int],
    grow: Callable[[int, int], None],
    event: dict[str, Any],
    bare_sql: str,
    rounds: int,
    unit: str,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    timeout = template_timeout(function)
    rows: list[dict[str, Any]] = []
    have = 0
    for size in sizes:
        grow(have, size)
        have = size
        fn: list[float | None] = []
        bare: list[float] = []
        for _ in range(rounds):  # alternating with the bare GROUP BY
            fn.append(_within_timeout(FUNCTIONS[function], url, event, timeout))
            bare.append(_timed(lambda: conn.execute(bare_sql).fetchall()))
            if fn[-1] is None:
                break  # out of time once is out of time
        b = statistics.median(bare)
        if any(f is None for f in fn):
            rows.append({unit: size, "function_s": None, "timed_out": True, "group_by_s": round(b, 3)})
            log(f"    {function} {size:>9,} {unit}: over its {timeout} s timeout (GROUP BY {b:.2f} s)")
            break  # larger sizes would only take longer
        f = statistics.median([x for x in fn if x is not None])
        rows.append({unit: size, "function_s": round(f, 3), "group_by_s": round(b, 3), "ratio": round(f / b, 2)})
        log(f"    {function} {size:>9,} {unit}: {f:7.2f} s (GROUP BY {b:.2f} s)")
    return rows


FUNCTIONS = {"RollupMetricsFunction": "rollup_metrics", "CheckAlertsFunction": "check_alerts"}


def rollup(admin_url: str, sizes: Sequence[int], rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    url = harness.create_database(admin_url, None)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in (_GENERATE_RESTAURANTS, _GENERATE_RULES):
                conn.execute(statement, {"lo": 0, "hi": EVENT_RESTAURANTS - 1})

            def grow(have: int, size: int) -> None:
                conn.execute(_GENERATE_EVENTS, {"lo": have, "hi": size - 1, "restaurants": EVENT_RESTAURANTS})
                conn.execute("VACUUM ANALYZE observability_events")

            rows = _measure_sizes(
                "RollupMetricsFunction",
                url,
                conn,
                sizes,
                grow,
                {"time": "bench", "detail": {}},
                _BARE_EVENTS,
                rounds,
                "events",
                log,
            )
    finally:
        harness.drop_database(admin_url, url)
    growth = _growth(
        [r["events"] for r in rows], [r["function_s"] for r in rows], template_timeout("RollupMetricsFunction")
    )
    return {"sizes": rows, **growth}


def alert_check(admin_url: str, sizes: Sequence[int], rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    url = harness.create_database(admin_url, None)
    try:
        with psycopg.connect(url, autocommit=True) as conn:

            def grow(have: int, size: int) -> None:
                params = {"lo": have, "hi": size - 1, "days": DAYS_AHEAD}
                for statement in (_GENERATE_RESTAURANTS, _GENERATE_RULES, _GENERATE_BOOKINGS):
                    conn.execute(statement, params)
                conn.execute("VACUUM ANALYZE bookings")

            rows = _measure_sizes(
                "CheckAlertsFunction",
                url,
                conn,
                sizes,
                grow,
                {"time": "bench", "detail": {"dryRun": True}},
                _BARE_SLOTS,
                rounds,
                "restaurants",
                log,
            )
    finally:
        harness.drop_database(admin_url, url)
    for row in rows:
        row["bookings"] = row["restaurants"] * DAYS_AHEAD
    growth = _growth(
        [r["restaurants"] for r in rows], [r["function_s"] for r in rows], template_timeout("CheckAlertsFunction")
    )
    return {"sizes": rows, **growth}
