"""What the fleet is watched and scaled by: Prometheus adapter rules and a Grafana dashboard, as data.

Every query names metrics the server exports on its metrics port: Triton's own per-model series
(``nv_inference_*``, labelled ``model``/``version``; the request summary needs
``--metrics-config=summary_latencies=true``, which the pods pass) and the BLS's custom metrics
(``bll_python.metrics``: rows by route, gated/accepted rows, teacher rows, per-stage seconds,
component errors). A test scrapes a live server and checks every name used here.
"""

from __future__ import annotations

import re
from typing import Any

from bll_python.layout import BLS_MODEL
from export.deploy.manifests import HPA_METRIC

M = f'model="{BLS_MODEL}"'
RATE = "2m"

# prometheus-adapter rules (the chart's ``rules.custom``): per-pod series the HPA can average.
ADAPTER_RULES: list[dict[str, Any]] = [
    {
        "seriesQuery": f'nv_inference_pending_request_count{{{M},namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_pending_request_count$", "as": HPA_METRIC},
        # Requests waiting for a free BLS instance, averaged over a minute (the gauge jumps per request).
        "metricsQuery": f"avg_over_time(<<.Series>>{{<<.LabelMatchers>>,{M}}}[1m])",
    },
    {
        "seriesQuery": f'nv_inference_queue_duration_us{{{M},namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": "adaptive_diffusion_queue_seconds_per_request"},
        # The alternative signal: mean seconds a request waited before a BLS instance took it.
        "metricsQuery": (
            f"sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>,{M}}}[{RATE}])) / 1e6"
            f" / clamp_min(sum by (<<.GroupBy>>) (rate(nv_inference_request_success{{<<.LabelMatchers>>,{M}}}[{RATE}])), 1e-9)"
        ),
    },
]


def adapter_values() -> dict[str, Any]:
    """Values for the prometheus-adapter Helm chart: only these rules (the chart's defaults off)."""
    return {"rules": {"default": False, "custom": ADAPTER_RULES}}


# (title, unit, [(legend, PromQL)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Throughput", "reqps", [
        ("images/s", f"sum(rate(adaptive_rows_total[{RATE}]))"),
        ("requests answered/s", f"sum(rate(nv_inference_request_success{{{M}}}[{RATE}]))"),
        ("requests failed/s", f"sum(rate(nv_inference_request_failure{{{M}}}[{RATE}]))"),
    ]),
    ("Request latency p50 / p99 (per pod)", "s", [
        ("p50 {{pod}}", f'nv_inference_request_summary_us{{{M},quantile="0.5"}} / 1e6'),
        ("p99 {{pod}}", f'nv_inference_request_summary_us{{{M},quantile="0.99"}} / 1e6'),
    ]),
    ("Accept rate (student kept)", "percentunit", [
        ("accept rate", f"sum(rate(adaptive_accepted_rows_total[{RATE}])) / clamp_min(sum(rate(adaptive_gated_rows_total[{RATE}])), 1e-9)"),
    ]),
    ("Teacher share (rows sent to the teacher)", "percentunit", [
        ("teacher share", f"sum(rate(adaptive_teacher_rows_total[{RATE}])) / clamp_min(sum(rate(adaptive_rows_total[{RATE}])), 1e-9)"),
        ("{{route}}", f"sum by (route) (rate(adaptive_rows_total[{RATE}])) / ignoring(route) group_left clamp_min(sum(rate(adaptive_rows_total[{RATE}])), 1e-9)"),
    ]),
    ("Stage seconds p50 / p99", "s", [
        ("p50 {{stage}}", f"histogram_quantile(0.5, sum by (le, stage) (rate(adaptive_stage_seconds_bucket[{RATE}])))"),
        ("p99 {{stage}}", f"histogram_quantile(0.99, sum by (le, stage) (rate(adaptive_stage_seconds_bucket[{RATE}])))"),
    ]),
    ("Component errors and request outcomes", "reqps", [
        ("{{component}} errors", f"sum by (component) (rate(adaptive_component_errors_total[{RATE}]))"),
        ("{{outcome}}", f"sum by (outcome) (rate(adaptive_requests_total[{RATE}]))"),
    ]),
    ("Autoscaling signal: requests waiting per pod", "short", [
        ("{{pod}}", f"avg_over_time(nv_inference_pending_request_count{{{M}}}[1m])"),
    ]),
    ("Queue seconds per request", "s", [
        ("{{pod}}", f"rate(nv_inference_queue_duration_us{{{M}}}[{RATE}]) / 1e6 / clamp_min(rate(nv_inference_request_success{{{M}}}[{RATE}]), 1e-9)"),
    ]),
]  # fmt: skip


def dashboard() -> dict[str, Any]:
    """A Grafana dashboard (JSON model, schema 39) over a Prometheus data source chosen at import."""
    ds = {"type": "prometheus", "uid": "${datasource}"}
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": ds,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(ord("A") + j), "datasource": ds, "expr": expr, "legendFormat": legend} for j, (legend, expr) in enumerate(targets)],
        })  # fmt: skip
    return {
        "title": "Adaptive diffusion fleet",
        "uid": "adaptive-diffusion-fleet",
        "tags": ["triton", "adaptive-diffusion"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]},
        "panels": panels,
    }


_PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "clamp_min", "clamp_max", "avg_over_time", "max_over_time", "ignoring", "on", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or an adapter template) reads."""
    text = re.sub(r"<<[^>]*>>", "", expr)  # adapter template fields
    text = re.sub(r'"[^"]*"', "", text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", " ", text)  # numbers, 1e6 among them
    text = re.sub(r"\b(by|without|ignoring|on|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        following = text[m.end():].lstrip()[:1]
        if following == "(" or word in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def queries() -> list[str]:
    """Every PromQL expression of the dashboard and the adapter rules."""
    exprs = [expr for _, _, targets in PANELS for _, expr in targets]
    for rule in ADAPTER_RULES:
        exprs += [rule["seriesQuery"], rule["metricsQuery"]]
    return exprs
