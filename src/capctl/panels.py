"""One description of the dashboard's panels, for both dashboards that show them.

The CloudWatch dashboard in ``template.yaml`` (``Dashboard`` → ``DashboardBody``) and the local
one of ``capctl dashboard`` are two renderings of :data:`PANELS`: :func:`cloudwatch_widget` gives
the widget a panel is in CloudWatch (``tests/unit/test_panels.py`` fails when the template drifts
from it), and ``capctl.dashboard`` draws the same metrics, statistics and thresholds from what
CloudWatch would receive locally (the EMF records, the roll-up tables, ``alert_state``).

A panel names metrics by ``MetricName`` only; a rate is an :class:`Expression` whose local value
is the one definition in ``capacity.figures``. Alarm thresholds are :class:`Threshold` lines on
the panel whose metric the alarm watches: their values are the template's parameter defaults
(CloudFormation) or the check's settings (``AlertSettings``, locally), never written here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from capacity import figures
from capacity.outcomes import MetricName

NAMESPACE = "${MetricsNamespace}"  # CloudWatch namespace and dimensions, as the template writes them
DIMENSIONS = ("environment", "${Environment}", "service", "capacity-engine")

Stat = Literal["Sum", "Average", "Maximum", "p50", "p90", "p99"]


class Source(StrEnum):
    """Where the local dashboard reads a metric from (CloudWatch gets all of them as EMF)."""

    BOOKING = "booking"  # the create_booking function's EMF records, or else observability_events
    EVENTS = "events"  # observability_events (check_alerts records overbooking there)
    ROLLUP = "rollup"  # capacity_metrics_hourly / _synthetic, the current partial hour included
    ALERTS = "alerts"  # alert_state / alert_deliveries


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric line of a panel (CloudWatch: one row of ``metrics``)."""

    name: MetricName
    stat: Stat | None = None  # None: the panel's stat
    label: str | None = None  # None: CloudWatch labels the line with the metric name
    id: str | None = None  # referred to by an Expression
    visible: bool = True
    period: int | None = None  # None: the panel's period
    right_axis: bool = False

    @property
    def shown_label(self) -> str:
        return self.label or self.name.value


@dataclass(frozen=True, slots=True)
class Expression:
    """A rate of two metric ids: CloudWatch's metric math, and locally ``figure`` x ``scale``."""

    id: str
    expression: str
    label: str
    figure: Callable[[int, int], float | None]  # from capacity.figures: (numerator, denominator)
    numerator: str
    denominator: str
    scale: float = 100.0


@dataclass(frozen=True, slots=True)
class Threshold:
    """An alarm's threshold, drawn on the panel of the metric it guards.

    ``parameter`` is the template parameter holding the value (``None``: the alarm's literal
    ``value``), ``setting`` the ``AlertSettings`` field check_alerts compares with locally.
    """

    alarm: str  # logical id of the alarm in template.yaml
    label: str  # "{value}" is replaced by the value as drawn
    metric: MetricName  # the metric the alarm watches
    parameter: str | None = None
    setting: str | None = None
    value: float | None = None  # the literal threshold, when there is no parameter
    scale: float = 1.0  # drawn value = threshold x scale (a rate alarm on a chart in %)
    right_axis: bool = False


