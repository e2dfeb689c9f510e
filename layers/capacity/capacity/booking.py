"""The booking service: one request in, one outcome out.

Reads the slot's context (stored response, restaurant, rules, the date's usage) in one round trip,
then either replays, refuses, or makes the guarded write. Transient database failures retry the
whole unit with full-jitter backoff; the write is idempotent by its key, so a retry can never
book twice.
"""

from __future__ import annotations

import datetime as dt
import time as _time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg

from capacity import figures
from capacity import repository as repo
from capacity.db import Backoff, Database, DatabaseUnavailable, DictConnection, RetriesExhausted, RetryPolicy
from capacity.idempotency import fingerprint
from capacity.models import (
    AlternativeSlot,
    Availability,
    BookingCreated,
    BookingEnvelope,
    BookingRequest,
    BookingView,
    SlotAvailability,
    format_time,
)
from capacity.outcomes import EventType, ProblemCode, ProblemError, problem_body
from capacity.rules import Alternative, Capacity
from capacity.settings import BookingSettings

# A key that keeps colliding (committed by another request between this one's read and write)
# is re-read this many times before the answer is 409 idempotency_in_progress.
MAX_KEY_COLLISIONS = 3
_READ_POLICY = RetryPolicy(max_attempts=2)


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    idempotency_key: str
    run_id: str | None = None
    request_id: str | None = None  # the problem's ``instance`` of a refusal (kept by its replays)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One try at a booking request: what every step of it needs to know."""

    request: BookingRequest
    caller: Caller
    fingerprint: str
    number: int  # 1 for the first try; transient failures before it are ``failures``
    failures: tuple[str, ...]

    metadata: dict[str, Any] = field(default_factory=dict)  # what each of its events carries

    @classmethod
    def of(cls, request: BookingRequest, caller: Caller, fp: str, number: int, failures: list[str]) -> _Attempt:
        metadata = _event_metadata(request, caller, number)
        return cls(request, caller, fp, number, tuple(failures), metadata)

    @property
    def conflict_events(self) -> list[repo.Event]:
        return _conflict_events(self.metadata, list(self.failures))


@dataclass
class BookingResult:
    """The answer to one booking request, and what the handler needs to report it."""

    status: int
    body: dict[str, Any]
    replayed: bool = False
    outcome: EventType | None = None  # None for a replay: the original request recorded it
    attempts: int = 1
    conflicts: int = 0
    overbook_prevented: bool = False
    utilization: float | None = None  # percent of the slot's capacity booked, when finite
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """The answer to a cancel: the booking's body, and whether this call cancelled it (False: it
    was cancelled before, a no-op that answers the same; its event was recorded then)."""

    body: dict[str, Any]
    cancelled_now: bool


class RetryExhausted(ProblemError):
    """503 after every attempt failed transiently; ``conflicts`` counts the retried failures."""

    def __init__(self, detail: str, *, attempts: int, retry_after: int) -> None:
        super().__init__(ProblemCode.RETRY_EXHAUSTED, detail, headers={"Retry-After": str(retry_after)})
        self.attempts = attempts


def _created(stored: dict[str, Any]) -> dict[str, Any]:
    """A 201's body, from the answer stored under the key (its ``capacity`` is counted by the
    guarded write itself), held against ``BookingCreated``: the first answer and every replay pass
    the same model, so they are the same bytes, and a body the model refuses is never sent."""
    return BookingCreated.model_validate(stored).body()


def _alternatives(date: dt.date, alternatives: list[Alternative]) -> list[dict[str, Any]]:
    return [
        AlternativeSlot(date=date, time=format_time(a.time), remaining_covers=a.remaining_covers).body()
        for a in alternatives
    ]


