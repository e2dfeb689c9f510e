"""`capctl load` without Artillery or a server: settings validation (one-line errors, exit 2),
the plan (date, hot slots), the progress condenser and the availability-only verification."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from capctl import cli
from capctl import load as load_test
from capctl.errors import UserError

R1 = "6f1c2a4e-8b1d-4c3e-9a7f-1d2b3c4d5e6f"
R2 = "0b5e8c1a-3f2d-4e6b-8a9c-7d1e2f3a4b5c"
GOOD_ENV = {
    "LOAD_TEST_BASE_URL": "http://127.0.0.1:3000",
    "LOAD_TEST_SERVICE_KEY": "key-1",
    "LOAD_TEST_RESTAURANT_ID": f"{R1}, {R2}",
}


@pytest.fixture
def artillery_bin(tmp_path: Path) -> str:
    fake = tmp_path / "artillery"
    fake.write_text("#!/bin/sh\nexit 0\n")
    return str(fake)


def args(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "scenario": None,
        "smoke": False,
        "keep": False,
        "run_id": None,
        "report_dir": Path("reports/load-tests"),
        "days": 7,
        "no_db": True,
        "probe_rate_limit": False,
        "allow_remote": False,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def options(env: dict[str, str], **overrides: Any) -> load_test.LoadOptions:
    return load_test.options_from(args(**overrides), env)


# --------------------------------------------------------------------------- settings


def test_valid_environment_gives_the_options(artillery_bin: str) -> None:
    opts = options({**GOOD_ENV, "ARTILLERY_BIN": artillery_bin, "LOAD_TEST_BASE_URL": "http://localhost:3000/"})

    assert opts.base_url == "http://localhost:3000"
    assert opts.restaurant_ids == [R1, R2]
    assert opts.scenario.name == "capacity-load.yml"
    assert opts.database_url is None  # --no-db
    assert opts.probe_seconds == 0


def test_smoke_picks_the_reduced_scenario_and_probe_adds_its_phase(artillery_bin: str) -> None:
    opts = options({**GOOD_ENV, "ARTILLERY_BIN": artillery_bin}, smoke=True, probe_rate_limit=True)

    assert opts.scenario.name == "capacity-smoke.yml"
    assert opts.probe_seconds > 0 and opts.probe_rate > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"LOAD_TEST_BASE_URL": ""}, "LOAD_TEST_BASE_URL is not set: the API to load, e.g. http://127.0.0.1:3000"),
        (
            {"LOAD_TEST_BASE_URL": "ftp://127.0.0.1/x"},
            "LOAD_TEST_BASE_URL must be an http(s) URL, got 'ftp://127.0.0.1/x'",
        ),
        (
            {"LOAD_TEST_BASE_URL": "https://staging.example.com"},
            "LOAD_TEST_BASE_URL points at staging.example.com, not this machine: pass --allow-remote to load it",
        ),
        ({"LOAD_TEST_SERVICE_KEY": " "}, "LOAD_TEST_SERVICE_KEY is not set: the x-api-key the API accepts"),
        (
            {"LOAD_TEST_RESTAURANT_ID": ""},
            "LOAD_TEST_RESTAURANT_ID is not set: one or more restaurant ids, comma-separated",
        ),
        ({"LOAD_TEST_RESTAURANT_ID": f"{R1},trattoria"}, "LOAD_TEST_RESTAURANT_ID: 'trattoria' is not a UUID"),
        ({"LOAD_TEST_RESTAURANT_ID": " , "}, "LOAD_TEST_RESTAURANT_ID holds no restaurant id"),
        ({"LOAD_TEST_DATE": "14/06/2030"}, "LOAD_TEST_DATE must be YYYY-MM-DD, got '14/06/2030'"),
        (
            {"LOAD_TEST_DATE": "2020-01-01"},
            "LOAD_TEST_DATE 2020-01-01 is not in the future: the API refuses past slots",
        ),
    ],
)
def test_bad_settings_are_one_line_errors(change: dict[str, str], message: str, artillery_bin: str) -> None:
    with pytest.raises(UserError) as caught:
        options({**GOOD_ENV, "ARTILLERY_BIN": artillery_bin, **change})

    assert str(caught.value) == message
    assert caught.value.code == 2


def test_the_probe_can_be_switched_on_from_the_environment(artillery_bin: str) -> None:
    env = {**GOOD_ENV, "ARTILLERY_BIN": artillery_bin}

    assert options({**env, "LOAD_TEST_PROBE_RATE_LIMIT": "true"}).probe_seconds > 0
    assert options({**env, "LOAD_TEST_PROBE_RATE_LIMIT": "0"}).probe_seconds == 0
    with pytest.raises(UserError, match=r"^LOAD_TEST_PROBE_RATE_LIMIT must be true or false, got 'maybe'$"):
        options({**env, "LOAD_TEST_PROBE_RATE_LIMIT": "maybe"})


def test_a_remote_target_needs_allow_remote(artillery_bin: str) -> None:
    env = {**GOOD_ENV, "ARTILLERY_BIN": artillery_bin, "LOAD_TEST_BASE_URL": "https://staging.example.com"}

    assert options(env, allow_remote=True).base_url == "https://staging.example.com"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"run_id": "has space"}, "--run-id must be 1-64 characters of A-Z a-z 0-9 . _ : -"),
        ({"run_id": "x" * 65}, "--run-id must be 1-64 characters of A-Z a-z 0-9 . _ : -"),
        ({"days": 0}, "--days must be between 1 and 31"),
        ({"scenario": Path("load/nope.yml")}, "scenario load/nope.yml does not exist"),
    ],
)
def test_bad_options_are_one_line_errors(overrides: dict[str, Any], message: str, artillery_bin: str) -> None:
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        options({**GOOD_ENV, "ARTILLERY_BIN": artillery_bin}, **overrides)


def test_missing_artillery_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(load_test, "REPO_ROOT", tmp_path)

    with pytest.raises(
        UserError, match=r"^Artillery is not installed \(node_modules/.bin/artillery\): run `make setup`"
    ):
        load_test.find_artillery({})


def test_cli_prints_one_line_and_exits_2_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("LOAD_TEST_BASE_URL", "LOAD_TEST_SERVICE_KEY", "LOAD_TEST_RESTAURANT_ID"):
        monkeypatch.delenv(name, raising=False)

    code = cli.main(["load", "--smoke"])

    err = capsys.readouterr().err
    assert code == 2
    assert err == "capctl: error: LOAD_TEST_BASE_URL is not set: the API to load, e.g. http://127.0.0.1:3000\n"


def test_cli_cleanup_refuses_live_data(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["cleanup", "--source", "api"])

    assert code == 2
    assert capsys.readouterr().err == (
        "capctl: error: refusing to delete bookings of source 'api': only synthetic sources (load-test) "
        "can be cleaned up\n"
    )


# --------------------------------------------------------------------------- the plan


def slots(times: list[str], max_covers: int | None = 40, booked: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "time": t,
            "maxCovers": max_covers,
            "bookedCovers": booked,
            "remainingCovers": None if max_covers is None else max_covers - booked,
        }
        for t in times
    ]


EVENING = [f"{h}:{m:02d}" for h in range(17, 22) for m in (0, 15, 30, 45)]


class FakeApi:
    """Availability by (restaurant, date); unknown pairs are closed days."""

    def __init__(self, days: dict[tuple[str, dt.date], list[dict[str, Any]]]) -> None:
        self.days = days
        self.calls: list[tuple[str, dt.date]] = []

    def availability(self, restaurant_id: str, date: dt.date) -> list[dict[str, Any]]:
        self.calls.append((restaurant_id, date))
        return self.days.get((restaurant_id, date), [])


def test_hot_slots_are_three_adjacent_limited_slots_mid_service() -> None:
    hot = load_test.choose_hot_slots(R1, dt.date(2030, 6, 14), slots(EVENING))

    assert [h["time"] for h in hot] == ["19:15", "19:30", "19:45"]
    assert {h["restaurantId"] for h in hot} == {R1}


def test_hot_slots_skip_full_and_unlimited_slots() -> None:
    day = slots(EVENING[:8], booked=40) + slots(EVENING[8:12]) + slots(EVENING[12:], max_covers=None)

    hot = load_test.choose_hot_slots(R1, dt.date(2030, 6, 14), day)

    # 17:00-18:45 full, 19:00-19:45 limited with room, 20:00 on unlimited: the middle of 19:00-19:45.
    assert [h["time"] for h in hot] == ["19:15", "19:30", "19:45"]


def test_the_date_is_the_first_one_30_days_ahead_with_room_everywhere() -> None:
    today = dt.date(2030, 5, 1)
    first = today + dt.timedelta(days=30)
    api = FakeApi(
        {
            (R1, first): slots(EVENING),  # R2 closed that day
            (R1, first + dt.timedelta(days=1)): slots(EVENING, booked=40),  # R1 full
            (R2, first + dt.timedelta(days=1)): slots(EVENING),
            (R1, first + dt.timedelta(days=2)): slots(EVENING),
            (R2, first + dt.timedelta(days=2)): slots(EVENING),
        }
    )

    assert load_test.choose_date(api, [R1, R2], today) == first + dt.timedelta(days=2)  # type: ignore[arg-type]


def test_no_suitable_date_asks_for_one() -> None:
    with pytest.raises(UserError, match=r"set LOAD_TEST_DATE$"):
        load_test.choose_date(FakeApi({}), [R1], dt.date(2030, 5, 1))  # type: ignore[arg-type]


def test_plan_spreads_over_the_days_and_leaves_closed_days_out(artillery_bin: str) -> None:
    main = dt.date(2030, 6, 14)
    api = FakeApi(
        {(R1, main): slots(EVENING), (R1, main + dt.timedelta(days=2)): slots(EVENING[:4]), (R2, main): slots(EVENING)}
    )
    opts = options({**GOOD_ENV, "ARTILLERY_BIN": artillery_bin, "LOAD_TEST_DATE": main.isoformat()}, days=3)

    plan = load_test.make_plan(api, opts, "run-1")  # type: ignore[arg-type]
    doc = json.loads(plan.file().dumps())  # the plan file the diners read

    assert plan.dates == [main, main + dt.timedelta(days=1), main + dt.timedelta(days=2)]
    assert len(api.calls) == 6  # every restaurant x every date, once
    assert doc["runId"] == "run-1"
    assert [(r["id"], r["date"], len(r["times"])) for r in doc["restaurants"]] == [
        (R1, "2030-06-14", 20),
        (R1, "2030-06-16", 4),
        (R2, "2030-06-14", 20),
    ]
    assert doc["hotDates"] == ["2030-06-14", "2030-06-16"]
    assert [h["time"] for h in doc["hot"]] == ["19:15", "19:30", "19:45"]
    assert doc["hot"][0] == {"restaurantId": R1, "date": "2030-06-14", "time": "19:15"}
    assert list(doc) == ["runId", "restaurants", "hot", "hotDates", "maxPartySize"]
    assert doc["maxPartySize"] == 4


def test_plan_refuses_a_closed_test_date(artillery_bin: str) -> None:
    opts = options({**GOOD_ENV, "ARTILLERY_BIN": artillery_bin, "LOAD_TEST_DATE": "2030-06-16"}, days=1)

    with pytest.raises(UserError, match=f"^restaurant {R1} has no open slot on 2030-06-16"):
        load_test.make_plan(FakeApi({}), opts, "run-1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- availability verification


def test_availability_verification_finds_an_over_capacity_slot() -> None:
    main = dt.date(2030, 6, 14)
    before = slots(["19:00", "19:15"])
    after = [
        {"time": "19:00", "maxCovers": 40, "bookedCovers": 40, "remainingCovers": 0},
        {"time": "19:15", "maxCovers": 40, "bookedCovers": 43, "remainingCovers": -3},
    ]
    plan = load_test.Plan("run-1", [R1], [main], {(R1, main): before}, [])

    verified = load_test.verify_by_availability(FakeApi({(R1, main): after}), plan, created_covers=83)  # type: ignore[arg-type]

    assert verified.mode == "availability"
    assert [(s["time"], s["confirmedCovers"]) for s in verified.over_capacity] == [("19:15", 43)]
    assert len(verified.warnings) == 1  # covers grew by exactly what the 201s hold


def test_availability_verification_warns_when_covers_do_not_add_up() -> None:
    main = dt.date(2030, 6, 14)
    plan = load_test.Plan("run-1", [R1], [main], {(R1, main): slots(["19:00"])}, [])
    after = slots(["19:00"], booked=10)

    verified = load_test.verify_by_availability(FakeApi({(R1, main): after}), plan, created_covers=12)  # type: ignore[arg-type]

    assert verified.over_capacity == []
    assert "covers booked at the target grew by 10, the run's 201s hold 12" in verified.warnings[1]


# --------------------------------------------------------------------------- progress


ARTILLERY_STDOUT = """Test run id: t3nw9_abc
Phase started: warm-up (index: 0, duration: 3s) 08:51:37(+0000)

