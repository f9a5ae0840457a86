"""The kernel driver's conntrack mode without a kernel: the nftables script, the conntrack parser, the
plan (plain group of the active members, a rule and a table per member), and the safety rule of the
resilient mode. The same against the real kernel: tests/integration/actuators/test_kernel_router.py."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from actuators.kernel import netlink as nl
from actuators.kernel import pinning
from actuators.kernel.router import KernelRouterConfig, Snapshot, plan
from actuators.router import HopState, NextHop

VIP = IPv4Address("198.19.0.1")
M1, M2, M3 = (IPv4Address(f"198.18.{i}.2") for i in (1, 2, 3))
OIFS = {M1: 11, M2: 12, M3: 13}
CT = KernelRouterConfig(mode="conntrack")

LINES = [
    "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.2 dst=198.19.0.1 sport=1 dport=80 src=198.19.0.1 "
    f"dst=198.18.0.2 sport=80 dport=1 [ASSURED] mark={int(M1)} zone=0 use=2",
    "ipv4     2 tcp      6 119 TIME_WAIT src=198.18.0.2 dst=198.19.0.1 sport=2 dport=80 src=198.19.0.1 "
    f"dst=198.18.0.2 sport=80 dport=2 [ASSURED] mark={int(M1)} zone=0 use=2",
    "ipv4     2 tcp      6 60 SYN_SENT src=198.18.0.2 dst=198.19.0.1 sport=3 dport=80 [UNREPLIED] "
    f"src=198.19.0.1 dst=198.18.0.2 sport=80 dport=3 mark={int(M2)} zone=0 use=2",
    "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.2 dst=198.18.9.9 sport=4 dport=22 src=198.18.9.9 "
    "dst=198.18.0.2 sport=22 dport=4 [ASSURED] mark=0 zone=0 use=2",
]


def test_the_nft_script_redefines_our_table_in_one_transaction() -> None:
    script = pinning.render("scaler_pin", [VIP], [M2, M1])
    assert script.splitlines()[:2] == ["table ip scaler_pin {}", "flush table ip scaler_pin"]
    assert f"elements = {{ {M1} : {int(M1):#010x}, {M2} : {int(M2):#010x} }};" in script
    assert "ip daddr @vips ct state new ct mark set rt ip nexthop map @nh2mark" in script
    assert "ip daddr @vips ct mark != 0 meta mark set ct mark" in script
    assert "elements" not in pinning.render("scaler_pin", [], [])     # empty set and map are valid


def test_conntrack_lines_count_live_flows_per_member_and_unreplied_ones() -> None:
    live, unreplied, total = pinning.parse("\n".join(LINES), frozenset({str(VIP)}))
    assert live == {int(M1): 1, int(M2): 1}        # TIME_WAIT is not live; the ssh flow is not to a VIP
    assert (unreplied, total) == (1, 3)


def snap_after(desired: dict[IPv4Address, frozenset[NextHop]]) -> Snapshot:
    """The kernel's state once `plan(desired, empty)` has been applied (what the batch creates)."""
    nexthops: dict[int, nl.Nexthop] = {int(m): nl.Nexthop(int(m), protocol=99, gateway=m, oif=OIFS[m])
                                       for hops in desired.values() for m in (h.address for h in hops)}
    routes, rules, pins = {}, {}, {}
    for vip, hops in desired.items():
        active = [h for h in hops if h.state is HopState.ACTIVE] or list(hops)
        nexthops[int(vip)] = nl.Nexthop(int(vip), protocol=99, group=tuple(nl.GroupMember(int(h.address), 1)
                                                                             for h in active))
        routes[vip] = nl.Route(dst=vip, protocol=99, nh_id=int(vip))
        for h in hops:
            rules[int(h.address)] = nl.Rule(1000, int(h.address), fwmark=int(h.address), protocol=99)
            pins[(int(h.address), vip)] = nl.Route(dst=vip, table=int(h.address), protocol=99, nh_id=int(h.address))
    return Snapshot(nexthops, routes, rules, pins)


