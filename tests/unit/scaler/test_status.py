"""`scaler status` formatting, on a `GET /v1/pools` answer recorded from the real API
(tests/fixtures/cli/pools.json: the scenario of test_cli_api.fill — web with one member in service
whose health is down and an open launch breaker, api without a policy) and on variants of it with
what the recording lacks: an operation under way, a pause, health panic, rejected policies."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from scaler.status import format_status

RECORDED = Path(__file__).resolve().parents[2] / "fixtures" / "cli" / "pools.json"
NOW = 1796506000.156 + 125          # 2m5s after the recording


@pytest.fixture
def pools() -> list[dict[str, Any]]:
    return list(json.loads(RECORDED.read_text()))


def test_the_recorded_pools_as_a_table(pools: list[dict[str, Any]]) -> None:
    text = format_status(pools, NOW, cluster={"me": "ctl1", "role": "leader", "epoch": 3, "leader": "ctl1"},
                         policies={"valid": True, "last_reload": None, "pools": {}})
    assert text.splitlines() == [
        "scaler ctl1: leader (epoch 3), leader ctl1 — policies: valid",
        "POOL  SIZE/DESIRED  BOUNDS     MEMBERS       HEALTH  BREAKER  LAST DECISION",
        "api   0/0           no policy  none          ok      closed   none yet",
        "web   1/1           1-3        in_service 1  down 1  open     hold at 1: missing data for input s: no sample "
        "yet (2m5s ago)",
        "",
        "web: launch circuit breaker open since 2026-12-05 21:26:40Z: 3 launches failed (last: web-x-2: server in "
        "ERROR); resets at 2026-12-05 21:36:40Z (in 10m) or `scaler breaker reset web`",
        "web: web-bf1274ee-0 (in_service) is down for 2m5s: GET /health: HTTP 503",
    ]


def test_an_operation_a_pause_panic_and_rejected_policies(pools: list[dict[str, Any]]) -> None:
    p = copy.deepcopy(pools)
    web = p[1]
    web["operation"] = {"id": "c0ffee", "kind": "scale_out", "state": "running", "from_size": 1, "to_size": 2,
                        "reason": "busy: s above 10 for 30s", "started": "2026-12-05T21:27:00.000+00:00",
                        "finished": None, "error": None}
    web["members"].append({"instance": "web-c0ffee-0", "state": "booting", "health": "unknown"})
    web["members"].append({"instance": "web-c0ffee-1", "state": "failed", "health": "unknown",
                           "error": "server in ERROR: no valid host"})
    web["members"].append({"instance": "web-old-0", "state": "deleted", "health": "down"})
    web["health_panic"] = "panic: 2 of 3 members down: every route kept"
    web["paused"] = {"at": "2026-12-05T21:28:00.000+00:00", "by": "api (ops)", "reason": "maintenance"}
    p[0]["paused"] = None
    p[0]["dry_run"], p[0]["min"], p[0]["max"] = True, 2, 6
    p[0]["last_decision"] = dict(web["last_decision"], outcome="scale_out", current=0, desired=2, dry_run=True,
                                 reason="below min: 0 < 2", at="2026-12-05T21:28:40.000+00:00")
    rejected = {"valid": False, "last_reload": {"ok": False, "trigger": "SIGHUP", "at": "2026-12-05T21:27:30.000+00:00",
                                                "changed": [], "problems": ["a", "b"]}}
    lines = format_status(p, NOW, policies=rejected).splitlines()
    assert lines[0] == ("policies: the last reload (SIGHUP, 1m15s ago) was REJECTED, the previous policies keep "
                        "running: 2 problems (`scaler policy check`)")
    assert lines[1].split() == ["POOL", "SIZE/DESIRED", "BOUNDS", "MEMBERS", "HEALTH", "BREAKER", "PAUSED", "LAST",
                                "DECISION"]
    assert lines[2].split()[:8] == ["api", "0/0", "2-6", "dry-run", "none", "ok", "closed", "no"]
    assert lines[2].endswith("scale out 0 → 2 (dry-run: not done): below min: 0 < 2 (5s ago)")
    assert lines[3].startswith("web   1/2           1-3          in_service 1, booting 1, failed 1  PANIC, down 1  "
                               "open     yes     hold at 1")
    assert lines[5:] == [
        "web: paused by api (ops) 45s ago: maintenance — decisions start nothing (`scaler resume web`)",
        lines[5 + 1],
        "web: health panic: 2 of 3 members down: every route kept",
        "web: web-bf1274ee-0 (in_service) is down for 2m5s: GET /health: HTTP 503",
        "web: web-c0ffee-1 failed: server in ERROR: no valid host",
        "web: operation c0ffee scale_out 1 → 2 running for 1m45s: busy: s above 10 for 30s",
    ]
    assert lines[6].startswith("web: launch circuit breaker open since")


def test_what_an_older_service_does_not_send_is_not_guessed(pools: list[dict[str, Any]]) -> None:
    web = {k: v for k, v in pools[1].items() if k not in ("launch_breaker", "last_decision", "min", "max")}
    lines = format_status([web], NOW).splitlines()
    assert lines[0].split()[:1] == ["POOL"] and "PAUSED" not in lines[0]
    assert lines[1].split()[:7] == ["web", "1/1", "no", "policy", "in_service", "1", "down"]
    assert lines[1].endswith("down 1  -        none yet")
    assert format_status([], NOW) == "no pool configured\n"
    assert format_status([web], NOW, {"role": "follower"}).splitlines()[0] == "scaler: follower"
