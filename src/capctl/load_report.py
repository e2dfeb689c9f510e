"""The load-test report as typed models: ``reports/load-tests/<stem>.json`` (the
report's published shape, and the fields this project added), and the plan file the diners read.

Field names are snake_case here and camelCase in the JSON (pydantic's ``to_camel``, as the
layer's ``capacity.camel_json``); member order is the order of the fields. Everything added after
the contract's first report has a default, so an earlier report still parses
(:meth:`LoadReport.read`) for the trend of a later one.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from capacity.camel_json import iso_millis
from capctl.cleanup import CleanupResult

# Artillery writes 7 and 13.1 alike: the union keeps each number as written (a float field would
# turn 7 into 7.0 in the JSON).
Number = int | float


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True)


@dataclass(frozen=True)
class EnsureCheck:
    """One of Artillery's ``config.ensure`` checks as its ensure plugin printed it."""

    check: str
    passed: bool


class Target(CamelModel):
    base_url: str
    restaurant_ids: list[str]
    dates: list[str] = Field(default_factory=list)
    restaurant_names: dict[str, str] = Field(default_factory=dict)


class ArtilleryResult(CamelModel):
    # Artillery's own aggregate as it wrote it, passed through untouched (the report promises it):
    # its counters and summaries are Artillery's and the scenario's, so a mapping.
    aggregate: dict[str, Any] | None = None
    exit_code: int | None = None
    ensure: list[EnsureCheck] = Field(default_factory=list)


class SlotCovers(CamelModel):
    """A slot's capacity in force and confirmed covers after the run (``overCapacitySlots``)."""

    restaurant_id: str
    date: str
    time: str
    max_covers: int | None = None  # None: unlimited
    confirmed_covers: int = 0


class SlotAfterRun(SlotCovers):
    """A reconciled slot; ``bookedBefore`` is None for a slot the plan did not show, ``byRun`` for
    a verification without the database."""

    booked_before: int | None = None
    by_run: int | None = None


class SlotFinding(TypedDict):
    """A slot as the verification finds it (load.py), in the report's names: the row
    :class:`SlotAfterRun` reads."""

    restaurantId: str
    date: str
    time: str
    maxCovers: int | None
    confirmedCovers: int
    bookedBefore: int | None
    byRun: int | None


class LedgerFinding(TypedDict):
    """A slot whose slot_usage ledger differs from its confirmed covers (:class:`LedgerMismatch`)."""

    restaurantId: str
    date: str
    time: str
    ledger: int
    confirmedCovers: int


class HotSlot(CamelModel):
    restaurant_id: str
    date: str
    time: str


class LedgerMismatch(CamelModel):
    restaurant_id: str
    date: str
    time: str
    ledger: int
    confirmed_covers: int


class HistoryCheck(CamelModel):
    """A check of the diners' recorded history against the database (capctl.history)."""

    check: str
    passed: bool
    detail: str = ""


class Check(CamelModel):
    """One row of the checks table: every check decides the verdict."""

    name: str
    passed: bool
    detail: str


class ReportVerification(CamelModel):
    mode: str  # "database" or "availability"
    slots: list[SlotAfterRun]
    over_capacity_slots: list[SlotCovers] = Field(default_factory=list)
    responses201: int = 0  # 201s that created a booking (replays left out)
    bookings_stored: int | None = None  # None: not checked (no database)
    duplicate_idempotency_keys: int | None = None
    covers_stored: int | None = None
    ledger_mismatches: list[LedgerMismatch] = Field(default_factory=list)
    hot_slots: list[HotSlot] = Field(default_factory=list)
    acknowledged_lost: int | None = None
    cancellations_lost: int | None = None
    history_checks: list[HistoryCheck] = Field(default_factory=list)
    # capacity.figures' definition: requests that met a conflict / booking requests (outcome events).
    booking_requests: int | None = None
    conflicted_requests: int | None = None
    conflict_rate: Number | None = None
    checks: list[Check] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class Percentiles(CamelModel):
    p50: Number | None = None
    p95: Number | None = None
    p99: Number | None = None


class TimelinePoint(CamelModel):
    """One of Artillery's 10 s periods, reduced to what the charts draw."""

    period: str
    requests: int = 0
    request_rate: Number | None = None
    booking_requests: int = 0
    codes: dict[str, int] = Field(default_factory=dict)  # status code -> answers
    created: int = 0
    replayed: int = 0
    replayed201: int = 0
    replayed409: int = 0
    capacity_exceeded: int = 0
    slot_closed: int = 0
    rate_limited: int = 0
    vusers_created: int = 0
    vusers_completed: int = 0
    vusers_failed: int = 0
    latency_ms: Percentiles = Field(default_factory=Percentiles)
    endpoint_latency_ms: dict[str, Percentiles] = Field(default_factory=dict)  # endpoint name -> latency
    vusers_in_flight: Number | None = None


# A bucket of the run's events: {"t": iso, <event type>: n, …, "requests": n, "conflicts": n}; its
# keys are the event types that occurred, so a mapping ("requests"/"conflicts" are absent from a
# report written before they were counted).
EventsBucket = dict[str, str | int]


def _when(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso_millis(value)
    return value


class Fault(CamelModel):
    """An injected fault and how long the service took to answer a booking again after it."""

    kind: str | None = None
    started_at: str | None = None
    ended_at: str | None = None  # None: never healed
    recovered_after_ms: Number | None = None  # None: no booking answered after it

    @field_validator("started_at", "ended_at", mode="before")
    @classmethod
    def _instant(cls, value: Any) -> Any:
        return _when(value)


class LoadReport(CamelModel):
    run_id: str
    started_at: str
    finished_at: str
    target: Target
    scenario: str = ""
    artillery: ArtilleryResult
    verification: ReportVerification
    events: dict[str, int] = Field(default_factory=dict)  # event type -> the run's events
    timeline: list[TimelinePoint] = Field(default_factory=list)
    events_timeline: list[EventsBucket] = Field(default_factory=list)
    faults: list[Fault] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    passed: bool = False
    # Written only once the cleanup ran or was skipped (null: no database to clean up); a run
    # with --keep has no "cleanup" member.
    cleanup: CleanupResult | None = None

    def as_json(self) -> dict[str, Any]:
        cleaned = "cleanup" in self.model_fields_set
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude=None if cleaned else {"cleanup"})
        return data

    def dumps(self) -> str:
        """The report file's text: indented as before, and with json's number formatting (the
        reports written before the models, and the golden test, have it)."""
        return json.dumps(self.as_json(), indent=2) + "\n"

    @classmethod
    def read(cls, document: Any) -> LoadReport:
        """A report's JSON, of this version or an earlier one (newer fields take defaults);
        pydantic's ValidationError when it is no load-test report."""
        return cls.model_validate(document)


# --------------------------------------------------------------------------- the plan file


class PlanDay(CamelModel):
    id: str  # the restaurant
    date: str
    times: list[str]


class PlanFile(CamelModel):
    """What the diners book (load/processor.js reads it from LOAD_TEST_PLAN)."""

    run_id: str
    restaurants: list[PlanDay]
    hot: list[HotSlot]
    # Evenings the contention phase moves on to when the hot restaurant's date is full.
    hot_dates: list[str]
    max_party_size: int

    def dumps(self) -> str:
        return self.model_dump_json(by_alias=True)
