"""One definition of each figure the product shows: conflict rate, success rate, utilization.

The roll-up, the alert check, the load-test report, the demo summary, the EMF metrics and the
dashboard all count with what is here, so the same traffic gives the same numbers everywhere.
The SQL fragments are built from ``outcomes.EventType`` (no event name is written twice) over
an ``observability_events`` row aliased ``e``; :func:`request_conflicted` is their Python twin
for one request, used where the figure is counted as it happens (the handler's EMF metrics).
They read the event's ``source``, ``attempts`` and ``reason`` from the columns PostgreSQL
computes from its metadata (migration 007), not from the JSON: every figure counts every event
of its window, and reading the JSON per event was most of what a count cost beyond a bare
``GROUP BY event_type``.

* A **booking request** is one outcome event: ``booking.success``, ``booking.capacity_exceeded``
  or ``booking.retry_exhausted`` (every request records exactly one).
* A request **met a conflict** when it lost a race on its first attempt (the guard refused what
  its read had seen room for: ``booking.overbook_prevented`` with ``attempts`` 1), retried a
  transient failure (its outcome has ``attempts`` > 1), or ran out of retries. Each request
  counts once, however many conflicts it met.
* **Conflict rate** = requests that met a conflict / requests; **success rate** = successes /
  requests; **utilization** = confirmed covers / capacity of the finite-capacity slots. A rate
  with a zero denominator is undefined (``None``), never 0.
"""

from __future__ import annotations

from decimal import Decimal

from capacity.outcomes import LOAD_TEST_SOURCE, OUTCOME_EVENTS, EventType


def sql_text(value: str) -> str:
    """A constant of the code as an SQL string literal (for names of the vocabulary only)."""
    return "'" + value.replace("'", "''") + "'"


def _in(types: frozenset[EventType] | set[EventType]) -> str:
    return ", ".join(sql_text(t) for t in sorted(types))


def is_event(event_type: EventType) -> str:
    return f"e.event_type = {sql_text(event_type)}"


# ``attempts`` of an event: metadata's when it is a JSON number, else 1 (absent or malformed: a
# malformed row must not stop a run). The rule is the generated column's (migration 007).
ATTEMPTS_SQL = "e.attempts"
OUTCOME_SQL = f"e.event_type IN ({_in(OUTCOME_EVENTS)})"
# attempts first: nearly every event has 1, so the event type seldom needs testing.
CONFLICTED_SQL = f"""(
       ({ATTEMPTS_SQL} > 1 AND {OUTCOME_SQL})
    OR {is_event(EventType.RETRY_EXHAUSTED)}
    OR ({is_event(EventType.OVERBOOK_PREVENTED)} AND {ATTEMPTS_SQL} <= 1))"""
# A refusal because the slot is closed (a booking.capacity_exceeded with reason 'closed').
CLOSED_SQL = f"({is_event(EventType.CAPACITY_EXCEEDED)} AND e.reason = 'closed')"
# True for synthetic events (source load-test); events without a source are live (false, never
# NULL: it is a grouping key).
SYNTHETIC_SQL = f"(coalesce(e.source, '') = {sql_text(LOAD_TEST_SOURCE)})"


def _count(event_type: EventType) -> str:
    return f"count(*) FILTER (WHERE {is_event(event_type)})"


# Requests: the sum of the outcome events' own counters. PostgreSQL computes an aggregate that a
# statement names twice once, so this tests nothing more per event (OUTCOME_SQL would).
_REQUESTS = " + ".join(_count(t) for t in sorted(OUTCOME_EVENTS))

# The counters every figure is made of, as select-list columns over ``observability_events e``.
COUNTERS_SQL = f"""
    ({_REQUESTS})::int AS requests,
    {_count(EventType.SUCCESS)}::int AS successes,
    {_count(EventType.CAPACITY_EXCEEDED)}::int AS capacity_exceeded,
    count(*) FILTER (WHERE {CLOSED_SQL})::int AS slot_closed,
    {_count(EventType.RETRY_EXHAUSTED)}::int AS retry_exhausted,
    {_count(EventType.OVERBOOK_PREVENTED)}::int AS overbook_prevented,
    {_count(EventType.CONFLICT)}::int AS retried_failures,
    count(*) FILTER (WHERE {CONFLICTED_SQL})::int AS conflicts,
    {_count(EventType.CANCELLED)}::int AS cancellations,
    {_count(EventType.OVERBOOK_DETECTED)}::int AS overbook_detected"""

COUNTER_NAMES = (
    "requests",
    "successes",
    "capacity_exceeded",
    "slot_closed",
    "retry_exhausted",
    "overbook_prevented",
    "retried_failures",
    "conflicts",
    "cancellations",
    "overbook_detected",
)


def request_conflicted(*, attempts: int, lost_race: bool, exhausted: bool) -> bool:
    """Did one booking request meet a conflict? The twin of ``CONFLICTED_SQL``."""
    return attempts > 1 or lost_race or exhausted


def rate(numerator: int | Decimal, denominator: int | Decimal) -> float | None:
    """numerator / denominator, or None when nothing was counted."""
    return float(numerator) / float(denominator) if denominator else None


def conflict_rate(conflicts: int, requests: int) -> float | None:
    return rate(conflicts, requests)


def success_rate(successes: int, requests: int) -> float | None:
    return rate(successes, requests)


def utilization(covers_booked: int, capacity_covers: int) -> float | None:
    return rate(covers_booked, capacity_covers)


def percent_text(value: float | Decimal | None) -> str:
    """A rate as people read it: one decimal, two under 1 % (a 0.05 % threshold must not read as
    0.1 %); ``-`` when it is undefined."""
    if value is None:
        return "-"
    percent = float(value) * 100
    return f"{percent:.2f}%" if 0 < abs(percent) < 1 else f"{percent:.1f}%"
