"""Capacity resolution, as the contract states it: every precedence branch, unlimited, closed,
no rule, the slot grid, alternatives."""

from __future__ import annotations

import datetime as dt

import pytest

from capacity.rules import CLOSED, Capacity, Override, RestaurantRules, WeeklyRule

FRIDAY = dt.date(2030, 6, 14)
SATURDAY = dt.date(2030, 6, 15)


def t(value: str) -> dt.time:
    return dt.time.fromisoformat(value)


def evening(max_covers: int | None = 40, weekday: int = 5) -> WeeklyRule:
    return WeeklyRule(weekday, t("17:00"), t("22:00"), max_covers)


def rules(*overrides: Override, weekly: tuple[WeeklyRule, ...] | None = None, slot: int = 15) -> RestaurantRules:
    return RestaurantRules(
        slot_minutes=slot, weekly=weekly if weekly is not None else (evening(),), overrides=overrides
    )


class TestResolution:
    def test_weekly_rule_holds_the_time(self):
        assert rules().capacity(FRIDAY, t("19:00")) == Capacity(40, "weekly")

    def test_weekly_range_is_start_inclusive_end_exclusive(self):
        r = rules()
        assert r.capacity(FRIDAY, t("17:00")).max_covers == 40
        assert r.capacity(FRIDAY, t("21:45")).max_covers == 40
        assert r.capacity(FRIDAY, t("22:00")) == CLOSED
        assert r.capacity(FRIDAY, t("16:45")) == CLOSED

    def test_weekly_rule_of_another_weekday_does_not_apply(self):
        assert rules().capacity(SATURDAY, t("19:00")) == CLOSED

    def test_no_rule_at_all_is_closed(self):
        assert rules(weekly=()).capacity(FRIDAY, t("19:00")).closed

    def test_whole_date_override_beats_weekly(self):
        r = rules(Override(FRIDAY, 10, reason="short staffed"))
        assert r.capacity(FRIDAY, t("19:00")) == Capacity(10, "date-override")

    def test_whole_date_override_opens_hours_the_weekly_rule_does_not(self):
        r = rules(Override(FRIDAY, 8))
        assert r.capacity(FRIDAY, t("09:00")).max_covers == 8

    def test_ranged_override_beats_whole_date_override(self):
        r = rules(Override(FRIDAY, 10), Override(FRIDAY, 4, t("18:00"), t("20:00")))
        assert r.capacity(FRIDAY, t("19:00")) == Capacity(4, "override")
        assert r.capacity(FRIDAY, t("20:00")) == Capacity(10, "date-override")

    def test_narrowest_ranged_override_wins(self):
        wide = Override(FRIDAY, 30, t("17:00"), t("22:00"))
        narrow = Override(FRIDAY, 5, t("19:00"), t("19:30"))
        r = rules(wide, narrow)
        assert r.capacity(FRIDAY, t("19:15")).max_covers == 5
        assert r.capacity(FRIDAY, t("19:30")).max_covers == 30
        # order of the overrides does not matter
        assert rules(narrow, wide).capacity(FRIDAY, t("19:15")).max_covers == 5

    @pytest.mark.parametrize(
        ("a", "b", "expected"),
        [(12, 5, 5), (None, 7, 7), (0, None, 0), (None, None, None), (3, 0, 0)],
    )
    def test_overlapping_rules_of_the_same_rank_resolve_to_the_lowest_capacity(self, a, b, expected):
        ranged = [Override(FRIDAY, a, t("19:00"), t("20:00")), Override(FRIDAY, b, t("18:30"), t("19:30"))]
        whole = [Override(FRIDAY, a), Override(FRIDAY, b)]
        weekly = (evening(a), WeeklyRule(5, t("18:00"), t("20:00"), b))
        for order in (1, -1):  # whichever comes first in the seed
            assert rules(*ranged[::order]).capacity(FRIDAY, t("19:15")).max_covers == expected
            assert rules(*whole[::order]).capacity(FRIDAY, t("19:15")).max_covers == expected
            assert rules(weekly=weekly[::order]).capacity(FRIDAY, t("19:15")).max_covers == expected

    def test_ranged_override_outside_its_range_falls_through_to_weekly(self):
        r = rules(Override(FRIDAY, 4, t("18:00"), t("20:00")))
        assert r.capacity(FRIDAY, t("21:00")) == Capacity(40, "weekly")

    def test_override_of_another_date_does_not_apply(self):
        assert rules(Override(SATURDAY, 0)).capacity(FRIDAY, t("19:00")).max_covers == 40

    def test_null_max_covers_is_unlimited(self):
        c = rules(Override(FRIDAY, None)).capacity(FRIDAY, t("19:00"))
        assert c.max_covers is None and not c.closed
        assert c.fits(10_000, 50)
        assert c.remaining(10_000) is None

    def test_zero_max_covers_is_closed_even_inside_weekly_hours(self):
        c = rules(Override(FRIDAY, 0)).capacity(FRIDAY, t("19:00"))
        assert c.closed and not c.fits(0, 1)

    def test_ranged_zero_override_closes_only_its_range(self):
        r = rules(Override(FRIDAY, 0, t("18:00"), t("19:00")))
        assert r.capacity(FRIDAY, t("18:30")).closed
        assert r.capacity(FRIDAY, t("19:00")).max_covers == 40

    def test_unlimited_weekly_rule(self):
        assert rules(weekly=(evening(None),)).capacity(FRIDAY, t("19:00")).max_covers is None

    def test_midnight_end_means_end_of_day(self):
        late = WeeklyRule(5, t("18:00"), t("00:00"), 16)
        r = rules(weekly=(late,))
        assert r.capacity(FRIDAY, t("23:45")).max_covers == 16
        assert r.capacity(FRIDAY, t("00:00")).closed
        wide = Override(FRIDAY, 3, t("20:00"), t("00:00"))
        narrow = Override(FRIDAY, 2, t("23:00"), t("00:00"))
        assert rules(wide, narrow, weekly=(late,)).capacity(FRIDAY, t("23:30")).max_covers == 2


