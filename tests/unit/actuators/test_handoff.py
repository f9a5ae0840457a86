"""The handoff table (actuators/handoff.py): what each member's nftables rules say, and the counters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from actuators import handoff
from actuators.errors import ActuatorError, OrchestratorError
from actuators.handoff import HandoffError, HandoffRules
from actuators.lab.orchestrator import LabOrchestrator, LabOrchestratorConfig

VIP = IPv4Address("198.19.0.1")
P1, P2 = IPv4Address("198.19.255.3"), IPv4Address("198.19.255.2")


def rules_of(text: str, chain: str) -> list[str]:
    prefix = f"add rule ip {handoff.TABLE} {chain} "
    return [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]


def test_a_stray_is_copied_to_every_peer_in_address_order_then_dropped() -> None:
    text = handoff.render(HandoffRules((VIP,), "lab-1p", (P1, P2)))
    assert rules_of(text, "to_peers") == [
        'counter name strays dup to 198.19.255.2 device "lab-1p" dup to 198.19.255.3 device "lab-1p" drop']


def test_what_is_mine_or_new_is_accepted_before_anything_is_copied() -> None:
    pre = rules_of(handoff.render(HandoffRules((VIP,), "lab-1p", (P1,))), "prerouting")
    assert pre == ['iifname "lo" accept', "ip daddr != { 198.19.0.1 } accept", "ip protocol != tcp accept",
                   'iifname "lab-1p" jump from_peer', "ct state established,related accept",
                   "tcp flags & (syn | ack) == syn accept", "jump to_peers"]


def test_a_copy_from_a_peer_is_accepted_only_if_mine_and_never_copied_on() -> None:
    text = handoff.render(HandoffRules((VIP,), "lab-1p", (P1,)))
    assert rules_of(text, "from_peer") == ["ct state established,related counter name peer_accepted accept",
                                           "counter name peer_dropped drop"]


def test_without_peers_a_stray_goes_on_to_the_stack() -> None:
    text = handoff.render(HandoffRules((VIP,), "lab-1p"))
    assert rules_of(text, "to_peers") == ["counter name strays accept"]
    assert "dup" not in text


def test_a_reapply_flushes_chains_but_never_deletes_the_table() -> None:
    # Deleting the table would switch conntrack off and on: connections made meanwhile are unknown.
    text = handoff.render(HandoffRules((VIP, IPv4Address("198.19.0.2")), "eth0", (P1,)))
    assert "delete" not in text and "flush table" not in text
    assert text.index("flush chain ip scaler_handoff prerouting") < text.index("add rule")
    assert "ip daddr != { 198.19.0.1, 198.19.0.2 } accept" in text


def test_the_conntrack_settings_the_rules_rely_on() -> None:
    assert handoff.SYSCTLS["net.netfilter.nf_conntrack_tcp_loose"] == "0"
    assert handoff.SYSCTLS["net.netfilter.nf_conntrack_tcp_be_liberal"] == "1"
    assert int(handoff.SYSCTLS["net.netfilter.nf_conntrack_tcp_timeout_time_wait"]) <= 5


@pytest.mark.parametrize(("vips", "device", "peers", "message"), [
    ((), "eth0", (), "no VIP"),
    ((VIP,), "eth0; drop", (), "invalid peer device name"),
    ((VIP,), "a-very-long-interface", (), "invalid peer device name"),
    ((VIP,), "eth0", (P1, P1), "listed twice"),
])
def test_bad_rules_are_refused_naming_the_problem(vips: tuple[IPv4Address, ...], device: str,
                                                   peers: tuple[IPv4Address, ...], message: str) -> None:
    with pytest.raises(HandoffError, match=message):
        HandoffRules(vips, device, peers)
    assert issubclass(HandoffError, ActuatorError)


def test_counters_are_read_from_nft_json() -> None:
    listing = json.dumps({"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"counter": {"family": "ip", "name": "strays", "table": handoff.TABLE, "packets": 7, "bytes": 400}},
        {"counter": {"family": "ip", "name": "peer_accepted", "table": handoff.TABLE, "packets": 3, "bytes": 1}},
        {"counter": {"family": "ip", "name": "strays", "table": "other", "packets": 99, "bytes": 1}},
    ]})
    assert handoff.parse_counters(listing) == {"strays": 7, "peer_accepted": 3, "peer_dropped": 0}
    with pytest.raises(HandoffError, match="unreadable"):
        handoff.parse_counters("not json")


def test_open_flows_lists_the_sockets_on_the_vips_that_still_carry_data() -> None:
    argv = handoff.open_flows_argv([IPv4Address("198.19.0.2"), VIP])
    assert argv[:2] == ["ss", "-Htn"]
    states = [argv[i + 1] for i, w in enumerate(argv) if w == "state"]
    assert "fin-wait-1" in states and "established" in states       # closed by HAProxy, data in flight
    assert "time-wait" not in states and "fin-wait-2" not in states  # every byte acknowledged
    assert argv[argv.index("("):] == ["(", "src", "198.19.0.1", "or", "src", "198.19.0.2", ")"]
    with pytest.raises(HandoffError, match="no VIP"):
        handoff.open_flows_argv([])


def test_a_vxlan_flood_list_is_brought_to_exactly_the_peers() -> None:
    listing = json.dumps([{"mac": "00:00:00:00:00:00", "dst": "198.18.2.2", "flags": ["self"]},
                          {"mac": "00:00:00:00:00:00", "dst": "198.18.3.2", "flags": ["self"]},
                          {"mac": "5a:11:22:33:44:55", "dst": "198.18.9.2", "flags": ["self"]}])   # learned
    current = handoff.parse_flood(listing)
    assert current == {IPv4Address("198.18.2.2"), IPv4Address("198.18.3.2")}
    batch = handoff.flood_batch("lab-1p", current, [IPv4Address("198.18.3.2"), IPv4Address("198.18.4.2")])
    assert batch == ("fdb append 00:00:00:00:00:00 dev lab-1p dst 198.18.4.2\n"
                     "fdb del 00:00:00:00:00:00 dev lab-1p dst 198.18.2.2\n")
    assert handoff.flood_batch("lab-1p", current, current) == ""
    with pytest.raises(HandoffError, match="unreadable fdb"):
        handoff.parse_flood("{")


def test_peers_of_a_member_are_all_the_others() -> None:
    addresses = {"b": P1, "a": P2, "c": IPv4Address("198.19.255.9")}
    assert handoff.peers_of("a", addresses) == (P1, IPv4Address("198.19.255.9"))
    assert handoff.unknown(["a", "x", "y"], addresses) == ["x", "y"]


def test_the_lab_refuses_set_peers_when_handoff_is_off(tmp_path: Path) -> None:
    orch = LabOrchestrator(LabOrchestratorConfig(lab="hou", dir=tmp_path))
    peers: handoff.Peers = orch          # the lab orchestrator is the lab's Peers (checked by mypy)
    assert orch.cfg.handoff is False and peers is orch
    assert handoff.peers_from(orch) is None, "handoff off: the scaler has no peers to keep"
    on = LabOrchestrator(LabOrchestratorConfig(lab="hou", dir=tmp_path, handoff=True))
    assert handoff.peers_from(on) is on
    assert handoff.peers_from(object()) is None
    with pytest.raises(OrchestratorError, match="handoff is off"):
        asyncio.run(orch.set_peers("web", ["a"]))


class RecordingPeers:
    """A `Peers` that records its calls and fails for the pools told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.failing: set[str] = set()

    async def set_peers(self, pool: str, members: Collection[str]) -> None:
        self.calls.append((pool, list(members)))
        if pool in self.failing:
            raise OrchestratorError(f"pool {pool}: b: unreachable")

    async def open_flows(self, member: str) -> int | None:
        return None


def test_peer_sync_pushes_a_pool_only_when_its_members_changed() -> None:
    peers = RecordingPeers()
    sync = handoff.PeerSync(peers)
    assert asyncio.run(sync.sync({"web": ["b", "a"], "api": ["x"]})) == {}
    assert peers.calls == [("api", ["x"]), ("web", ["a", "b"])]
    asyncio.run(sync.sync({"web": ["a", "b"], "api": ["x"]}))
    assert len(peers.calls) == 2, "nothing changed: nothing sent"
    asyncio.run(sync.sync({"web": ["a", "b", "c"], "api": ["x"]}))
    assert peers.calls[2:] == [("web", ["a", "b", "c"])]


def test_peer_sync_retries_a_pool_that_failed() -> None:
    peers = RecordingPeers()
    peers.failing.add("web")
    sync = handoff.PeerSync(peers)
    errors = asyncio.run(sync.sync({"web": ["a", "b"]}))
    assert list(errors) == ["web"] and "unreachable" in str(errors["web"])
    peers.failing.clear()
    assert asyncio.run(sync.sync({"web": ["a", "b"]})) == {}
    assert peers.calls == [("web", ["a", "b"]), ("web", ["a", "b"])]
