"""Outcome vocabulary in one place: event types, EMF metric names, problem+json codes.

The template tests read ``MetricName`` to check that every alarm and dashboard widget uses a
metric the code emits, so a metric is named here or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    SUCCESS = "booking.success"
    CAPACITY_EXCEEDED = "booking.capacity_exceeded"
    RETRY_EXHAUSTED = "booking.retry_exhausted"
    OVERBOOK_PREVENTED = "booking.overbook_prevented"
    CONFLICT = "booking.conflict"
    CANCELLED = "booking.cancelled"
    OVERBOOK_DETECTED = "booking.overbook_detected"


# The source that marks synthetic traffic (load tests): kept apart from live figures and alerts.
LOAD_TEST_SOURCE = "load-test"
DEFAULT_SOURCE = "api"
# The source of the events the reconciliation records (booking.overbook_detected).
RECONCILE_SOURCE = "reconcile"

# The events that are a request's one outcome (the others ride along with it).
OUTCOME_EVENTS = frozenset({EventType.SUCCESS, EventType.CAPACITY_EXCEEDED, EventType.RETRY_EXHAUSTED})
# Every event a POST /bookings request can record.
REQUEST_EVENTS = OUTCOME_EVENTS | {EventType.OVERBOOK_PREVENTED, EventType.CONFLICT}


class MetricName(StrEnum):
    # booking path (functions/create_booking)
    BOOKING_REQUESTS = "BookingRequests"
    BOOKING_SUCCESS = "BookingSuccess"
    CAPACITY_EXCEEDED = "BookingCapacityExceeded"
    SLOT_CLOSED = "BookingSlotClosed"
    RETRY_EXHAUSTED = "BookingRetryExhausted"
    OVERBOOK_PREVENTED = "BookingOverbookPrevented"
    CONFLICTS = "BookingConflicts"  # frequency: every lost race and retried failure
    CONFLICTED_REQUESTS = "BookingRequestsConflicted"  # 0/1 per request: the conflict rate's numerator
    IDEMPOTENT_REPLAYS = "IdempotentReplays"
    SERVICE_UNAVAILABLE = "BookingServiceUnavailable"
    BOOKING_LATENCY = "BookingLatency"
    SLOT_UTILIZATION = "SlotUtilization"
    BOOKING_CANCELLED = "BookingCancelled"
    # scheduled functions (rollup_metrics, check_alerts)
    ROLLUP_REQUESTS = "RollupRequests"
    ROLLUP_SUCCESS_RATE = "RollupSuccessRate"
    ROLLUP_CONFLICT_RATE = "RollupConflictRate"
    ROLLUP_UTILIZATION = "RollupUtilization"
    ROLLUP_ROWS = "RollupRows"
    OVERBOOK_DETECTED = "OverbookDetected"
    ALERTS_OPENED = "AlertsOpened"
    ALERTS_RESOLVED = "AlertsResolved"
    ALERT_DELIVERY_FAILURES = "AlertDeliveryFailures"


class ProblemCode(StrEnum):
    CAPACITY_EXCEEDED = "capacity_exceeded"
    SLOT_CLOSED = "slot_closed"
    IDEMPOTENCY_IN_PROGRESS = "idempotency_in_progress"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    VALIDATION_ERROR = "validation_error"
    INVALID_SLOT_TIME = "invalid_slot_time"
    IDEMPOTENCY_KEY_MISSING = "idempotency_key_missing"
    MALFORMED_REQUEST = "malformed_request"
    FORBIDDEN = "forbidden"
    RESTAURANT_NOT_FOUND = "restaurant_not_found"
    BOOKING_NOT_FOUND = "booking_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    RETRY_EXHAUSTED = "retry_exhausted"
    SERVICE_UNAVAILABLE = "service_unavailable"
    INTERNAL_ERROR = "internal_error"
    BAD_GATEWAY = "bad_gateway"  # the function crashed or answered nonsense (gateway's own answer)
    GATEWAY_TIMEOUT = "gateway_timeout"  # the function did not answer in time (gateway's own answer)


PROBLEM_TITLES: dict[ProblemCode, tuple[int, str]] = {
    # Said of the party, not the slot: a slot with 2 covers left is not full, yet takes no party of 4.
    ProblemCode.CAPACITY_EXCEEDED: (409, "Not enough covers left"),
    ProblemCode.SLOT_CLOSED: (409, "Slot is closed"),
    ProblemCode.IDEMPOTENCY_IN_PROGRESS: (409, "A request with this Idempotency-Key is in progress"),
    ProblemCode.IDEMPOTENCY_KEY_REUSED: (422, "Idempotency-Key reused with a different request"),
    ProblemCode.VALIDATION_ERROR: (422, "Invalid request"),
    ProblemCode.INVALID_SLOT_TIME: (422, "Time is not on the slot grid"),
    ProblemCode.IDEMPOTENCY_KEY_MISSING: (400, "Idempotency-Key header required"),
    ProblemCode.MALFORMED_REQUEST: (400, "Malformed request"),
    ProblemCode.FORBIDDEN: (403, "Forbidden"),
    ProblemCode.RESTAURANT_NOT_FOUND: (404, "Restaurant not found"),
    ProblemCode.BOOKING_NOT_FOUND: (404, "Booking not found"),
    ProblemCode.NOT_FOUND: (404, "Not found"),
    ProblemCode.METHOD_NOT_ALLOWED: (405, "Method not allowed"),
    ProblemCode.PAYLOAD_TOO_LARGE: (413, "Payload too large"),
    ProblemCode.RATE_LIMITED: (429, "Too many requests"),
    ProblemCode.RETRY_EXHAUSTED: (503, "Temporarily unable to complete the booking"),
    ProblemCode.SERVICE_UNAVAILABLE: (503, "Service unavailable"),
    ProblemCode.UNSUPPORTED_MEDIA_TYPE: (415, "Unsupported media type"),
    ProblemCode.INTERNAL_ERROR: (500, "Internal error"),
    ProblemCode.BAD_GATEWAY: (502, "Bad gateway"),
    ProblemCode.GATEWAY_TIMEOUT: (504, "Gateway timeout"),
}

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(code: ProblemCode, detail: str, *, instance: str | None = None, **extra: Any) -> dict[str, Any]:
    """RFC 9457 members first, then ``instance`` (the request id) and the contract's ``code``, then
    the code's own extras: the same order for every code, whatever order the extras came in."""
    status, title = PROBLEM_TITLES[code]
    # The one reading of PROBLEM_TYPE_BASE (capacity.settings), which the booking function's
    # settings also validate at cold start. Imported here: settings imports this vocabulary.
    from capacity.settings import problem_type_base

    base = problem_type_base()
    body: dict[str, Any] = {"type": base + code.value, "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    body["code"] = code.value
    kept = {k: v for k, v in extra.items() if v is not None or k in _NULLABLE_EXTRAS}
    for key in sorted(kept, key=lambda k: (_EXTRA_ORDER.get(k, len(_EXTRA_ORDER)), k)):
        body[key] = kept[key]
    return body


# Each code is a section of docs/problems.md; a deployment points this at its published copy.
DEFAULT_PROBLEM_TYPE_BASE = "https://github.com/capacity-engine/capacity-engine/blob/main/docs/problems.md#"
_EXTRA_ORDER = {name: n for n, name in enumerate(("errors", "requested", "remainingCovers", "alternatives"))}


# remainingCovers null means "unlimited" in a capacity answer, so it is kept when None.
_NULLABLE_EXTRAS = frozenset({"remainingCovers"})


@dataclass
class ProblemError(Exception):
    """A refusal the caller can act on; the handler turns it into problem+json."""

    code: ProblemCode
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.code.value}: {self.detail}")

    @property
    def status(self) -> int:
        return PROBLEM_TITLES[self.code][0]

    def body(self, instance: str | None = None) -> dict[str, Any]:
        return problem_body(self.code, self.detail, instance=instance, **self.extra)