class TestFitAndRemaining:
    @pytest.mark.parametrize(
        ("booked", "party", "fits"), [(0, 20, True), (18, 2, True), (18, 3, False), (20, 1, False)]
    )
    def test_fits_is_booked_plus_party_within_max(self, booked, party, fits):
        assert Capacity(20, "weekly").fits(booked, party) is fits

    def test_remaining_never_negative(self):
        assert Capacity(20, "weekly").remaining(25) == 0
        assert Capacity(20, "weekly").remaining(5) == 15


class TestGrid:
    @pytest.mark.parametrize(("time", "on"), [("19:00", True), ("19:15", True), ("19:10", False), ("00:00", True)])
    def test_fifteen_minute_grid(self, time, on):
        assert rules().on_grid(t(time)) is on

    def test_thirty_minute_grid(self):
        r = rules(slot=30)
        assert r.on_grid(t("19:30")) and not r.on_grid(t("19:15"))

    def test_seconds_are_off_grid(self):
        assert not rules().on_grid(dt.time(19, 0, 30))

    def test_bookable_slots_are_the_open_grid_times(self):
        slots = rules(Override(FRIDAY, 0, t("18:00"), t("19:00"))).bookable_slots(FRIDAY)
        times = [s.strftime("%H:%M") for s, _ in slots]
        assert times[0] == "17:00" and times[-1] == "21:45"
        assert "18:00" not in times and "18:45" not in times and "19:00" in times
        assert len(times) == 20 - 4

    def test_closed_day_has_no_bookable_slots(self):
        assert rules(Override(FRIDAY, 0)).bookable_slots(FRIDAY) == []


class TestAlternatives:
    def test_nearest_first_ties_to_the_earlier_slot(self):
        alts = rules().alternatives(FRIDAY, t("19:00"), 2, {t("19:00"): 40})
        assert [a.time.strftime("%H:%M") for a in alts] == ["18:45", "19:15", "18:30", "19:30", "18:15"]
        assert all(a.remaining_covers == 40 for a in alts)

    def test_only_slots_that_fit_the_party(self):
        booked = {t("18:45"): 39, t("19:15"): 35, t("19:00"): 40}
        alts = rules().alternatives(FRIDAY, t("19:00"), 5, booked)
        times = [a.time.strftime("%H:%M") for a in alts]
        assert "18:45" not in times
        assert times[0] == "19:15" and alts[0].remaining_covers == 5

    def test_at_the_start_of_the_day_alternatives_run_later(self):
        alts = rules().alternatives(FRIDAY, t("17:00"), 2, {})
        assert [a.time.strftime("%H:%M") for a in alts] == ["17:15", "17:30", "17:45", "18:00", "18:15"]

    def test_at_the_end_of_the_day_alternatives_run_earlier(self):
        alts = rules().alternatives(FRIDAY, t("21:45"), 2, {})
        assert [a.time.strftime("%H:%M") for a in alts] == ["21:30", "21:15", "21:00", "20:45", "20:30"]

    def test_nothing_fits(self):
        full = {s: 40 for s, _ in rules().bookable_slots(FRIDAY)}
        assert rules().alternatives(FRIDAY, t("19:00"), 1, full) == []

    def test_party_larger_than_any_slot(self):
        assert rules(weekly=(evening(4),)).alternatives(FRIDAY, t("19:00"), 5, {}) == []

    def test_unlimited_slots_are_offered_with_null_remaining(self):
        alts = rules(Override(FRIDAY, None)).alternatives(FRIDAY, t("12:00"), 50, {})
        assert len(alts) == 5 and all(a.remaining_covers is None for a in alts)

    def test_not_before_drops_past_slots(self):
        alts = rules().alternatives(FRIDAY, t("19:00"), 2, {}, not_before=t("19:00"))
        assert [a.time.strftime("%H:%M") for a in alts] == ["19:15", "19:30", "19:45", "20:00", "20:15"]

    def test_closed_date_offers_nothing(self):
        assert rules(Override(FRIDAY, 0)).alternatives(FRIDAY, t("19:00"), 2, {}) == []

    def test_limit(self):
        assert len(rules().alternatives(FRIDAY, t("19:00"), 2, {}, limit=2)) == 2