Phase started: rate-limit probe (opt-in) (index: 4, duration: 0s) 08:51:52(+0000)

--------------------------------------
Metrics for period to: 08:51:40(+0000) (width: 2.428s)
--------------------------------------

http.codes.200: ................................................................ 14
http.codes.201: ................................................................ 32
http.codes.409: ................................................................ 15
http.codes.500: ................................................................ 2
http.request_rate: ............................................................. 14/sec
http.requests: ................................................................. 63
http.response_time:
  min: ......................................................................... 2
  p95: ......................................................................... 10.1
  p99: ......................................................................... 16.9
load.vusers_in_flight:
  max: ......................................................................... 8

All VUs finished. Total time: 17 seconds

--------------------------------
Summary report @ 08:51:55(+0000)
--------------------------------

http.codes.201: ................................................................ 121

Checks:
ok: maxErrorRate < 0
fail: http.response_time.p99 < 10
"""


def test_progress_condenses_each_period_to_one_line() -> None:
    out = io.StringIO()
    progress = load_test.Progress(out)

    for line in ARTILLERY_STDOUT.splitlines(keepends=True):
        progress.feed(line)
    progress.flush()

    lines = out.getvalue().splitlines()
    assert lines == [
        "  phase warm-up started",
        "  08:51:40     63 req (14/s)  201   32  409   15  429   0  other 2  p95 10 ms  p99 17 ms  diners in flight 8",
        "  All VUs finished. Total time: 17 seconds",
        "  ensure ok: maxErrorRate < 0",
        "  ensure fail: http.response_time.p99 < 10",
    ]
    assert len(progress.lines) == len(ARTILLERY_STDOUT.splitlines())


# --------------------------------------------------------------------------- faults


def test_faults_are_refused_against_a_remote_target(artillery_bin: str) -> None:
    env = {**GOOD_ENV, "ARTILLERY_BIN": artillery_bin, "LOAD_TEST_BASE_URL": "https://api.example.com"}
    with pytest.raises(UserError, match="refused with --allow-remote"):
        options(env, allow_remote=True, faults="db-crash")
    local = {**GOOD_ENV, "ARTILLERY_BIN": artillery_bin}
    with pytest.raises(UserError, match="refused with --allow-remote"):
        options(local, allow_remote=True, faults="instance-kill")


def test_faults_must_be_known_and_need_the_database(artillery_bin: str) -> None:
    env = {**GOOD_ENV, "ARTILLERY_BIN": artillery_bin}
    with pytest.raises(UserError, match="unknown fault 'disk-full'"):
        options(env, faults="db-crash,disk-full")
    with pytest.raises(UserError, match="needs one or more"):
        options(env, faults=" , ")
    with pytest.raises(UserError, match="needs database access"):
        options(env, faults="db-stall")  # --no-db
    assert options(env).faults == []


def test_faults_are_spread_over_the_contention_phase_and_end_before_the_run() -> None:
    from capctl import faults

    phases = [("warm-up", 10.0), ("ramp", 15.0), ("contention", 20.0), ("duplicates", 10.0), ("spread", 15.0)]
    offsets = faults.schedule(["db-crash", "instance-kill", "db-stall"], phases)
    assert offsets == sorted(offsets)
    assert all(25 <= o < 45 for o in offsets)
    smoke = faults.schedule(["db-crash"], [("warm-up", 3.0), ("spread", 3.0)])
    assert smoke and 0 < smoke[0] < 6 - 1
    assert faults.scenario_phases(load_test.resolve_path(load_test.SMOKE_SCENARIO))[1] == ("contention", 5.0)


def test_the_first_phase_start_starts_the_fault_schedule() -> None:
    import threading

    started = threading.Event()
    progress = load_test.Progress(io.StringIO(), started)
    progress.feed("Test run id: t1\n")
    assert not started.is_set()
    progress.feed("Phase started: warm-up (index: 0, duration: 3s) 02:00:00(+0000)\n")
    assert started.is_set()