@dataclass(frozen=True, slots=True)
class Panel:
    """A time-series panel: its CloudWatch widget and its local chart (``data-chart=name``)."""

    name: str
    title: str  # ${Parameter} references are substituted (CloudWatch: !Sub; locally: settings)
    period: int  # seconds
    source: Source
    metrics: tuple[Metric, ...]
    stat: Stat | None = None  # the panel's default statistic
    expressions: tuple[Expression, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    unit: str = ""  # locally: the left axis unit
    right_unit: str = ""
    y_min: float | None = None
    y_max: float | None = None
    stacked: bool | None = None  # written only when the template sets it
    local_note: str = ""  # how the local chart differs from the CloudWatch one, shown under it

    def metric_stat(self, metric: Metric) -> Stat:
        stat = metric.stat or self.stat
        if stat is None:
            raise ValueError(f"panel {self.name}: {metric.name} has no statistic")
        return stat

    def metric_period(self, metric: Metric) -> int:
        return metric.period or self.period


@dataclass(frozen=True, slots=True)
class TablePanel:
    """A table: CloudWatch's Logs Insights widget over a function's log, locally a SQL read."""

    name: str
    title: str
    log_group: str  # the template resource whose log group the query reads
    query: str  # after "SOURCE '${LogGroup}' | "
    columns: tuple[str, ...] = field(default_factory=tuple)


CONFLICT_RATE_ALARM = Threshold(
    alarm="ConflictRateAlarm",
    label="alarm: conflict rate > {value}% (hours with enough requests)",
    metric=MetricName.CONFLICTED_REQUESTS,
    parameter="ConflictRateThreshold",
    setting="conflict_rate_threshold",
    scale=100.0,
)
RETRY_EXHAUSTED_ALARM = Threshold(
    alarm="RetryExhaustedAlarm",
    label="alarm: > {value} retry exhausted in 15 min",
    metric=MetricName.RETRY_EXHAUSTED,
    parameter="RetryExhaustedThreshold",
    setting="retry_exhausted_threshold",
)
OVERBOOK_DETECTED_ALARM = Threshold(
    alarm="OverbookDetectedAlarm",
    label="alarm: detected > {value}",
    metric=MetricName.OVERBOOK_DETECTED,
    value=0.0,
)

PANELS: tuple[Panel, ...] = (
    Panel(
        name="success-rate",
        title="Booking success rate (%)",
        period=300,
        source=Source.BOOKING,
        metrics=(
            Metric(MetricName.BOOKING_REQUESTS, stat="Sum", id="requests", visible=False),
            Metric(MetricName.BOOKING_SUCCESS, stat="Sum", id="success", visible=False),
        ),
        expressions=(
            Expression(
                id="successRate",
                expression="100 * success / requests",
                label="Success rate %",
                figure=figures.success_rate,
                numerator="success",
                denominator="requests",
            ),
        ),
        unit="%",
        y_min=0,
        y_max=100,
    ),
    Panel(
        name="outcomes",
        title="Booking outcomes",
        period=300,
        source=Source.BOOKING,
        stat="Sum",
        stacked=False,
        metrics=(
            Metric(MetricName.BOOKING_REQUESTS),
            Metric(MetricName.BOOKING_SUCCESS),
            Metric(MetricName.CAPACITY_EXCEEDED),
            Metric(MetricName.SLOT_CLOSED),
            Metric(MetricName.IDEMPOTENT_REPLAYS),
            Metric(MetricName.BOOKING_CANCELLED),
        ),
    ),
    Panel(
        name="latency",
        title="Booking latency (ms)",
        period=300,
        source=Source.BOOKING,
        metrics=(
            Metric(MetricName.BOOKING_LATENCY, stat="p50", label="p50"),
            Metric(MetricName.BOOKING_LATENCY, stat="p90", label="p90"),
            Metric(MetricName.BOOKING_LATENCY, stat="p99", label="p99"),
        ),
        unit=" ms",
    ),
    Panel(
        name="utilization",
        title="Capacity utilization (%)",
        period=300,
        source=Source.BOOKING,
        metrics=(
            Metric(MetricName.SLOT_UTILIZATION, stat="Average", label="slot utilization at booking (avg)"),
            Metric(MetricName.SLOT_UTILIZATION, stat="Maximum", label="slot utilization at booking (max)"),
            Metric(
                MetricName.ROLLUP_UTILIZATION, stat="Average", period=3600, label="hourly roll-up utilization (avg)"
            ),
            Metric(
                MetricName.ROLLUP_UTILIZATION, stat="Maximum", period=3600, label="hourly roll-up utilization (max)"
            ),
        ),
        unit="%",
        y_min=0,
        local_note="Roll-up lines are per hour of the slots' start; (max) is the fullest restaurant.",
    ),
    Panel(
        name="conflicts",
        title="Conflicts (lost races + retried failures)",
        period=300,
        source=Source.BOOKING,
        stat="Sum",
        metrics=(
            Metric(MetricName.CONFLICTS, label="conflicts"),
            Metric(MetricName.OVERBOOK_PREVENTED, label="overbook prevented (lost races)"),
        ),
    ),
    Panel(
        name="conflict-rate",
        title=(
            "Conflict rate per hour (%); alarm above ${ConflictRateThreshold} x 100 "
            "with >= ${ConflictMinRequests} requests"
        ),
        period=3600,
        source=Source.BOOKING,
        metrics=(
            Metric(MetricName.BOOKING_REQUESTS, stat="Sum", id="hourRequests", visible=False),
            Metric(MetricName.CONFLICTED_REQUESTS, stat="Sum", id="hourConflicts", visible=False),
        ),
        expressions=(
            Expression(
                id="conflictRate",
                expression="100 * hourConflicts / hourRequests",
                label="conflict rate %",
                figure=figures.conflict_rate,
                numerator="hourConflicts",
                denominator="hourRequests",
            ),
        ),
        thresholds=(CONFLICT_RATE_ALARM,),
        unit="%",
        y_min=0,
        local_note="Locally also per chart step, beside the hour's figure from the roll-up.",
    ),
    Panel(
        name="retries",
        title="Retries exhausted and database unavailable (503)",
        period=300,
        source=Source.BOOKING,
        stat="Sum",
        metrics=(
            Metric(MetricName.RETRY_EXHAUSTED, label="retry exhausted"),
            Metric(MetricName.SERVICE_UNAVAILABLE, label="database unavailable"),
        ),
        thresholds=(RETRY_EXHAUSTED_ALARM,),
        local_note="The alarm compares the 15-minute sum (dashed line) with its threshold.",
    ),
    Panel(
        name="overbooking",
        title="Overbooking: prevented by the guard / detected by reconciliation",
        period=300,
        source=Source.EVENTS,
        stat="Sum",
        metrics=(
            Metric(MetricName.OVERBOOK_PREVENTED, label="prevented"),
            Metric(MetricName.OVERBOOK_DETECTED, label="detected (must stay 0)"),
        ),
        thresholds=(OVERBOOK_DETECTED_ALARM,),
    ),
    Panel(
        name="incidents",
        title="Alerts",
        period=900,
        source=Source.ALERTS,
        stat="Sum",
        metrics=(
            Metric(MetricName.ALERTS_OPENED, label="opened"),
            Metric(MetricName.ALERTS_RESOLVED, label="resolved"),
            Metric(MetricName.ALERT_DELIVERY_FAILURES, label="delivery failures"),
        ),
        local_note="Locally from alert_state and alert_deliveries, with the incidents open at each step.",
    ),
    Panel(
        name="rollup",
        title="Hourly roll-up",
        period=3600,
        source=Source.ROLLUP,
        metrics=(
            Metric(MetricName.ROLLUP_REQUESTS, stat="Sum", label="requests rolled up"),
            Metric(MetricName.ROLLUP_ROWS, stat="Sum", label="rows written"),
            Metric(MetricName.ROLLUP_SUCCESS_RATE, stat="Average", right_axis=True, label="success rate"),
            Metric(MetricName.ROLLUP_CONFLICT_RATE, stat="Average", right_axis=True, label="conflict rate"),
        ),
        right_unit="%",
        local_note="Locally: the roll-up table's rows per hour, the current partial hour included.",
    ),
)

TABLES: tuple[TablePanel, ...] = (
    TablePanel(
        name="top-conflicts",
        title="Restaurants with the most conflicts (from the EMF records)",
        log_group="CreateBookingLogGroup",
        query=(
            "filter ispresent(BookingRequests) | stats sum(BookingRequests) as requests, "
            "sum(BookingConflicts) as conflicts, sum(BookingCapacityExceeded) as full by restaurantId "
            "| sort conflicts desc | limit 10"
        ),
        columns=("restaurant", "requests", "conflicts", "full"),
    ),
    # Not in template.yaml yet (its owner adds it; tests/unit/test_panels.py names the exception).
    # CloudWatch: check_alerts' log of each incident opened and resolved; locally: alert_state.
    TablePanel(
        name="open-incidents",
        title="Alert incidents (opened and resolved)",
        log_group="CheckAlertsLogGroup",
        query=(
            "filter message like /^alert (open|resolve)$/ "
            "| fields @timestamp, action, alert, severity, restaurantName, restaurantId, incident "
            "| sort @timestamp desc | limit 20"
        ),
        columns=("kind", "severity", "restaurant", "incident", "opened", "last seen", "figures"),
    ),
)

THRESHOLDS: tuple[Threshold, ...] = tuple(t for p in PANELS for t in p.thresholds)


def cloudwatch_metric_row(panel: Panel, metric: Metric) -> list[Any]:
    """The ``metrics`` row CloudWatch's dashboard body holds for ``metric`` of ``panel``."""
    options: dict[str, Any] = {}
    if metric.id:
        options["id"] = metric.id
    if metric.stat and metric.stat != panel.stat:
        options["stat"] = metric.stat
    if metric.period:
        options["period"] = metric.period
    if not metric.visible:
        options["visible"] = False
    if metric.right_axis:
        options["yAxis"] = "right"
    if metric.label:
        options["label"] = metric.label
    row: list[Any] = [NAMESPACE, metric.name.value, *DIMENSIONS]
    if options:
        row.append(options)
    return row


def cloudwatch_widget(panel: Panel) -> dict[str, Any]:
    """The panel as a CloudWatch dashboard widget's ``properties`` (without region and layout)."""
    properties: dict[str, Any] = {"title": panel.title, "view": "timeSeries", "period": panel.period}
    if panel.stacked is not None:
        properties["stacked"] = panel.stacked
    if panel.stat:
        properties["stat"] = panel.stat
    if panel.y_min is not None and panel.y_max is not None:
        properties["yAxis"] = {"left": {"min": panel.y_min, "max": panel.y_max}}
    rows: list[list[Any]] = [cloudwatch_metric_row(panel, m) for m in panel.metrics]
    rows += [[{"expression": e.expression, "label": e.label, "id": e.id}] for e in panel.expressions]
    properties["metrics"] = rows
    return properties


def cloudwatch_table(table: TablePanel) -> dict[str, Any]:
    return {
        "title": table.title,
        "view": "table",
        "query": f"SOURCE '${{{table.log_group}}}' | {table.query}",
    }
