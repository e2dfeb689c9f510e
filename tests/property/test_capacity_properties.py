"""Property-based (hypothesis): capacity resolution agrees with a small reference model written
here, and random weekly rules, overrides and booking/cancel sequences never put a slot over its
capacity — against the real PostgreSQL, through the booking service the handler calls."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capacity.booking import BookingService, Caller
from capacity.db import Database
from capacity.models import BookingRequest
from capacity.outcomes import ProblemError
from capacity.rules import Override, RestaurantRules, WeeklyRule
from capacity.settings import BookingSettings
from capctl.seed import SeedFile, apply_seed

DAY = 24 * 60
BOUNDARIES = list(range(0, DAY, 30))  # rule edges on a 30-minute grid
BASE_DATE = dt.date.today() + dt.timedelta(days=20)  # inside any booking horizon, never begun
DATES = [BASE_DATE + dt.timedelta(days=n) for n in range(3)]


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def as_time(minutes: int) -> dt.time:
    return dt.time(minutes // 60, minutes % 60)


capacities = st.one_of(st.none(), st.integers(0, 12))


@st.composite
def ranges(draw: Any) -> tuple[int, int]:
    start = draw(st.sampled_from(BOUNDARIES))
    end = draw(st.sampled_from([b for b in [*BOUNDARIES, DAY] if b > start]))
    return start, end


@st.composite
def weekly_rules(draw: Any) -> dict[str, Any]:
    start, end = draw(ranges())
    return {
        "weekdays": draw(st.lists(st.integers(1, 7), min_size=1, max_size=7, unique=True)),
        "start": start,
        "end": end,
        "maxCovers": draw(capacities),
    }


@st.composite
def overrides(draw: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"date": draw(st.sampled_from(DATES)), "maxCovers": draw(capacities)}
    if draw(st.booleans()):
        rule["start"], rule["end"] = draw(ranges())
    return rule


rule_sets = st.tuples(st.lists(weekly_rules(), max_size=4), st.lists(overrides(), max_size=4))


# ---------------------------------------------------------------- the reference model

INF = float("inf")


def reference_capacity(weekly: list[dict[str, Any]], dated: list[dict[str, Any]], date: dt.date, m: int) -> Any:
    """The capacity rules, written plainly: the capacity in force (None = unlimited, 0 = closed)."""

    def covers(rule: dict[str, Any]) -> float:
        return INF if rule["maxCovers"] is None else rule["maxCovers"]

    def undo(value: float) -> int | None:
        return None if value == INF else int(value)

    todays = [o for o in dated if o["date"] == date]
    ranged = [o for o in todays if "start" in o and o["start"] <= m < o["end"]]
    if ranged:
        width = min(o["end"] - o["start"] for o in ranged)
        return undo(min(covers(o) for o in ranged if o["end"] - o["start"] == width))
    whole = [o for o in todays if "start" not in o]
    if whole:
        return undo(min(covers(o) for o in whole))
    matching = [r for r in weekly if date.isoweekday() in r["weekdays"] and r["start"] <= m < r["end"]]
    if matching:
        return undo(min(covers(r) for r in matching))
    return 0


def rules_of(weekly: list[dict[str, Any]], dated: list[dict[str, Any]]) -> RestaurantRules:
    def end(minutes: int) -> dt.time:
        return as_time(minutes % DAY)  # 24:00 is written 00:00, "end of day"

    return RestaurantRules(
        slot_minutes=15,
        weekly=tuple(
            WeeklyRule(d, as_time(r["start"]), end(r["end"]), r["maxCovers"]) for r in weekly for d in r["weekdays"]
        ),
        overrides=tuple(
            Override(
                o["date"],
                o["maxCovers"],
                as_time(o["start"]) if "start" in o else None,
                end(o["end"]) if "start" in o else None,
            )
            for o in dated
        ),
    )


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(rules=rule_sets, date=st.sampled_from(DATES), minute=st.sampled_from(range(0, DAY, 15)))
def test_capacity_resolution_agrees_with_the_reference_model(rules, date, minute):
    weekly, dated = rules
    got = rules_of(weekly, dated).capacity(date, as_time(minute))
    assert got.max_covers == reference_capacity(weekly, dated, date, minute)


def test_the_reference_model_can_disagree():
    # a check that cannot fail is no check: a wrong model (widest override first) disagrees
    dated = [
        {"date": DATES[0], "maxCovers": 5, "start": 1080, "end": 1200},
        {"date": DATES[0], "maxCovers": 9, "start": 1080, "end": 1140},
    ]
    assert rules_of([], dated).capacity(DATES[0], as_time(1095)).max_covers == 9
    assert reference_capacity([], dated, DATES[0], 1095) == 9
    assert reference_capacity([], dated[:1], DATES[0], 1095) == 5


# ---------------------------------------------------------------- against the database

SLOTS = [(d, m) for d in DATES[:2] for m in (17 * 60, 19 * 60, 19 * 60 + 15, 23 * 60 + 45)]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("book"), st.sampled_from(range(len(SLOTS))), st.integers(1, 12)),
        st.tuples(st.just("cancel"), st.integers(0, 1000)),
    ),
    min_size=1,
    max_size=25,
)


def seed_restaurant(conn: Any, weekly: list[dict[str, Any]], dated: list[dict[str, Any]]) -> str:
    rid = str(uuid.uuid4())
    restaurant = {
        "id": rid,
        "name": "Property Trattoria",
        "timezone": "UTC",
        "slotMinutes": 15,
        "maxPartySize": 12,
        "weekly": [{**r, "start": hhmm(r["start"]), "end": hhmm(r["end"] % DAY)} for r in weekly],
        "overrides": [
            {
                "date": o["date"].isoformat(),
                "maxCovers": o["maxCovers"],
                **({"start": hhmm(o["start"]), "end": hhmm(o["end"] % DAY)} if "start" in o else {}),
            }
            for o in dated
        ],
    }
    apply_seed(conn, SeedFile.model_validate({"restaurants": [restaurant]}), actor="property-test")
    return rid


@pytest.mark.integration
def test_booking_and_cancelling_never_exceed_capacity(db_url, conn):
    service = BookingService(Database(BookingSettings.from_env({"DATABASE_URL": db_url})), BookingSettings())
    checked = {"accepted": 0, "refused": 0, "cancelled": 0}

    @settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(rules=rule_sets, ops=operations)
    def run(rules: Any, ops: list[Any]) -> None:
        weekly, dated = rules
        rid = seed_restaurant(conn, weekly, dated)
        model: dict[tuple[dt.date, int], int] = {}  # confirmed covers per slot, as the model sees them
        confirmed: list[tuple[str, tuple[dt.date, int], int]] = []
        for n, op in enumerate(ops):
            if op[0] == "book":
                slot, party = SLOTS[op[1]], op[2]
                capacity = reference_capacity(weekly, dated, *slot)
                request = BookingRequest.model_validate(
                    {
                        "restaurantId": rid,
                        "date": slot[0].isoformat(),
                        "time": hhmm(slot[1]),
                        "partySize": party,
                        "guest": {"name": "Prop"},
                        "source": "load-test",
                    }
                )
                result = service.book(request, Caller(tenant="prop", idempotency_key=f"{rid}-{n}"))
                fits = capacity is None or (capacity > 0 and model.get(slot, 0) + party <= capacity)
                assert (result.status == 201) == fits, (slot, party, capacity, model.get(slot, 0), result.body)
                if result.status == 201:
                    model[slot] = model.get(slot, 0) + party
                    confirmed.append((result.body["booking"]["id"], slot, party))
                    checked["accepted"] += 1
                else:
                    checked["refused"] += 1
            elif confirmed:
                booking_id, slot, party = confirmed.pop(op[1] % len(confirmed))
                body = service.cancel(uuid.UUID(booking_id), "prop").body
                assert body["booking"]["status"] == "cancelled"
                model[slot] -= party
                checked["cancelled"] += 1
        rows = conn.execute(
            "SELECT booking_date, booking_time, sum(party_size) AS covers FROM bookings"
            " WHERE restaurant_id = %s AND status = 'confirmed' GROUP BY 1, 2",
            (rid,),
        ).fetchall()
        stored = {
            (r["booking_date"], r["booking_time"].hour * 60 + r["booking_time"].minute): r["covers"] for r in rows
        }
        assert stored == {slot: covers for slot, covers in model.items() if covers}
        for (date, minute), covers in stored.items():
            capacity = reference_capacity(weekly, dated, date, minute)
            assert capacity is None or covers <= capacity, (date, minute, covers, capacity)

    try:
        run()
    except ProblemError as exc:  # a refusal the sequences never provoke (party within the maximum)
        pytest.fail(f"unexpected refusal {exc}")
    finally:
        service.db.close()
    # the sequences exercised every path
    assert checked["accepted"] and checked["refused"] and checked["cancelled"], checked