def test_plan_pins_every_member_and_groups_only_the_active_ones() -> None:
    desired = {VIP: frozenset({NextHop(M1), NextHop(M2)})}
    p = plan(desired, Snapshot({}, {}), CT, OIFS)
    names = [r.what for r in p.requests]
    assert names[:2] == [f"add nexthop {int(M1)} via {M1} dev #11", f"add nexthop {int(M2)} via {M2} dev #12"]
    assert [n for n in names if n.startswith("pin route")] == [
        f"pin route {VIP}/32 nhid {int(m)} table {int(m)} ({m})" for m in (M1, M2)]
    assert [n for n in names if n.startswith("add rule")] == [
        f"add rule fwmark {int(m):#x} lookup {int(m)} ({m})" for m in (M1, M2)]
    # Pins before the group: a new member's first flow finds its table.
    assert names.index(f"add group {int(VIP)} of VIP {VIP}") > max(i for i, n in enumerate(names) if "rule" in n)
    assert p.pins_during == p.pins_after == {M1, M2} and p.pin_vips == {VIP}
    assert sorted(p.added) == [(VIP, M1), (VIP, M2)]


def test_a_draining_member_leaves_the_group_and_keeps_its_pin() -> None:
    before = {VIP: frozenset({NextHop(M1), NextHop(M2)})}
    desired = {VIP: frozenset({NextHop(M1), NextHop(M2, HopState.DRAINING)})}
    p = plan(desired, snap_after(before), CT, OIFS)
    assert [r.what for r in p.requests] == [f"replace group {int(VIP)} of VIP {VIP}"]
    assert p.reweighted == [(VIP, M2)] and not p.added and not p.removed
    assert p.pins_after == {M1, M2}


def test_a_member_that_leaves_loses_route_rule_and_nexthop_after_the_group() -> None:
    before = {VIP: frozenset({NextHop(M1), NextHop(M2, HopState.DRAINING)})}
    p = plan({VIP: frozenset({NextHop(M1)})}, snap_after(before), CT, OIFS)
    assert [r.what for r in p.requests] == [
        f"delete pinned route {VIP}/32 table {int(M2)} ({M2})",
        f"delete rule fwmark {int(M2):#x} ({M2})",
        f"delete nexthop {int(M2)} ({M2})",
    ]
    assert p.removed == [(VIP, M2)]
    assert p.pins_during == {M1, M2} and p.pins_after == {M1}


def test_a_vip_left_with_only_draining_members_keeps_a_route_through_them() -> None:
    desired = {VIP: frozenset({NextHop(M3, HopState.DRAINING)})}
    p = plan(desired, Snapshot({}, {}), CT, OIFS)
    group = next(r for r in p.requests if r.what.startswith("add group"))
    assert group.what == f"add group {int(VIP)} of VIP {VIP}"


def test_reapplying_the_same_state_sends_nothing() -> None:
    desired = {VIP: frozenset({NextHop(M1), NextHop(M2), NextHop(M3, HopState.DRAINING)})}
    p = plan(desired, snap_after(desired), CT, OIFS)
    assert p.requests == [] and not (p.added or p.removed or p.reweighted)


@pytest.mark.parametrize(("mode", "idle", "silence", "unsafe"), [
    pytest.param("resilient", 5, 30, True, id="resilient 5 s under a 30 s silence moves silent flows"),
    pytest.param("resilient", 30, 30, True, id="equal is not enough"),
    pytest.param("resilient", 40, 30, False, id="resilient 40 s over a 30 s silence"),
    pytest.param("conntrack", 5, 30, False, id="conntrack never moves an established flow"),
])
def test_resilient_timers_must_outlast_the_longest_silence(mode: str, idle: float, silence: float,
                                                           unsafe: bool) -> None:
    cfg = KernelRouterConfig.model_validate({"mode": mode, "idle_timer_s": idle})
    assert (cfg.unsafe_for(silence) is not None) is unsafe
