"""The bench's own logic (no timing asserted): how a recorded statement becomes a pgbench command,
how growth is judged, and how targets are read from the figures."""

from __future__ import annotations

import uuid

from bench.pgbench import KEY, _pgbench_sql
from bench.run import targets
from bench.scheduled import _growth, template_timeout
from tests.cfn import load_template


def test_a_recorded_statement_varies_key_and_id_and_escapes_colons_in_literals() -> None:
    booking_id = str(uuid.uuid4())
    recorded = (
        f"INSERT INTO bookings (id, key, booking_time, meta) VALUES ('{uuid.UUID(booking_id).hex}'::uuid, "
        f"'{KEY}', '19:00:00'::time, '{{\"time\": \"19:00\", \"it''s\": 1}}'::jsonb);"
    )
    rendered = _pgbench_sql(recorded, booking_id)
    assert "gen_random_uuid()" in rendered and booking_id not in rendered
    assert "('eng-' || :k::text)" in rendered and KEY not in rendered
    # pgbench would read ":00" as a variable: colons inside literals become \x3a escapes
    assert "E'19\\x3a00\\x3a00'::time" in rendered
    assert "'' s" not in rendered and "it''s" in rendered
    assert rendered.count(":") == rendered.count("::") * 2 + 1  # casts and the one :k are all that remain
    assert not rendered.endswith(";")


def test_growth_is_judged_on_the_largest_step_and_extrapolated_to_half_the_timeout() -> None:
    linear = _growth([100, 1000, 10000], [0.5, 2.0, 20.0], timeout=120)
    assert linear["linear"] is True and linear["largest_size_within_half_timeout"] == 30000
    assert [s["time_ratio"] for s in linear["steps"]] == [4.0, 10.0]
    quadratic = _growth([100, 1000, 10000], [0.1, 1.0, 100.0], timeout=120)
    assert quadratic["linear"] is False
    timed_out = _growth([100, 1000, 10000], [1.0, 10.0, None], timeout=120)
    assert timed_out["linear_judged_on"] == [100, 1000] and timed_out["largest_size_within_half_timeout"] == 6000


def test_the_template_timeouts_are_read_from_the_functions_blocks() -> None:
    resources = load_template()["Resources"]
    for name in ("CheckAlertsFunction", "RollupMetricsFunction"):
        assert template_timeout(name) == resources[name]["Properties"]["Timeout"]


def test_targets_say_met_missed_or_not_measured() -> None:
    results = {
        "hot_slot_50": {
            "contenders": {
                "engine": {"ratio_to_raw": 0.7, "ratio_to_engine_sql": 0.8},
                "handler": {"ratio_to_raw": 0.5},
                "http": {"ratio_to_raw": 0.2},
            }
        },
        "hot_slot_200": {"over_capacity_slots": 0, "retries_exhausted": 3},
        "scheduled": {
            "alert_check": {
                "sizes": [{"restaurants": 1000, "function_s": 20.0}, {"restaurants": 10_000, "function_s": None}],
                "linear": True,
                "timeout_s": 120,
            }
        },
    }
    met = {t["name"]: t["met"] for t in targets(results)}
    assert met["engine / raw_sql at 50 clients"] is True
    assert met["engine / engine_sql at 50 clients"] is False
    assert met["handler / raw_sql at 50 clients"] is True
    assert met["http / raw_sql at 50 clients"] is False
    assert met["over_capacity_slots at 200 clients"] is True
    assert met["retries_exhausted at 200 clients"] is False
    assert met["create_booking cold-start ratio to powertools+psycopg+pydantic"] is None
    assert met["alert check, 10,000 restaurants (s)"] is False  # timed out
