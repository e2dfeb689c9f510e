"""The roll-up's pure parts: the window, slots by UTC hour across time zones and clock changes,
the hour totals."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from capacity.rollup import HourTotals, RollupSummary, TableResult, slots_in_window, window
from capacity.rules import Override, RestaurantRules, WeeklyRule

RID = UUID("11111111-2222-4333-8444-555555555555")
LONDON = ZoneInfo("Europe/London")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def every_day(start: str, end: str, max_covers: int | None) -> RestaurantRules:
    return RestaurantRules(
        weekly=tuple(
            WeeklyRule(d, dt.time.fromisoformat(start), dt.time.fromisoformat(end), max_covers) for d in range(1, 8)
        )
    )


class TestWindow:
    @pytest.mark.parametrize("now", [utc(2030, 6, 14, 19, 30), utc(2030, 6, 14, 19, 0), utc(2030, 6, 14, 19, 59, 59)])
    def test_whole_hours_before_the_current_one_plus_the_current_one(self, now):
        assert window(now, 3) == (utc(2030, 6, 14, 16), utc(2030, 6, 14, 20))

    def test_an_aware_time_elsewhere_is_taken_in_utc(self):
        now = dt.datetime(2030, 6, 14, 20, 30, tzinfo=LONDON)  # 19:30 UTC
        assert window(now, 1) == (utc(2030, 6, 14, 18), utc(2030, 6, 14, 20))

    def test_at_least_one_hour(self):
        with pytest.raises(ValueError, match="at least 1"):
            window(utc(2030, 6, 14, 19), 0)


class TestSlotsInWindow:
    def test_london_summer_evening(self):
        slots = slots_in_window(
            RID, every_day("17:00", "22:00", 20), LONDON, utc(2030, 6, 14, 16), utc(2030, 6, 14, 20)
        )
        by_hour = Counter(s.hour.hour for s in slots)
        assert by_hour == {16: 4, 17: 4, 18: 4, 19: 4}
        assert (slots[0].date, slots[0].time, slots[0].max_covers) == (dt.date(2030, 6, 14), dt.time(17, 0), 20)
        assert slots[-1].time == dt.time(20, 45)

    def test_unlimited_and_closed_slots_have_no_utilization(self):
        rules = RestaurantRules(
            weekly=every_day("17:00", "22:00", 20).weekly,
            overrides=(
                Override(dt.date(2030, 6, 14), None, dt.time(17), dt.time(18)),
                Override(dt.date(2030, 6, 14), 0, dt.time(18), dt.time(19)),
            ),
        )
        slots = slots_in_window(RID, rules, LONDON, utc(2030, 6, 14, 16), utc(2030, 6, 14, 20))
        assert Counter(s.hour.hour for s in slots) == {18: 4, 19: 4}

    def test_a_window_across_local_midnight_takes_both_dates(self):
        tokyo = ZoneInfo("Asia/Tokyo")  # UTC+9: 14:00-16:00 UTC is 23:00-01:00 local
        slots = slots_in_window(RID, every_day("00:00", "00:00", 10), tokyo, utc(2030, 6, 14, 14), utc(2030, 6, 14, 16))
        assert [(s.date.day, s.time.hour) for s in slots][::4] == [(14, 23), (15, 0)]

    def test_clocks_going_back_count_the_repeated_hour_once(self):
        # 2030-10-27: 02:00 BST becomes 01:00 GMT, so local 01:00-01:45 happens twice.
        slots = slots_in_window(
            RID, every_day("00:00", "00:00", 10), LONDON, utc(2030, 10, 26, 23), utc(2030, 10, 27, 3)
        )
        assert Counter(s.hour for s in slots) == {
            utc(2030, 10, 26, 23): 4,
            utc(2030, 10, 27, 0): 4,
            utc(2030, 10, 27, 2): 4,
        }
        assert len({(s.date, s.time) for s in slots}) == len(slots)

    def test_clocks_going_forward_skip_the_missing_hour(self):
        # 2030-03-31: 01:00 GMT becomes 02:00 BST; local 01:00-01:45 does not happen.
        slots = slots_in_window(RID, every_day("00:00", "00:00", 10), LONDON, utc(2030, 3, 31, 0), utc(2030, 3, 31, 3))
        assert Counter(s.hour.hour for s in slots) == {0: 4, 1: 4, 2: 4}
        assert dt.time(1, 30) not in {s.time for s in slots}
        assert [s.time for s in slots if s.hour.hour == 1] == [dt.time(2, m) for m in (0, 15, 30, 45)]


class TestTotals:
    def test_no_requests_and_no_capacity_have_no_rates(self):
        totals = HourTotals(utc(2030, 6, 14, 18), 0, 0, 0, 0, 0, 0, 0)
        assert (totals.success_rate, totals.conflict_rate, totals.utilization) == (None, None, None)
        assert totals.as_json()["successRate"] is None

    def test_rates(self):
        totals = HourTotals(utc(2030, 6, 14, 18), 2, 3, 2, 1, 1, 15, 60)
        assert totals.as_json() == {
            "hour": "2030-06-14T18:00:00Z",
            "restaurants": 2,
            "requests": 3,
            "successes": 2,
            "conflicts": 1,
            "retryExhausted": 1,
            "coversBooked": 15,
            "capacityCovers": 60,
            "successRate": 0.666667,
            "conflictRate": 0.333333,
            "utilization": 0.25,
        }

    def test_summary_json(self):
        totals = HourTotals(utc(2030, 6, 14, 18), 0, 0, 0, 0, 0, 0, 0)
        summary = RollupSummary(
            utc(2030, 6, 14, 16), utc(2030, 6, 14, 20), 3, TableResult(4, 1, 0), TableResult(0, 0, 2), 7, totals, ["x"]
        )
        data = summary.as_json()
        assert (data["windowStart"], data["windowEnd"], data["hours"]) == (
            "2030-06-14T16:00:00Z",
            "2030-06-14T20:00:00Z",
            3,
        )
        assert data["live"] == {"rows": 4, "changed": 1, "removed": 0}
        assert data["synthetic"] == {"rows": 0, "changed": 0, "removed": 2}
        assert (data["purgedIdempotencyKeys"], data["skippedRestaurants"]) == (7, ["x"])
