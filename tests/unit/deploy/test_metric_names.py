"""Every metric the shipped dashboard (deploy/grafana/scaler.json) and alert rules
(deploy/prometheus/scaler-alerts.yml) name is one the service exports: its /metrics text, from a
real Service built from the shipped example, plus the router families only the bgp and kernel
drivers report. A renamed metric fails here instead of leaving an empty panel or a silent alert."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeRouter
from scaler.alerts.metrics import alert_metrics
from scaler.config import load_config, load_policies
from scaler.metrics import RouterHealthMetrics
from scaler.service import REGISTRIES, Service
from scaler.store import Store
from tests.support.examples import copy_examples

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "scaler.json"
RULES = ROOT / "deploy" / "prometheus" / "scaler-alerts.yml"
# Series Prometheus makes itself, not the service.
PROMETHEUS_OWN = {"up"}
# What the bgp and the kernel drivers' health() report (the fake router reports no sessions).
ROUTER_HEALTH = {
    "sessions": [{"peer": "tor-a", "state": "synced", "downs": 0, "replays": 1, "last_replay_paths": 2,
                  "last_replay_s": 0.1}],
    "speaker": {"restarts": 0, "connected": True}, "paths": 2,
    "conntrack_entries": 10, "conntrack_max": 1000, "unreplied_ratio": 0.0,
}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "gaugehistogram": ("_bucket",
            "_gcount", "_gsum")}
# PromQL words that look like names: operators, modifiers, aggregation clauses, and the aggregations,
# which may stand before their `by (…)` rather than before their parenthesis.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
            "bool", "inf", "nan", "atan2", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
            "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}


def exposition_names(text: str) -> set[str]:
    """Every series name a scrape of `text` can produce (families without samples included)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    tmp = tmp_path_factory.mktemp("names")
    cfg = load_config(copy_examples(tmp), REGISTRIES)
    store = Store(f"sqlite:///{tmp}/s.db")
    store.migrate()
    try:
        service = Service(cfg, load_policies(cfg), store=store, orchestrator=FakeOrchestrator(), router=FakeRouter(),
                          drainer=NoDrainer(), collectors={})
        alert_metrics(service.metrics.registry)        # what create_app's receivers register
        names = exposition_names(generate_latest(service.metrics.registry).decode())
    finally:
        store.close()
    drivers = CollectorRegistry()
    drivers.register(RouterHealthMetrics(lambda: ROUTER_HEALTH))
    yield names | exposition_names(generate_latest(drivers).decode())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana's $variables allowed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)    # string literals
    e = re.sub(r"\{[^{}]*\}", " ", e)                                            # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)                                          # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r"\1 ", e)  # label lists
    e = re.sub(r"\$\{?\w+\}?", " ", e)                                           # Grafana variables
    e = re.sub(r"\b(\d+(ms|s|m|h|d|w|y))+\b", " ", e)                             # durations (offset 5m)
    e = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b|\b0x[0-9a-f]+\b", " ", e, flags=re.I)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        followed = e[m.end():].lstrip()
        if followed.startswith("(") or m.group() in KEYWORDS:                    # a function or a keyword
            continue
        names.add(m.group())
    return names


def template_names(query: str) -> set[str]:
    """A Grafana variable query: label_values(METRIC{…}, label) reads METRIC; else PromQL."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    return metric_names(m.group(1)) if m else metric_names(query)


def dashboard_expressions(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and variable query, rows' panels included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            found.extend((f"panel {p['title']!r}", t["expr"]) for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(doc["panels"])
    return found


def rule_expressions() -> list[tuple[str, str]]:
    doc = YAML(typ="safe").load(RULES.read_text())
    return [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for g in doc["groups"] for r in g["rules"]]


def test_the_dashboard_reads_only_exported_metrics(exported: set[str]) -> None:
    doc = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions(doc)
    assert len(expressions) >= 20
    unknown = {f"{where}: {n}" for where, e in expressions for n in metric_names(e) - exported - PROMETHEUS_OWN}
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            unknown |= {f"variable {var['name']}: {n}" for n in template_names(query) - exported}
    assert not unknown, sorted(unknown)


def test_the_dashboard_covers_what_the_issue_asks(exported: set[str]) -> None:
    read = set().union(*(metric_names(e) for _, e in dashboard_expressions(json.loads(DASHBOARD.read_text()))))
    for needed in ("scaler_pool_members", "scaler_pool_desired_members", "scaler_pool_bounds_members",
                   "scaler_decisions_total", "scaler_member_health", "scaler_collector_errors_total",
                   "scaler_router_apply_seconds_bucket", "scaler_alert_deliveries_total", "scaler_leader"):
        assert needed in read, needed


def test_the_alert_rules_read_only_exported_metrics(exported: set[str]) -> None:
    expressions = rule_expressions()
    assert len(expressions) >= 15
    unknown = {f"{where}: {n}" for where, e in expressions for n in metric_names(e) - exported - PROMETHEUS_OWN}
    assert not unknown, sorted(unknown)


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (pool, outcome) (increase(scaler_decisions_total{job=~"$job", pool=~"$pool"}[$__rate_interval]))',
     {"scaler_decisions_total"}),
    ('histogram_quantile(0.99, sum by (le) (rate(scaler_router_apply_seconds_bucket[5m])))',
     {"scaler_router_apply_seconds_bucket"}),
    ('a_total / on (job, instance) group_left (version) b_info{x="rate(c)"} > 0.5e3 and bool d offset 5m',
     {"a_total", "b_info", "d"}),
    ('max by (job) (scaler_leader) == 0 unless ignoring(state) e[5m:1m]', {"scaler_leader", "e"}),
    ("absent(up{job='scaler'})", {"up"}),
])
def test_names_are_read_out_of_expressions(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_misspelt_name_is_caught(exported: set[str]) -> None:
    assert metric_names("rate(scaler_decision_total[5m])") - exported == {"scaler_decision_total"}
    assert template_names('label_values(scaler_pool_desired{job="x"}, pool)') == {"scaler_pool_desired"}


def test_the_dashboard_is_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []

    def walk(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))

    walk(doc["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert t["refId"] and t["expr"].strip(), p["title"]
    assert doc["uid"] and "__inputs" not in doc
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "job", "pool"}
