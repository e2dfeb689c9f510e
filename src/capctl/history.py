"""The load test's history and its checker: what every client saw, held against what was stored.

The Artillery diners (load/processor.js) append one JSON line per answered (or unanswered)
request attempt to the file named by ``LOAD_TEST_HISTORY``::

    {"t": 1764467000123, "op": "book", "key": "lt-…", "status": 201, "bookingId": "…",
     "replayed": false, "attempt": 1, "code": null, "error": null}

``op`` is ``book`` (POST /bookings), ``cancel`` (DELETE /bookings/{id}) or ``read``
(GET /bookings/{id}); ``status`` is null when no answer came (``error`` says why: a timeout, a
refused connection). ``t`` is when the answer (or the error) arrived, in epoch milliseconds.

Everything here is pure: the checks take the history and rows already read from the database
(:func:`stored_bookings` is the one read), so each can be shown to fail on a made-up input.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capctl.text import plural

# After a fault ends, the service must answer a booking 201 again within this bound.
RECOVERY_BOUND_MS = 30_000
HISTORY_ENV = "LOAD_TEST_HISTORY"
BOOK, CANCEL, READ = "book", "cancel", "read"


@dataclass(frozen=True)
class Outcome:
    """One request attempt as the client saw it."""

    t: int  # epoch ms
    op: str
    status: int | None
    key: str | None = None
    booking_id: str | None = None
    replayed: bool = False
    attempt: int = 1
    code: str | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Outcome:
        status = row.get("status")
        return cls(
            t=int(row["t"]),
            op=str(row["op"]),
            status=int(status) if status is not None else None,
            key=row.get("key"),
            booking_id=row.get("bookingId"),
            replayed=bool(row.get("replayed")),
            attempt=int(row.get("attempt") or 1),
            code=row.get("code"),
            error=row.get("error"),
        )


@dataclass(frozen=True)
class StoredBooking:
    id: str
    key: str | None
    tenant: str
    status: str  # confirmed | cancelled


@dataclass
class HistoryVerdict:
    checks: list[dict[str, Any]] = field(default_factory=list)
    acknowledged_lost: int = 0
    cancellations_lost: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)


def read_history(path: Path) -> list[Outcome]:
    """The JSON lines of ``path`` (a torn last line, from a killed writer, is skipped)."""
    outcomes = []
    if not path.exists():
        return []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            outcomes.append(Outcome.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(outcomes, key=lambda o: o.t)


# --------------------------------------------------------------------------- the checks


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "passed": passed, "detail": detail}


def acknowledged_bookings(history: Iterable[Outcome]) -> dict[str, str]:
    """Idempotency-Key -> the booking id of the first 201 a client received for it."""
    acked: dict[str, str] = {}
    for o in history:
        if o.op == BOOK and o.status == 201 and o.key and o.booking_id:
            acked.setdefault(o.key, o.booking_id)
    return acked


def lost_acknowledgements(history: Iterable[Outcome], stored: Mapping[str, StoredBooking]) -> list[dict[str, Any]]:
    """Every 201 whose booking is not stored under that id and key: an acknowledged booking lost."""
    lost = []
    seen: set[tuple[str, str]] = set()
    for o in history:
        if o.op != BOOK or o.status != 201 or not o.key or not o.booking_id or (o.key, o.booking_id) in seen:
            continue
        seen.add((o.key, o.booking_id))
        row = stored.get(o.booking_id)
        if row is None or row.key != o.key:
            lost.append({"key": o.key, "bookingId": o.booking_id, "stored": row is not None})
    return lost


def lost_cancellations(history: Iterable[Outcome], stored: Mapping[str, StoredBooking]) -> list[dict[str, Any]]:
    """Every cancel answered 200 whose booking is not cancelled in the database."""
    acked = {o.booking_id for o in history if o.op == CANCEL and o.status == 200 and o.booking_id}
    return [
        {"bookingId": booking_id, "status": stored[booking_id].status if booking_id in stored else None}
        for booking_id in sorted(acked)
        if booking_id not in stored or stored[booking_id].status != "cancelled"
    ]


def replay_mismatches(history: Iterable[Outcome]) -> list[dict[str, Any]]:
    """Keys answered 201 with more than one booking id (a replay must return the original)."""
    ids: dict[str, list[str]] = defaultdict(list)
    for o in history:
        if o.op == BOOK and o.status == 201 and o.key and o.booking_id and o.booking_id not in ids[o.key]:
            ids[o.key].append(o.booking_id)
    return [{"key": k, "bookingIds": v} for k, v in ids.items() if len(v) > 1]


def duplicate_keys(stored: Iterable[StoredBooking]) -> list[dict[str, Any]]:
    """(tenant, key) pairs holding more than one booking."""
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for b in stored:
        if b.key:
            by_key[(b.tenant, b.key)].append(b.id)
    return [{"key": key, "bookingIds": ids} for (_tenant, key), ids in by_key.items() if len(ids) > 1]


def _epoch_ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def recovery(
    history: Sequence[Outcome], faults: Sequence[Mapping[str, Any]], bound_ms: int = RECOVERY_BOUND_MS
) -> list[dict[str, Any]]:
    """Each fault with ``recoveredAfterMs``: from its end to the first booking answered 201 after
    it (None when none came). A fault without an end (it failed to heal) never recovers."""
    created = [o.t for o in history if o.op == BOOK and o.status == 201]
    measured = []
    for fault in faults:
        ended = fault.get("endedAt")
        after = None
        if ended:
            end_ms = _epoch_ms(str(ended))
            first = next((t for t in created if t >= end_ms), None)
            after = first - end_ms if first is not None else None
        measured.append({**fault, "recoveredAfterMs": after, "recovered": after is not None and after <= bound_ms})
    return measured


def check_history(
    history: Sequence[Outcome],
    stored: Sequence[StoredBooking],
    *,
    ledger_mismatches: Sequence[Mapping[str, Any]] = (),
    faults: Sequence[Mapping[str, Any]] = (),
    bound_ms: int = RECOVERY_BOUND_MS,
) -> HistoryVerdict:
    """Every history check: ``{check, passed, detail}`` each, and the two figures of the report."""
    by_id = {b.id: b for b in stored}
    verdict = HistoryVerdict()
    acked = acknowledged_bookings(history)
    lost = lost_acknowledgements(history, by_id)
    verdict.acknowledged_lost = len(lost)
    verdict.checks.append(
        _check(
            "every acknowledged booking is stored",
            not lost,
            f"{len(acked)} bookings acknowledged (201), {len(lost)} not stored under their id and key"
            + "".join(f"; {x['bookingId']}" for x in lost[:3]),
        )
    )
    cancels = {o.booking_id for o in history if o.op == CANCEL and o.status == 200}
    lost_cancels = lost_cancellations(history, by_id)
    verdict.cancellations_lost = len(lost_cancels)
    verdict.checks.append(
        _check(
            "every acknowledged cancellation is cancelled",
            not lost_cancels,
            f"{len(cancels)} cancellations acknowledged (200), {len(lost_cancels)} not cancelled in the database"
            + "".join(f"; {x['bookingId']} is {x['status'] or 'missing'}" for x in lost_cancels[:3]),
        )
    )
    mismatched = replay_mismatches(history)
    replays = sum(1 for o in history if o.op == BOOK and o.status == 201 and o.replayed)
    verdict.checks.append(
        _check(
            "every replay returned the original booking",
            not mismatched,
            f"{replays} replayed 201s, {len(mismatched)} keys answered with another booking",
        )
    )
    duplicated = duplicate_keys(stored)
    verdict.checks.append(
        _check(
            "no key has two bookings",
            not duplicated,
            f"{plural(len(stored), 'booking')} stored, {plural(len(duplicated), 'key')} with more than one",
        )
    )
    verdict.checks.append(
        _check(
            "slot ledger = recount from bookings",
            not ledger_mismatches,
            f"{len(ledger_mismatches)} slots whose slot_usage differs from their confirmed covers",
        )
    )
    verdict.faults = recovery(history, faults, bound_ms)
    for fault in verdict.faults:
        after = fault["recoveredAfterMs"]
        verdict.checks.append(
            _check(
                f"answered a booking again after {fault['kind']}",
                bool(fault["recovered"]),
                (f"first 201 {after} ms after the fault ended" if after is not None else "no 201 after the fault")
                + f" (bound {bound_ms} ms)",
            )
        )
    verdict.faults = [{k: f[k] for k in ("kind", "startedAt", "endedAt", "recoveredAfterMs")} for f in verdict.faults]
    return verdict


# --------------------------------------------------------------------------- the one read

_STORED = """
SELECT id::text AS id, idempotency_key AS key, tenant, status
  FROM bookings WHERE run_id = %(run_id)s
"""


def stored_bookings(conn: Any, run_id: str) -> list[StoredBooking]:
    return [
        StoredBooking(r["id"], r["key"], r["tenant"], r["status"]) for r in conn.execute(_STORED, {"run_id": run_id})
    ]
