"""`scaler simulate --prometheus`: range queries against a real Prometheus 2.42 (tests/support/daemons.py) that
scrapes a node_exporter every second, with basic auth, replayed through a policy whose decisions are
known in advance."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scaler.simulate import main
from tests.support.daemons import (
    BASIC_AUTH_PASSWORD,
    BASIC_AUTH_USER,
    NODE_EXPORTER,
    PROMETHEUS,
    Prometheus,
    free_port,
    node_exporter,
    prometheus,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not all(os.access(p, os.X_OK) for p in (PROMETHEUS, NODE_EXPORTER)),
                       reason="prometheus and prometheus-node-exporter are needed"),
]

POLICY = """\
pools:
  web:
    min: 1
    max: 3
    inputs:
      up: {source: prometheus, metric: up, aggregate: sum}
    rules:
      - {name: alive, input: up, at_least: 1, for: 3s, adjust: +1}
    cooldown: {scale_out: 0s, scale_in: 0s}
"""


@dataclass
class Setup:
    prom: Prometheus
    policy: Path
    password_file: Path
    start: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp_path = tmp_path_factory.mktemp("simulate-prom")
    with node_exporter(tmp_path / "ne") as ne, \
            prometheus(tmp_path / "prom", targets={"node": [ne.address], "again": [ne.address]},
                       basic_auth=True) as prom:
        # Scraped for a few seconds: 12 samples in the last 20 s (a condition, not a sleep), so the
        # last 8 s are covered whatever the phase of the scrapes.
        prom.wait_for_series('count_over_time(up{job="node"}[20s]) >= 12', deadline_s=40)
        policy = tmp_path / "web.yaml"
        policy.write_text(POLICY)
        password = tmp_path / "password"
        password.write_text(BASIC_AUTH_PASSWORD + "\n")
        yield Setup(prom, policy, password, int(time.time()) - 9)


def args(s: Setup, *more: str, url: str = "", password: Path | None = None) -> list[str]:
    return ["--policy", str(s.policy), "--prometheus", url or s.prom.url, "--from", str(s.start),
            "--to", str(s.start + 8), "--step", "1s", "--boot-delay", "1s",
            "--basic-auth-user", BASIC_AUTH_USER, "--basic-auth-password-file", str(password or s.password_file),
            *more]


def test_range_queries_replayed_through_the_policy(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(setup, "--query", 'up=sum(up{job="node"})', "--json", "--verbose")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["inputs"]["up"] for e in doc["evaluations"]] == [1.0] * 9
    # up ≥ 1 holds from the first point: fires at +3 s; boots 1 s; fires again at once (no cooldown).
    acts = [(e["at"], e["kind"], e["before"], e["size"]) for e in doc["timeline"] if e["kind"] != "hold"]
    assert acts == [("00:00:03", "scale_out", 1, 2), ("00:00:04", "ready", 1, 2),
                    ("00:00:04", "scale_out", 2, 3), ("00:00:05", "ready", 2, 3)]
    assert doc["summary"]["time_at_max_s"] == 4.0


def test_a_query_returning_several_series_is_named(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(setup, "--query", "up=up")) == 1
    err = capsys.readouterr().err
    assert "--query up=up: returned 2 series, one is needed" in err and 'job="again"' in err


def test_refused_credentials_exit_4(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    assert main(args(setup, "--query", "up=sum(up)", password=wrong)) == 4
    assert "HTTP 401" in capsys.readouterr().err


def test_bad_promql_is_bad_input(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(setup, "--query", "up=sum(up")) == 1
    assert "--query up=sum(up: Prometheus said bad_data" in capsys.readouterr().err


def test_a_server_that_does_not_answer_exits_4(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"       # nothing listens there
    assert main(args(setup, "--query", "up=sum(up)", url=url)) == 4
    assert f"prometheus {url}: ConnectError" in capsys.readouterr().err
