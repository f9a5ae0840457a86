"""deploy/prometheus and deploy/grafana checked by Prometheus' own promtool: the alert rules load, their
unit tests (scaler-alerts.test.yml) pass, the example prometheus.yml is valid, and every dashboard
expression parses as PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.support.production import self_signed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "scaler.json"
# What Grafana substitutes before Prometheus sees an expression.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$job": "scaler", "$pool": ".*"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_rules_load() -> None:
    done = promtool("check", "rules", "scaler-alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"SUCCESS: \d+ rules found", done.stdout)


def test_the_rules_unit_tests_pass() -> None:
    done = promtool("test", "rules", "scaler-alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_catch_an_alert_that_pages_for_a_follower(tmp_path: Path) -> None:
    """Without the leader restriction the follower's open breaker pages too: the tests see it."""
    rules = (PROMETHEUS / "scaler-alerts.yml").read_text()
    shutil.copy(PROMETHEUS / "scaler-alerts.test.yml", tmp_path)
    broken = rules.replace("expr: scaler_launch_breaker_open == 1 and on (job, instance) scaler_leader == 1",
                           "expr: scaler_launch_breaker_open == 1")
    assert broken != rules
    (tmp_path / "scaler-alerts.yml").write_text(broken)
    done = promtool("test", "rules", "scaler-alerts.test.yml", cwd=tmp_path)
    assert done.returncode != 0 and "alertname: ScalerLaunchBreakerOpen" in done.stdout + done.stderr


def test_the_example_prometheus_config_is_valid(tmp_path: Path) -> None:
    (tmp_path / "scaler-read-token").write_text("a-token\n")
    self_signed(tmp_path / "scaler-ca.crt", tmp_path / "scaler-ca.key")
    config = (PROMETHEUS / "prometheus.yml").read_text()
    config = config.replace("/etc/prometheus/rules/", f"{PROMETHEUS}/").replace("/etc/prometheus/secrets/",
                                                                                  f"{tmp_path}/")
    (tmp_path / "prometheus.yml").write_text(config)
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def dashboard_expressions() -> list[str]:
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            found.extend(str(t["expr"]) for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def test_every_dashboard_expression_is_promql(tmp_path: Path) -> None:
    rules = []
    for n, expr in enumerate(dashboard_expressions()):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        rules.append({"record": f"dashboard:expr_{n}", "expr": expr})
    with (tmp_path / "dashboard.yml").open("w") as f:
        YAML().dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    done = promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
