"""The lab orchestrator's pure parts and its file state (index allocation, meta.json, naming, the
HAProxy configuration, list/probe/delete of half-made instances), plus the lab's configuration.
Nothing here needs root: no namespace is created."""

from __future__ import annotations

import asyncio
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from pydantic import ValidationError

from actuators.errors import OrchestratorError
from actuators.lab.orchestrator import (
    InstanceMeta,
    LabOrchestrator,
    LabOrchestratorConfig,
    allocate_index,
    check_instance_name,
    instance_address,
    instance_ifname,
    kill_pidfile,
    render_haproxy_cfg,
    router_ifname,
    write_atomic,
)
from actuators.orchestrator import Instance, InstanceSpec
from scaler.lab.network import LabConfig

VIP = IPv4Address("198.19.0.1")


@pytest.mark.parametrize(("used", "expected"), [
    pytest.param([], 1, id="first instance gets 1 (0 is the client link)"),
    pytest.param([1, 2, 3], 4, id="next after a run"),
    pytest.param([1, 3, 4], 2, id="a freed index is reused"),
    pytest.param([2, 2, 5], 1, id="duplicates and gaps"),
    pytest.param(range(1, 254), 254, id="last one"),
])
def test_allocate_index(used: list[int], expected: int) -> None:
    assert allocate_index(used) == expected


def test_allocate_index_when_full() -> None:
    with pytest.raises(OrchestratorError, match="no free lab link index"):
        allocate_index(range(1, 255))


@pytest.mark.parametrize("name", ["a", "web-op12-1", "X_1.b", "a" * 40])
def test_good_instance_names(name: str) -> None:
    check_instance_name(name)


@pytest.mark.parametrize("name", ["", "-a", ".hidden", "a/b", "..", "a b", "a" * 41])
def test_bad_instance_names(name: str) -> None:
    with pytest.raises(OrchestratorError, match="invalid lab instance name"):
        check_instance_name(name)


def test_interface_names_fit_ifnamsiz() -> None:
    assert router_ifname("sclt3f", 254) == "sclt3f-254r"
    assert len(instance_ifname("abcdef", 254)) <= 15
    assert instance_address(7) == IPv4Address("198.18.7.2")


@pytest.mark.parametrize("name", ["scl-1", "toolong", "Scl", "1ab", ""])
def test_lab_names_are_short_and_plain(name: str) -> None:
    with pytest.raises(ValidationError):
        LabConfig(name=name)


