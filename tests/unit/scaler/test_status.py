"""`scaler status` formatting, on a `GET /v1/pools` answer recorded from the real API
(tests/fixtures/cli/pools.json: the scenario of test_cli_api.fill — web with one member in service
whose health is down and an open launch breaker, api without a policy) and on variants of it with
what the recording lacks: an operation under way, a pause, health panic, rejected policies, standby and
outdated members; and a rollout's progress (`scaler rollout POOL --status`)."""

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


def test_standby_members_and_outdated_ones(pools: list[dict[str, Any]]) -> None:
    p = copy.deepcopy(pools)
    web = p[1]
    web["members"].append({"instance": "web-5b-0", "state": "standby", "health": "up", "template": "77da9a7ed302"})
    web["members"].append({"instance": "web-5b-1", "state": "booting", "health": "unknown"})
    web.update(standby=1, standby_wanted=2, template="77da9a7ed302", outdated=1)
    p[0].update(standby=0, standby_wanted=None, template="44136fa355b3", outdated=0)
    lines = format_status(p, NOW).splitlines()
    assert lines[0].split()[:7] == ["POOL", "SIZE/DESIRED", "BOUNDS", "MEMBERS", "HEALTH", "BREAKER", "STANDBY"]
    assert lines[1].split()[:7] == ["api", "0/0", "no", "policy", "none", "ok", "closed"]
    assert lines[1].split()[7] == "0/-"
    # standby after the members that serve, before the ones on their way.
    assert "in_service 1, standby 1, booting 1  down 1  open     1/2      hold at 1" in lines[2]
    assert lines[-1] == ("web: 1 member on another instance template than the pool's (77da9a7ed302): "
                         "`scaler rollout web` replaces it")
    # No standby anywhere, nothing outdated: neither the column nor the line.
    web.update(standby=0, standby_wanted=0, outdated=0)
    del web["members"][1:]
    text = format_status(p, NOW)
    assert "STANDBY" not in text and "template" not in text


def test_a_rollout_s_progress() -> None:
    from scaler.status import format_rollout, rollout_started

    r: dict[str, Any] = {
        "operation": "op-5b", "state": "running", "template": "77da9a7ed302", "surge": 1,
        "outdated": ["web-a-1", "web-a-2"], "outdated_standby": ["web-a-3"], "in_flight": ["web-5b-1"],
        "new_down": [], "draining": ["web-a-0"], "replaced": 1, "new_in_service": 1, "failed_launches": 1,
        "stops_after_failed_launches": 3, "paused": False, "started": "2026-12-05T21:27:00.000+00:00",
        "finished": None, "error": None}
    assert rollout_started("web", r) == (
        "web: rollout op-5b started to template 77da9a7ed302: 2 outdated members to replace, 1 outdated standby to "
        "re-create, surge 1 (`scaler rollout web --status`)\n")
    assert format_rollout("web", r, NOW).splitlines() == [
        "web: rollout op-5b to template 77da9a7ed302, surge 1: running for 1m45s",
        "  replaced 1, outdated left 2 (+1 standby), new in service 1",
        "  in flight 1 (web-5b-1), draining 1 (web-a-0)",
        "  failed launches 1 of 3 (it stops at the limit or when the launch breaker opens)"]
    r.update(new_down=["web-5b-0"], paused=True)
    lines = format_rollout("web", r, NOW).splitlines()
    assert lines[3:] == [
        "  new members down 1 (web-5b-0): no old member is drained for them",
        "  failed launches 1 of 3 (it stops at the limit or when the launch breaker opens)",
        "  paused with the pool: what is in flight finishes, nothing new starts (`scaler resume web`)"]
    r.update(state="failed", finished="2026-12-05T21:28:40.000+00:00", failed_launches=3, paused=False,
             error="3 launches of the rollout failed: the old members keep serving")
    lines = format_rollout("web", r, NOW).splitlines()
    assert lines[0] == "web: rollout op-5b to template 77da9a7ed302, surge 1: failed 5s ago"
    assert lines[-1] == "  error: 3 launches of the rollout failed: the old members keep serving"
    assert format_rollout("web", None, NOW) == "web: no rollout yet\n"
