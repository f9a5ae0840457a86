"""The read API against a real store filled by the engine and lifecycle with the fake drivers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from policies import PolicyFile, PoolPolicy
from scaler.alerts import AlertsConfig
from scaler.api import create_app
from scaler.config import ApiConfig, PoolConfig
from scaler.engine import Engine
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import Store

STORE_ENGINES = ("sqlite", "postgresql")          # tests/conftest.py

BGP_HEALTH: dict[str, Any] = {
    "driver": "bgp", "paths": 4, "paths_maybe_held": 4,
    "speaker": {"running": True, "connected": True, "pid": 42, "starts": 3, "restarts": 2, "last_exit": "killed by "
                "signal 9", "next_start_in_s": None},
    "sessions": [
        {"peer": "tor1", "address": "198.18.255.1", "state": "synced", "since": 1.0, "ups": 3, "downs": 2,
         "replays": 3, "last_replay_paths": 4, "last_replay_s": 0.0021},
        {"peer": "tor2", "address": "198.18.254.1", "state": "connected", "since": 2.0, "ups": 0, "downs": 1,
         "replays": 0, "last_replay_paths": 0, "last_replay_s": 0.0}]}


# These tests are about what the reads answer; who may read is tests/unit/scaler/test_api_auth.py.
READABLE = ApiConfig(anonymous_read=True)


class View:
    def __init__(self, store: Store, policies: dict[str, PoolPolicy]) -> None:
        self.store = store
        self.metrics = Metrics()
        self.pools = {"web": PoolConfig.model_validate({"vip": "198.19.0.1"})}
        self.policies = policies
        self.alerts = AlertsConfig()
        self.last_reload = None

    def health(self) -> dict[str, Any]:
        return {"ok": True}

    def router_health(self) -> dict[str, Any]:
        return BGP_HEALTH

    def member_check(self, member_id: str) -> dict[str, Any] | None:
        return None

    def health_panic(self, pool: str) -> str | None:
        return None

    def cluster(self) -> dict[str, Any]:
        return {"role": "leader", "epoch": 1}

    def reload_policies(self, trigger: str) -> Any:
        raise AssertionError("not called by these tests")


@pytest.fixture
def view(store: Store) -> View:
    store.ensure_pool("web", "198.19.0.1", 0)
    policy = PolicyFile.model_validate({"pools": {"web": {
        "min": 1, "max": 3, "inputs": {"s": {"source": "haproxy", "metric": "current_sessions"}},
        "rules": [{"name": "busy", "input": "s", "above": 10, "adjust": 1}]}}}).pools["web"]
    return View(store, {"web": policy})


async def test_pools_decisions_events_and_metrics(view: View) -> None:
    engine = Engine(view.store, {}, {}, view.pools, view.policies, view.metrics)
    lc = Lifecycle(view.store, FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter(), NoDrainer(),
                   view.pools, view.metrics)
    engine.evaluate()                       # below min → scale-out
    for _ in range(3):
        await lc.reconcile()
    engine.evaluate()                       # no data → hold, with the reason
    app = create_app(view, access=READABLE)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        await check_api(c)


async def check_api(client: httpx.AsyncClient) -> None:

    pools = (await client.get("/v1/pools")).json()
    assert [(p["name"], p["vip"], p["min"], p["max"], p["size"]) for p in pools] == [("web", "198.19.0.1", 1, 3, 1)]
    assert [(m["state"], m["address"]) for m in pools[0]["members"]] == [("in_service", "10.250.0.1")]
    assert pools[0]["last_decision"]["outcome"] == "hold"
    assert "missing data for input s: no sample yet" in pools[0]["last_decision"]["reason"]

    decisions = (await client.get("/v1/pools/web/decisions")).json()
    assert [d["outcome"] for d in decisions] == ["hold", "scale_out"]
    assert decisions[1]["reason"] == "below min: 0 < 1" and decisions[1]["operation"]

    why = await client.get("/v1/pools/web/why?limit=2")
    assert why.headers["content-type"].startswith("text/plain")
    blocks = why.text.split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].splitlines()[0].startswith("web  ") and "  hold  size 1" in blocks[0].splitlines()[0]
    assert "  why:    missing data for input s: no sample yet" in blocks[0]
    assert "  inputs: s=no data" in blocks[0]
    assert "  rules:  busy  no_data  missing data for input s: no sample yet" in blocks[0]
    assert "SCALE OUT  size 0 → 1" in blocks[1] and "why:    below min: 0 < 1" in blocks[1]
    assert "operation: " in blocks[1]

    events = [e["message"] for e in (await client.get("/v1/events?pool=web")).json()]
    assert any("creating → booting" in m for m in events) and any("add next hop 10.250.0.1" in m for m in events)

    text = (await client.get("/metrics")).text
    assert 'scaler_decisions_total{outcome="scale_out",pool="web"} 1.0' in text
    assert 'scaler_pool_members{pool="web",state="in_service"} 1.0' in text

    assert (await client.get("/v1/pools/nope")).status_code == 404
    assert (await client.get("/healthz")).json() == {"ok": True}
    assert "/v1/pools/{pool}/decisions" in (await client.get("/openapi.json")).json()["paths"]


async def test_router_sessions_in_the_api_and_the_metrics(view: View) -> None:
    from prometheus_client import generate_latest

    from scaler.metrics import RouterHealthMetrics

    view.metrics.registry.register(RouterHealthMetrics(view.router_health))
    app = create_app(view, access=READABLE)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        got = (await c.get("/v1/router")).json()
        assert got["sessions"][0]["state"] == "synced" and got["speaker"]["restarts"] == 2
        text = (await c.get("/metrics")).text
    # The same exposition as the registry's, but for the process's own CPU and memory, which move.
    def steady(exposition: str) -> list[str]:
        return [line for line in exposition.splitlines() if "process_" not in line]

    assert steady(text) == steady(generate_latest(view.metrics.registry).decode())
    for line in ('scaler_bgp_session_state{peer="tor1",state="synced"} 1.0',
                 'scaler_bgp_session_state{peer="tor1",state="down"} 0.0',
                 'scaler_bgp_session_state{peer="tor2",state="connected"} 1.0',
                 'scaler_bgp_session_downs_total{peer="tor1"} 2.0',
                 'scaler_bgp_replays_total{peer="tor1"} 3.0',
                 'scaler_bgp_last_replay_paths{peer="tor1"} 4.0',
                 "scaler_bgp_speaker_restarts_total 2.0",
                 "scaler_bgp_speaker_connected 1.0",
                 "scaler_bgp_paths 4.0"):
        assert line in text, line


def test_scaler_router_prints_the_speaker_and_one_line_per_session() -> None:
    from scaler.cli import format_router

    text = format_router(BGP_HEALTH, now=61.0)
    assert text.splitlines() == [
        "router driver: bgp",
        "speaker: connected, pid 42, started 3 times, 2 restarts, last exit: killed by signal 9",
        "paths announced: 4 (possibly held by routers: 4)",
        "  tor1             198.18.255.1    synced    for 60s  ups 3 downs 2 replays 3 (last: 4 paths in 2 ms)",
        "  tor2             198.18.254.1    connected for 59s  ups 0 downs 1 replays 0 (last: 0 paths in 0 ms)",
    ]
    assert format_router({"driver": "kernel"}, 0) == "router driver: kernel\n"


async def test_pause_and_resume_need_the_operate_scope_and_show_everywhere(view: View,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_READ", "reader-token-0123456789")
    monkeypatch.setenv("T_OPS", "operator-token-0123456789")
    access = ApiConfig.model_validate({"credentials": [
        {"name": "dashboards", "token": {"env": "T_READ"}, "scopes": ["read"]},
        {"name": "alice", "token": {"env": "T_OPS"}, "scopes": ["read", "operate"]}]})
    reader = {"Authorization": "Bearer reader-token-0123456789"}
    ops = {"Authorization": "Bearer operator-token-0123456789"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(view, access=access)),
                                 base_url="http://api") as c:
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
                                (reader, 403)):
            for path in ("/v1/pools/web/pause", "/v1/pools/web/resume"):
                r = await c.post(path, headers=headers, json={"reason": "x"})
                assert r.status_code == status, (path, headers, r.text)
        assert view.store.pool("web").paused_at is None                                 # type: ignore[union-attr]
        assert [e for e in view.store.events("web") if e.kind == "pause"] == []
        refused = view.metrics.registry.get_sample_value
        assert refused("scaler_api_refused_total", {"scope": "operate", "status": "401"}) == 4
        assert refused("scaler_api_refused_total", {"scope": "operate", "status": "403"}) == 2

        r = await c.post("/v1/pools/web/pause", headers=ops, json={"reason": "hypervisor maintenance"})
        assert r.status_code == 200, r.text
        assert r.json()["paused"]["by"] == "api (alice)" and r.json()["paused"]["reason"] == "hypervisor maintenance"
        pools = (await c.get("/v1/pools", headers=reader)).json()
        assert pools[0]["paused"]["by"] == "api (alice)"
        why = (await c.get("/v1/pools/web/why", headers=reader)).text
        assert why.startswith("web: paused by api (alice) at ") and "hypervisor maintenance" in why
        assert (await c.post("/v1/pools/nope/pause", headers=ops)).status_code == 404

        r = await c.post("/v1/pools/web/resume", headers=ops)
        assert r.status_code == 200 and r.json()["paused"] is None
        assert "paused" not in (await c.get("/v1/pools/web/why", headers=reader)).text
        assert [e.message.split(" at ")[0] for e in view.store.events("web") if e.kind == "pause"] == [
            "paused by api (alice): hypervisor maintenance: decisions start nothing; health checks still withdraw "
            "dead members", "resumed by api (alice) (paused by api (alice)"]