def test_lab_config_defaults_and_orchestrator_config() -> None:
    cfg = LabConfig(name="sclu")
    assert cfg.lab_dir == Path("/run/scaler-lab/sclu")
    assert (cfg.router_ns, cfg.client_ns, cfg.prefix) == ("sclu-router", "sclu-client", "sclu-")
    ocfg = cfg.orchestrator_config(backend_delay_ms=5)
    assert (ocfg.lab, ocfg.lab_dir, ocfg.vip, ocfg.backend_delay_ms) == ("sclu", cfg.lab_dir, VIP, 5)
    with pytest.raises(ValidationError):
        LabOrchestratorConfig(lab="sclu", bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LabOrchestratorConfig(lab="sclu", keepalive_timeout_s=121)


def test_haproxy_cfg_has_vip_lb_header_drain_and_exporters(tmp_path: Path) -> None:
    cfg = LabOrchestratorConfig(lab="sclu", dir=tmp_path, keepalive_timeout_s=1.5)
    orch = LabOrchestrator(cfg)
    meta = InstanceMeta(name="a", pool="web", idx=3, vip=VIP, lab="sclu", created_at=0)
    text = render_haproxy_cfg(meta, orch.paths("a"), cfg)
    inst = tmp_path / "instances" / "a"
    for line in [
        f"stats socket {inst}/admin.sock mode 600 level admin",
        "timeout http-keep-alive 1500ms",
        "bind 198.19.0.1:80",
        "http-after-response set-header x-lb a",
        f"http-after-response set-header connection close if {{ str(drain),map({inst}/scaler-drain.map,0)"
        " -m str 1 }",
        "server app 127.0.0.1:8081",
        f"bind unix@{inst}/metrics.sock mode 666",
        "bind 198.18.3.2:8404",
        "http-request use-service prometheus-exporter",
    ]:
        assert f"    {line}\n" in text, line
    assert render_haproxy_cfg(meta, orch.paths("a"), cfg) == text


def write_meta(orch: LabOrchestrator, name: str, idx: int, pool: str = "web", complete: bool = False) -> None:
    meta = InstanceMeta(name=name, pool=pool, idx=idx, vip=VIP, lab=orch.cfg.lab, created_at=time.time(),
                        complete=complete)
    write_atomic(orch.paths(name).meta, meta.model_dump_json())


async def test_list_probe_delete_of_instances_whose_namespace_is_gone(tmp_path: Path) -> None:
    # A lab name no test ever brings up, so none of its namespaces exist.
    orch = LabOrchestrator(LabOrchestratorConfig(lab="sclu", dir=tmp_path))
    write_meta(orch, "a", 4)
    write_meta(orch, "b", 2, pool="other", complete=True)
    (tmp_path / "instances" / "torn").mkdir()
    (tmp_path / "instances" / "torn" / "meta.json").write_text("{not json")

    listed = await orch.list("web")
    assert [(i.name, i.status, i.address) for i in listed] == [("a", "error", IPv4Address("198.18.4.2"))]
    assert listed[0].endpoints == {"metrics_url": "http://localhost/metrics",
                                   "metrics_uds": f"{tmp_path}/instances/a/metrics.sock",
                                   "runtime_api": f"{tmp_path}/instances/a/admin.sock",
                                   "health_url": "http://198.18.4.2:8405/healthz",
                                   "health_netns": f"{orch.cfg.lab}-router"}
    assert await orch.probe(listed[0]) is False
    assert await orch.probe(Instance(name="nope", pool="web", address=None, status="active")) is False

    await orch.delete("a")
    await orch.delete("a")
    await orch.delete("never-existed")
    await orch.delete("../escape")                     # an impossible name: nothing to do
    assert not (tmp_path / "instances" / "a").exists()
    assert await orch.list("web") == []
    assert [i.name for i in await orch.list("other")] == ["b"]


async def test_create_refuses_when_the_lab_is_not_up(tmp_path: Path) -> None:
    orch = LabOrchestrator(LabOrchestratorConfig(lab="sclu", dir=tmp_path))
    with pytest.raises(OrchestratorError, match="instance a: lab 'sclu' is not up"):
        await orch.create(InstanceSpec(pool="web", vip=VIP), "a")
    with pytest.raises(OrchestratorError, match="instance 'a/b': invalid"):
        await orch.create(InstanceSpec(pool="web", vip=VIP), "a/b")
    pinned = LabOrchestrator(LabOrchestratorConfig(lab="sclu", dir=tmp_path, vip=VIP))
    with pytest.raises(OrchestratorError, match=r"serves VIP 198\.19\.0\.1"):
        await pinned.create(InstanceSpec(pool="web", vip=IPv4Address("198.19.0.2")), "a")
    assert not (tmp_path / "instances" / "a").exists()


async def test_create_refuses_instance_options_the_lab_does_not_read(tmp_path: Path) -> None:
    # The lab reads nothing from a pool's `instance:` (scaler.yaml): a key there is a mistake, said
    # before anything is made (scaler check says it first, with the key's line).
    orch = LabOrchestrator(LabOrchestratorConfig(lab="sclu", dir=tmp_path))
    with pytest.raises(OrchestratorError, match="pool web: instance options: flavour: Extra inputs are not permitted"):
        await orch.create(InstanceSpec(pool="web", vip=VIP, params={"flavour": "big"}), "a")
    assert not (tmp_path / "instances" / "a").exists()


async def test_kill_pidfile_checks_the_command_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)",
                                                str(tmp_path))
    try:
        pidfile = tmp_path / "x.pid"
        pidfile.write_text(f"{proc.pid}\n")
        assert await kill_pidfile(pidfile, "/somewhere/else/") is None      # not ours: untouched
        assert proc.returncode is None and not pidfile.exists()
        pidfile.write_text(f"{proc.pid}\n")
        stopped = await kill_pidfile(pidfile, f"{tmp_path}")
        assert stopped is not None and stopped[0] == proc.pid
        assert await asyncio.wait_for(proc.wait(), 5) is not None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
