"""Scheduled (EventBridge): check every restaurant for alerts and deliver the notices.

The work lives in ``capacity.alerts``; this handler reads its settings at cold start, builds the
configured channels (SNS topic, webhook), runs the check and emits its counts as EMF metrics
(dimensions service and environment only). ``detail.dryRun: true`` evaluates without
delivering or changing state.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from capacity.alerts import AlertChecker
from capacity.db import Database
from capacity.notifiers import notifiers_from_settings
from capacity.outcomes import MetricName
from capacity.scheduled_settings import AlertSettings

# Validated at cold start: a bad setting stops the function here, with the variable's name.
settings = AlertSettings.from_env()
logger = Logger(service=settings.service_name)
metrics = Metrics(namespace=settings.metrics_namespace, service=settings.service_name)
metrics.set_default_dimensions(environment=settings.environment)
tracer = Tracer(service=settings.service_name)
db = Database(settings)
checker = AlertChecker(settings, notifiers_from_settings(settings))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    detail = event.get("detail")
    dry_run = isinstance(detail, dict) and detail.get("dryRun") is True
    logger.info("alert check started", extra={"scheduledTime": event.get("time"), "dryRun": dry_run})
    with db.run("alert check", logger.error) as conn:
        summary = checker.run(conn, dry_run=dry_run)
    for t in summary.transitions:
        logger.info("alert " + t.action.value, extra={k: v for k, v in t.as_json().items() if k != "figures"})
    for d in summary.deliveries:
        log = logger.warning if d.status == "failed" else logger.info
        log("alert delivery", extra=d.as_json())
    if not dry_run:
        # Zeros too: an alarm on "failures > 0" needs datapoints when all is well.
        metrics.add_metric(MetricName.OVERBOOK_DETECTED, MetricUnit.Count, summary.overbook_detected)
        metrics.add_metric(MetricName.ALERTS_OPENED, MetricUnit.Count, summary.opened)
        metrics.add_metric(MetricName.ALERTS_RESOLVED, MetricUnit.Count, summary.resolved)
        metrics.add_metric(MetricName.ALERT_DELIVERY_FAILURES, MetricUnit.Count, summary.delivery_failures)
    return summary.as_json()
