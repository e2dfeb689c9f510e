"""capctl.panels against template.yaml's CloudWatch dashboard: one description of the panels.

Each check returns its findings, so a test can feed it a drifted template and see the finding."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from capacity.outcomes import MetricName
from capacity.scheduled_settings import AlertSettings
from capctl import panels
from tests.cfn import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# Panels the template does not have yet. The lead removes a name here once template.yaml has the
# widget (the final report of the dashboard work gives the YAML).
KNOWN_MISSING_FROM_TEMPLATE: frozenset[str] = frozenset()
# Widgets with no local equivalent: CloudWatch's own metrics of Lambda and API Gateway exist only
# in AWS; the text and alarm widgets are drawn locally as the page header and threshold lines.
AWS_NAMESPACES = ("AWS/",)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def widgets(tpl: dict[str, Any]) -> list[dict[str, Any]]:
    body = tpl["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # ${...} only ever appears inside JSON strings, so the body parses before substitution.
    return list(json.loads(body)["widgets"])


def ours(widget: dict[str, Any]) -> bool:
    """A widget of the engine's own metrics or logs (not Lambda's or API Gateway's)."""
    props = widget["properties"]
    if widget["type"] == "log":
        return True
    if widget["type"] != "metric":
        return False
    namespaces = {row[0] for row in props["metrics"] if isinstance(row[0], str)}
    return not any(ns.startswith(AWS_NAMESPACES) for ns in namespaces)


def comparable(props: dict[str, Any]) -> dict[str, Any]:
    """What the panel description fixes: title, view, period, stat, metrics (names, stats,
    periods, labels, ids, axes), expressions, the left axis range; not region or layout."""
    keep = ("title", "view", "period", "stat", "stacked", "yAxis", "metrics", "query")
    return {k: props[k] for k in keep if k in props}


def drift(tpl: dict[str, Any]) -> list[str]:
    found: list[str] = []
    described: dict[str, dict[str, Any]] = {p.title: panels.cloudwatch_widget(p) for p in panels.PANELS}
    described.update({t.title: panels.cloudwatch_table(t) for t in panels.TABLES})
    in_template = {w["properties"]["title"]: w["properties"] for w in widgets(tpl) if ours(w)}
    for title, props in in_template.items():
        if title not in described:
            found.append(f"template widget {title!r} is not in capctl.panels")
        elif comparable(props) != comparable(described[title]):
            found.append(f"widget {title!r} differs: template {comparable(props)} != panels {described[title]}")
    for title in described.keys() - in_template.keys() - KNOWN_MISSING_FROM_TEMPLATE:
        found.append(f"panel {title!r} is not in the template's dashboard")
    for title in KNOWN_MISSING_FROM_TEMPLATE & in_template.keys():
        found.append(f"{title!r} is in the template now: remove it from KNOWN_MISSING_FROM_TEMPLATE")
    return found


def threshold_drift(tpl: dict[str, Any]) -> list[str]:
    """Each drawn threshold is its alarm's: same metric, same parameter (or literal), same
    default as check_alerts' setting."""
    found = []
    resources = tpl["Resources"]
    parameters = tpl["Parameters"]
    for t in panels.THRESHOLDS:
        alarm = resources.get(t.alarm, {}).get("Properties")
        if alarm is None:
            found.append(f"no alarm {t.alarm}")
            continue
        watched = {alarm.get("MetricName")} | {
            q["MetricStat"]["Metric"]["MetricName"] for q in alarm.get("Metrics", []) if "MetricStat" in q
        }
        if t.metric.value not in watched:
            found.append(f"{t.alarm} watches {sorted(w for w in watched if w)}, not {t.metric.value}")
        expected = {"Ref": t.parameter} if t.parameter else t.value
        if alarm["Threshold"] != expected:
            found.append(f"{t.alarm} threshold is {alarm['Threshold']}, panels say {expected}")
        if alarm.get("ComparisonOperator") != "GreaterThanThreshold":
            found.append(f"{t.alarm}: the panels draw 'above the line' alarms only")
        if t.parameter:
            default = float(parameters[t.parameter]["Default"])
            setting = AlertSettings.model_fields[t.setting or ""].default
            if default != float(setting):
                found.append(f"{t.parameter} default {default} != AlertSettings.{t.setting} {setting}")
    return found


def test_panels_match_the_cloudwatch_dashboard(template):
    assert drift(template) == []


def test_thresholds_are_the_alarms(template):
    assert threshold_drift(template) == []


def test_drift_is_found(template):
    drifted = copy.deepcopy(template)
    body = json.loads(drifted["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    success = next(w for w in body["widgets"] if w["properties"].get("title") == "Booking success rate (%)")
    success["properties"]["period"] = 60
    latency = next(w for w in body["widgets"] if w["properties"].get("title") == "Booking latency (ms)")
    latency["properties"]["metrics"][2][-1]["stat"] = "p95"
    body["widgets"] = [w for w in body["widgets"] if w["properties"].get("title") != "Alerts"]
    body["widgets"].append(
        {"type": "metric", "properties": {"title": "New", "metrics": [["${MetricsNamespace}", "X"]]}}
    )
    drifted["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"] = json.dumps(body)
    found = drift(drifted)
    assert any("'Booking success rate (%)' differs" in f for f in found)
    assert any("'Booking latency (ms)' differs" in f for f in found)
    assert "panel 'Alerts' is not in the template's dashboard" in found
    assert "template widget 'New' is not in capctl.panels" in found


# The widget template.yaml lacks, as its DashboardBody would hold it (the final report's YAML).
def test_threshold_drift_is_found(template):
    drifted = copy.deepcopy(template)
    drifted["Resources"]["RetryExhaustedAlarm"]["Properties"]["MetricName"] = "BookingConflicts"
    drifted["Parameters"]["ConflictRateThreshold"]["Default"] = 0.2
    drifted["Resources"]["OverbookDetectedAlarm"]["Properties"]["Threshold"] = 1
    found = threshold_drift(drifted)
    assert any(f.startswith("RetryExhaustedAlarm watches ['BookingConflicts']") for f in found)
    assert any(f.startswith("ConflictRateThreshold default 0.2") for f in found)
    assert any(f.startswith("OverbookDetectedAlarm threshold is 1") for f in found)


def test_every_panel_metric_is_emitted_and_every_chart_is_named():
    names = {m.name for p in panels.PANELS for m in p.metrics}
    assert names <= set(MetricName)
    assert {"success-rate", "utilization", "conflict-rate", "outcomes", "latency", "incidents"} <= {
        p.name for p in panels.PANELS
    }
    for p in panels.PANELS:
        for e in p.expressions:
            ids = {m.id for m in p.metrics}
            assert {e.numerator, e.denominator} <= ids, p.name
