"""`capctl cleanup --source load-test [--run-id ID]`: remove synthetic bookings, free their covers.

One statement, so one transaction: the bookings are deleted, each slot's usage ledger gives back
the covers of the confirmed ones, and their idempotency records (tenant + key) go too, so a
replay of a deleted booking's key cannot answer with a booking that no longer exists. Refusals
(409) stored under load-test keys reference no booking and simply expire. Events stay: they are
the history, and analytics and alerts leave source 'load-test' out unless asked.

Only synthetic sources can be removed; live data (`--source api`, or any other source) is refused.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from capacity.camel_json import CamelJson
from capacity.db import DictConnection
from capacity.outcomes import LOAD_TEST_SOURCE
from capctl.errors import UserError
from capctl.text import plural

SYNTHETIC_SOURCES = (LOAD_TEST_SOURCE,)

_SELECTED = """
SELECT count(*)::int AS bookings,
       count(*) FILTER (WHERE status = 'confirmed')::int AS confirmed,
       coalesce(sum(party_size) FILTER (WHERE status = 'confirmed'), 0)::int AS covers_freed,
       count(DISTINCT (restaurant_id, booking_date, booking_time)) FILTER (WHERE status = 'confirmed')::int AS slots,
       count(*) FILTER (WHERE idempotency_key IS NOT NULL)::int AS idempotency_keys
  FROM bookings
 WHERE source = %(source)s AND (%(run_id)s::text IS NULL OR run_id = %(run_id)s)
"""

# Cancelled bookings already gave their covers back; only confirmed ones are subtracted.
_REMOVE = """
WITH doomed AS (
    DELETE FROM bookings
     WHERE source = %(source)s AND (%(run_id)s::text IS NULL OR run_id = %(run_id)s)
    RETURNING restaurant_id, booking_date, booking_time, party_size, status, tenant, idempotency_key
), freed AS (
    SELECT restaurant_id, booking_date, booking_time, sum(party_size)::int AS covers
      FROM doomed WHERE status = 'confirmed'
     GROUP BY restaurant_id, booking_date, booking_time
), ledger AS (
    UPDATE slot_usage u SET booked_covers = greatest(u.booked_covers - f.covers, 0)
      FROM freed f
     WHERE u.restaurant_id = f.restaurant_id AND u.slot_date = f.booking_date AND u.slot_time = f.booking_time
    RETURNING 1
), keys AS (
    DELETE FROM idempotency_keys k
     USING doomed d
     WHERE d.idempotency_key IS NOT NULL AND k.tenant = d.tenant AND k.key = d.idempotency_key
    RETURNING 1
)
SELECT (SELECT count(*) FROM doomed)::int AS bookings,
       (SELECT count(*) FROM doomed WHERE status = 'confirmed')::int AS confirmed,
       (SELECT coalesce(sum(covers), 0) FROM freed)::int AS covers_freed,
       (SELECT count(*) FROM ledger)::int AS slots,
       (SELECT count(*) FROM keys)::int AS idempotency_keys
"""


@dataclass(frozen=True)
class CleanupResult(CamelJson):
    source: str
    run_id: str | None
    bookings: int
    confirmed: int
    covers_freed: int
    slots: int
    idempotency_keys: int
    dry_run: bool = False

    def describe(self) -> str:
        scope = f"source {self.source}" + (f", run {self.run_id}" if self.run_id else "")
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{verb} {plural(self.bookings, 'booking')} ({scope}): {self.confirmed} confirmed, "
            f"{plural(self.covers_freed, 'cover')} freed in {plural(self.slots, 'slot')}, "
            f"{plural(self.idempotency_keys, 'idempotency key')} deleted"
        )


def check_source(source: str) -> None:
    if source not in SYNTHETIC_SOURCES:
        raise UserError(
            f"refusing to delete bookings of source {source!r}: only synthetic sources "
            f"({', '.join(SYNTHETIC_SOURCES)}) can be cleaned up"
        )


def remove_synthetic(
    conn: DictConnection, *, source: str, run_id: str | None = None, dry_run: bool = False
) -> CleanupResult:
    """Delete the bookings of a synthetic source (optionally one run) and free their covers."""
    check_source(source)
    params = {"source": source, "run_id": run_id}
    with conn.transaction():
        row = conn.execute(_SELECTED if dry_run else _REMOVE, params).fetchone()
    assert row is not None
    return CleanupResult(source=source, run_id=run_id, dry_run=dry_run, **row)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help=f"the synthetic source to remove ({', '.join(SYNTHETIC_SOURCES)}); live sources are refused",
    )
    parser.add_argument("--run-id", help="only the bookings of this load-test run (X-Run-Id)")
    parser.add_argument("--dry-run", action="store_true", help="count what would be removed, change nothing")


def run(args: argparse.Namespace, command: str) -> int:
    check_source(args.source)
    from capctl.database import connection

    with connection() as conn:
        result = remove_synthetic(conn, source=args.source, run_id=args.run_id, dry_run=args.dry_run)
    print(result.describe())
    return 0