class BookingService:
    def __init__(
        self,
        db: Database,
        settings: BookingSettings,
        *,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        sleep: Callable[[float], None] = _time.sleep,
        monotonic: Callable[[], float] = _time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self._now = now
        self._sleep = sleep
        self._monotonic = monotonic
        self._backoff = backoff or Backoff(settings.backoff_base_ms, settings.backoff_cap_ms)

    # -- POST /bookings ---------------------------------------------------------------------

    def book(self, request: BookingRequest, caller: Caller) -> BookingResult:
        fp = fingerprint(request)
        failures: list[str] = []  # SQLSTATE (or "connection") of each transient failure
        policy = RetryPolicy(
            max_attempts=self.settings.max_attempts,
            backoff=self._backoff,
            budget_s=self.settings.request_budget_ms / 1000,
            sleep=self._sleep,
            monotonic=self._monotonic,
        )
        started = self._monotonic()  # the time budget is the request's, whatever it re-reads

        def attempt() -> BookingResult:
            return self._attempt(request, caller, fp, len(failures) + 1, failures)

        for _ in range(MAX_KEY_COLLISIONS):
            try:
                return policy.run(self.db, attempt, failures, since=started)
            except repo.DuplicateKey:
                # A concurrent request with this key committed first (if it was in flight, this
                # request's write waited for it on the key's index entry): the next read replays it.
                continue
            except DatabaseUnavailable:
                raise self._unavailable() from None
            except RetriesExhausted:
                self._record_exhaustion(request, caller, failures)
                raise RetryExhausted(
                    f"The booking could not be completed after {len(failures)} attempts; retry shortly.",
                    attempts=len(failures),
                    retry_after=self.settings.retry_after_s,
                ) from None
        raise self._in_flight()

    def _attempt(
        self, request: BookingRequest, caller: Caller, fp: str, number: int, failures: list[str]
    ) -> BookingResult:
        """One try of the contract's table of outcomes: replay, refuse before the write (404,
        422), refuse a closed slot (409), or the guarded write (201, or 409 when full)."""
        attempt = _Attempt.of(request, caller, fp, number, failures)
        conn = self.db.connection()
        ctx = repo.load_booking_context(
            conn,
            tenant=caller.tenant,
            key=caller.idempotency_key,
            restaurant_id=request.restaurant_id,
            date=request.date,
            time=request.slot_time,
        )
        if ctx.stored is not None:
            replay = self._stored_answer(conn, attempt, ctx.stored)
            if replay is not None:
                return replay
        restaurant = self._bookable(request, ctx.restaurant)
        capacity = restaurant.rules.capacity(request.date, request.slot_time)
        if capacity.closed:
            return self._refuse(attempt, restaurant, capacity, ctx.usage, lost_race=False)
        return self._write(conn, attempt, restaurant, capacity, ctx)

    def _stored_answer(
        self, conn: DictConnection, attempt: _Attempt, stored: repo.StoredResponse
    ) -> BookingResult | None:
        """The stored answer of this key replayed; None when the key is free (its record expired)."""
        if stored.expired:
            repo.delete_expired_key(conn, tenant=attempt.caller.tenant, key=attempt.caller.idempotency_key)
            return None
        if stored.fingerprint != attempt.fingerprint:
            raise ProblemError(
                ProblemCode.IDEMPOTENCY_KEY_REUSED,
                "This Idempotency-Key was already used with a different request body.",
            )
        return self._replay(stored)

    def _bookable(self, request: BookingRequest, restaurant: repo.Restaurant | None) -> repo.Restaurant:
        """The refusals before a booking is attempted: unknown restaurant, party, grid, time."""
        if restaurant is None:
            raise ProblemError(ProblemCode.RESTAURANT_NOT_FOUND, f"No restaurant {request.restaurant_id}.")
        rules = restaurant.rules
        if request.party_size > rules.max_party_size:
            raise _field_error("partySize", f"must be at most {rules.max_party_size}")
        if not rules.on_grid(request.slot_time):
            raise ProblemError(
                ProblemCode.INVALID_SLOT_TIME,
                f"{request.time} is not on this restaurant's {rules.slot_minutes}-minute slot grid.",
            )
        local_now = self._local_now(restaurant)
        if (request.date, request.slot_time) < (local_now.date(), local_now.time()):
            raise _field_error("date", "must not be a slot that has already begun")
        _check_horizon(restaurant, request.date, local_now.date())
        return restaurant

    def _write(
        self,
        conn: DictConnection,
        attempt: _Attempt,
        restaurant: repo.Restaurant,
        capacity: Capacity,
        ctx: repo.BookingContext,
    ) -> BookingResult:
        """The guarded write: 201, or the refusal when the slot had no room for the party."""
        new = self._new_booking(attempt)
        success = repo.Event(EventType.SUCCESS, {**attempt.metadata, "bookingId": str(new.id)})
        body = repo.book(
            conn,
            new,
            max_covers=capacity.max_covers,
            fingerprint=attempt.fingerprint,
            response_booking=BookingView.from_row(new.as_row()).body(),
            events=[*attempt.conflict_events, success],
            ttl_hours=self.settings.idempotency_ttl_hours,
        )
        if body is None:
            # The guard refused. If our own read had seen room, a concurrent booking won the race.
            lost_race = capacity.fits(ctx.booked_covers, attempt.request.party_size)
            return self._refuse(attempt, restaurant, capacity, ctx.usage, lost_race=lost_race)
        return BookingResult(
            status=201,
            body=_created(body),
            outcome=EventType.SUCCESS,
            attempts=attempt.number,
            conflicts=len(attempt.failures),
            utilization=_utilization(body["capacity"]["bookedCovers"], capacity.max_covers),
            headers={"Location": f"/bookings/{new.id}"},
        )

    def _new_booking(self, attempt: _Attempt) -> repo.NewBooking:
        request, caller = attempt.request, attempt.caller
        now = self._now()
        return repo.NewBooking(
            id=uuid.uuid4(),
            restaurant_id=request.restaurant_id,
            date=request.date,
            time=request.slot_time,
            party_size=request.party_size,
            source=request.source,
            tenant=caller.tenant,
            idempotency_key=caller.idempotency_key,
            run_id=caller.run_id,
            guest_name=request.guest.name,
            guest_email=request.guest.email,
            guest_phone=request.guest.phone,
            notes=request.notes,
            created_at=now.replace(microsecond=now.microsecond // 1000 * 1000),  # as the answer shows it
        )

    def _refuse(
        self,
        attempt: _Attempt,
        restaurant: repo.Restaurant,
        capacity: Capacity,
        usage: dict[dt.time, int],
        *,
        lost_race: bool,
    ) -> BookingResult:
        """409 slot_closed or capacity_exceeded with alternatives, stored under the key with its
        events (and booking.overbook_prevented when the request lost a race for the last covers).

        ``usage`` is the date's, as the context read saw it: the alternatives and the covers left
        come from it, without another round trip. After a lost race that read is older than the
        booking that won, so the date is read again: the answer counts the covers that beat it."""
        request = attempt.request
        conn = self.db.connection()
        if lost_race:
            usage = repo.usage_of_date(conn, request.restaurant_id, request.date)
        body = self._refusal_body(attempt, restaurant, capacity, usage)
        reason = "closed" if capacity.closed else "full"
        events = [
            *attempt.conflict_events,
            repo.Event(EventType.CAPACITY_EXCEEDED, {**attempt.metadata, "reason": reason}),
        ]
        if lost_race:
            events.append(repo.Event(EventType.OVERBOOK_PREVENTED, dict(attempt.metadata)))
        stored = repo.refuse(
            conn,
            tenant=attempt.caller.tenant,
            key=attempt.caller.idempotency_key,
            fingerprint=attempt.fingerprint,
            restaurant_id=request.restaurant_id,
            status_code=409,
            response=body,
            events=events,
            ttl_hours=self.settings.idempotency_ttl_hours,
        )
        return BookingResult(
            status=409,
            body=stored,
            outcome=EventType.CAPACITY_EXCEEDED,
            attempts=attempt.number,
            conflicts=len(attempt.failures),
            overbook_prevented=lost_race,
        )

    def _refusal_body(
        self, attempt: _Attempt, restaurant: repo.Restaurant, capacity: Capacity, usage: dict[dt.time, int]
    ) -> dict[str, Any]:
        request = attempt.request
        local_now = self._local_now(restaurant)
        not_before = local_now.time() if request.date == local_now.date() else None
        alternatives = _alternatives(
            request.date,
            restaurant.rules.alternatives(
                request.date, request.slot_time, request.party_size, usage, not_before=not_before
            ),
        )
        slot = f"{request.date.isoformat()} {request.time}"
        if capacity.closed:
            return problem_body(
                ProblemCode.SLOT_CLOSED,
                f"{slot} is not open for booking.",
                instance=attempt.caller.request_id,
                alternatives=alternatives,
            )
        return problem_body(
            ProblemCode.CAPACITY_EXCEEDED,
            f"{slot} cannot take a party of {request.party_size}.",
            instance=attempt.caller.request_id,
            requested=request.party_size,
            remainingCovers=capacity.remaining(usage.get(request.slot_time, 0)),
            alternatives=alternatives,
        )

    def _local_now(self, restaurant: repo.Restaurant) -> dt.datetime:
        """Now, in the restaurant's own time zone: what "the slot has begun" is measured against."""
        return self._now().astimezone(ZoneInfo(restaurant.timezone))

    def _replay(self, stored: repo.StoredResponse) -> BookingResult:
        headers = {"Idempotent-Replayed": "true"}
        if stored.status_code == 201:
            # The body is the original answer (the idempotency promise), so it says "confirmed"
            # even if the booking was cancelled since: the Link says where its state is now.
            location = f"/bookings/{stored.body['booking']['id']}"
            headers["Location"] = location
            headers["Link"] = f'<{location}>; rel="current"'
        body = _created(stored.body) if stored.status_code == 201 else stored.body
        return BookingResult(status=stored.status_code, body=body, replayed=True, headers=headers)

    def _record_exhaustion(self, request: BookingRequest, caller: Caller, failures: list[str]) -> None:
        """Best effort: the database may be what failed. Nothing is stored under the key (5xx)."""
        metadata = _event_metadata(request, caller, len(failures))
        events = [
            *_conflict_events(metadata, failures[:-1]),  # the last failure was not retried
            repo.Event(EventType.RETRY_EXHAUSTED, {**metadata, "errors": failures}),
        ]
        try:
            repo.record_events(self.db.connection(), request.restaurant_id, events)
        except (psycopg.Error, DatabaseUnavailable):
            self.db.discard()

    def _in_flight(self) -> ProblemError:
        return ProblemError(
            ProblemCode.IDEMPOTENCY_IN_PROGRESS,
            "A request with this Idempotency-Key is being processed; retry shortly.",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    def _unavailable(self) -> ProblemError:
        return ProblemError(
            ProblemCode.SERVICE_UNAVAILABLE,
            "The booking database is unreachable; retry shortly.",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    # -- reads and cancel -------------------------------------------------------------------

    def _read(self, fn: Callable[[DictConnection], Any]) -> Any:
        """Reads and the cancel: safe to repeat, so a lost connection is retried once, at once."""
        try:
            return _READ_POLICY.run(self.db, lambda: fn(self.db.connection()))
        except DatabaseUnavailable:
            raise self._unavailable() from None
        except RetriesExhausted as exc:
            # Transient failures outlasted the retry (lock or statement timeouts during a stall):
            # 503 with Retry-After, as a booking answers them, not a 500.
            raise RetryExhausted(
                "The booking database kept failing transiently; retry shortly.",
                attempts=len(exc.failures),
                retry_after=self.settings.retry_after_s,
            ) from None

    def availability(self, restaurant_id: UUID, date: dt.date) -> dict[str, Any]:
        day = self._read(lambda conn: repo.load_day(conn, restaurant_id, date))
        if day is None:
            raise ProblemError(ProblemCode.RESTAURANT_NOT_FOUND, f"No restaurant {restaurant_id}.")
        restaurant, usage = day
        local_now = self._local_now(restaurant)
        _check_horizon(restaurant, date, local_now.date())
        slots = []
        for slot_time, capacity in restaurant.rules.bookable_slots(date):
            if (date, slot_time) < (local_now.date(), local_now.time()):
                continue  # begun: a booking of it would be refused
            booked = usage.get(slot_time, 0)
            slots.append(
                SlotAvailability(
                    time=format_time(slot_time),
                    max_covers=capacity.max_covers,
                    booked_covers=booked,
                    remaining_covers=capacity.remaining(booked),
                )
            )
        return Availability(restaurant_id=restaurant_id, date=date, slots=slots).body()

    def get(self, booking_id: UUID, tenant: str) -> dict[str, Any]:
        """The booking's body (``BookingEnvelope``)."""
        row = self._read(lambda conn: repo.get_booking(conn, booking_id, tenant))
        if row is None:
            raise ProblemError(ProblemCode.BOOKING_NOT_FOUND, f"No booking {booking_id}.")
        return BookingEnvelope(booking=BookingView.from_row(row)).body()

    def cancel(self, booking_id: UUID, tenant: str) -> Cancellation:
        """The cancelled booking's body (``BookingEnvelope``)."""
        row = self._read(lambda conn: repo.cancel_booking(conn, booking_id, tenant))
        if row is None:
            # Already cancelled (a no-op that answers the same) or not this tenant's.
            return Cancellation(self.get(booking_id, tenant), cancelled_now=False)
        return Cancellation(BookingEnvelope(booking=BookingView.from_row(row)).body(), cancelled_now=True)


def _event_metadata(request: BookingRequest, caller: Caller, attempts: int) -> dict[str, Any]:
    """What every event of a request carries: restaurantId, date, time, attempts, source — never guest data."""
    metadata: dict[str, Any] = {
        "restaurantId": str(request.restaurant_id),
        "date": request.date.isoformat(),
        "time": request.time,
        "attempts": attempts,
        "source": request.source,
        "partySize": request.party_size,
    }
    if caller.run_id:
        metadata["runId"] = caller.run_id
    return metadata


def _conflict_events(metadata: dict[str, Any], failures: list[str]) -> list[repo.Event]:
    """One booking.conflict per retried transient failure, with its SQLSTATE."""
    return [
        repo.Event(EventType.CONFLICT, {**metadata, "attempt": n, "error": code})
        for n, code in enumerate(failures, start=1)
    ]


def _field_error(field_name: str, message: str) -> ProblemError:
    return ProblemError(
        ProblemCode.VALIDATION_ERROR,
        f"{field_name}: {message}",
        extra={"errors": [{"field": field_name, "message": message}]},
    )


def _check_horizon(restaurant: repo.Restaurant, date: dt.date, today: dt.date) -> None:
    """A date beyond the restaurant's booking horizon is a field error, like a date in the past."""
    horizon = restaurant.booking_horizon_days
    last = today + dt.timedelta(days=horizon)
    if date > last:
        raise _field_error(
            "date", f"must be at most {horizon} days ahead; the last bookable date is {last.isoformat()}"
        )


def _utilization(booked: int, max_covers: int | None) -> float | None:
    """Percent of the slot's capacity booked (capacity.figures' utilization), None when unlimited."""
    share = figures.utilization(booked, max_covers or 0)
    return None if share is None else round(100.0 * share, 2)
