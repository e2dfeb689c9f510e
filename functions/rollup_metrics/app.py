"""Scheduled (EventBridge): re-aggregate the trailing hours into capacity_metrics_hourly.

The work lives in ``capacity.rollup``; this handler reads its settings at cold start, runs it,
and emits the last complete hour's live totals as EMF metrics (dimensions service and
environment only). An event may ask for a longer window with ``detail.hours`` (a backfill).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from capacity.db import Database
from capacity.outcomes import MetricName
from capacity.rollup import run_rollup
from capacity.scheduled_settings import RollupSettings

MAX_HOURS = 24 * 31

# Validated at cold start: a bad setting stops the function here, with the variable's name.
settings = RollupSettings.from_env()
logger = Logger(service=settings.service_name)
metrics = Metrics(namespace=settings.metrics_namespace, service=settings.service_name)
metrics.set_default_dimensions(environment=settings.environment)
tracer = Tracer(service=settings.service_name)
db = Database(settings)


def _hours(event: dict[str, Any]) -> int:
    detail = event.get("detail")
    requested = detail.get("hours") if isinstance(detail, dict) else None
    if requested is None:
        return settings.rollup_hours
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= MAX_HOURS:
        raise ValueError(f"detail.hours must be an integer from 1 to {MAX_HOURS}")
    return requested


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    hours = _hours(event)
    logger.info("roll-up started", extra={"scheduledTime": event.get("time"), "hours": hours})
    with db.run("roll-up", logger.error) as conn:
        summary = run_rollup(conn, hours=hours)
    result = summary.as_json()
    last = summary.last_hour
    metrics.add_metric(MetricName.ROLLUP_ROWS, MetricUnit.Count, summary.live.changed + summary.synthetic.changed)
    metrics.add_metric(MetricName.ROLLUP_REQUESTS, MetricUnit.Count, last.requests)
    # A rate without requests (or capacity) is undefined, not zero: no datapoint.
    if last.success_rate is not None:
        metrics.add_metric(MetricName.ROLLUP_SUCCESS_RATE, MetricUnit.Percent, round(100 * last.success_rate, 4))
    if last.conflict_rate is not None:
        metrics.add_metric(MetricName.ROLLUP_CONFLICT_RATE, MetricUnit.Percent, round(100 * last.conflict_rate, 4))
    if last.utilization is not None:
        metrics.add_metric(MetricName.ROLLUP_UTILIZATION, MetricUnit.Percent, round(100 * last.utilization, 4))
    metrics.add_metadata("hour", result["lastHour"]["hour"])
    logger.info("roll-up finished", extra={"summary": result})
    return result
