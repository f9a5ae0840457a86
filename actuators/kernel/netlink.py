"""A minimal rtnetlink client for nexthop objects, resilient-group buckets and IPv4 routes.

pyroute2 0.9.7 has no nexthop-object API (RTM_*NEXTHOP*, `struct nhmsg`, the nested
`NHA_RES_GROUP`), so instead of hooking into its internal message classes this module encodes the
few messages we need with `struct`: the whole codec is a couple of hundred lines and has no
dependency to break on upgrade. It only speaks netlink — encode, send, decode, map errors — and
never decides what the router should hold (that is `actuators.kernel.router`). It must not be used from
two threads at once without the caller serialising (one request/ACK stream per socket).
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address

from actuators.errors import ActuatorError, RouterError
from actuators.linux import netns

# --- constants (linux/netlink.h, linux/rtnetlink.h, linux/nexthop.h) ---------------------------

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300           # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100         # in an ACK: the echoed request was cut to its header
NLM_F_ACK_TLVS = 0x200       # in an ACK: extended-ACK attributes follow

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

NLMSGERR_ATTR_MSG = 1

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34
RTM_NEWNEXTHOP = 104
RTM_DELNEXTHOP = 105
RTM_GETNEXTHOP = 106
RTM_NEWNEXTHOPBUCKET = 116
RTM_GETNEXTHOPBUCKET = 118

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15
RTA_NH_ID = 30

RT_TABLE_UNSPEC = 0
RT_TABLE_COMPAT = 252
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTN_LOCAL = 2

NHA_ID = 1
NHA_GROUP = 2
NHA_GROUP_TYPE = 3
NHA_BLACKHOLE = 4
NHA_OIF = 5
NHA_GATEWAY = 6
NHA_RES_GROUP = 12
NHA_RES_BUCKET = 13

NEXTHOP_GRP_TYPE_MPATH = 0
NEXTHOP_GRP_TYPE_RES = 1

NHA_RES_GROUP_BUCKETS = 1
NHA_RES_GROUP_IDLE_TIMER = 2
NHA_RES_GROUP_UNBALANCED_TIMER = 3
NHA_RES_GROUP_UNBALANCED_TIME = 4

NHA_RES_BUCKET_INDEX = 1
NHA_RES_BUCKET_IDLE_TIME = 2
NHA_RES_BUCKET_NH_ID = 3

FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_PROTOCOL = 21
FR_ACT_TO_TBL = 1

USER_HZ = 100                # clock_t in netlink is USER_HZ, fixed at 100 on Linux
MAX_WEIGHT = 65536           # weight-1 in 8 bits + weight_high (16-bit weights since kernel 6.12)

_NLMSGHDR = struct.Struct("=IHHII")     # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")          # len, type
_NHMSG = struct.Struct("=BBBBI")        # family, scope, protocol, resvd, flags
_RTMSG = struct.Struct("=BBBBBBBBI")    # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")   # family, dst_len, src_len, tos, table, res1, res2, action, flags
_NH_GRP = struct.Struct("=IBBH")        # id, weight-1, weight_high, resvd
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_I32 = struct.Struct("=i")

IPAddress = IPv4Address | IPv6Address


def _align(n: int) -> int:
    return (n + 3) & ~3


# --- attributes ----------------------------------------------------------------------------------

def nla(type_: int, payload: bytes, *, nested: bool = False) -> bytes:
    """One netlink attribute, padded to 4 bytes. Nested ones need NLA_F_NESTED or the kernel says EINVAL."""
    length = _NLATTR.size + len(payload)
    header = _NLATTR.pack(length, type_ | (NLA_F_NESTED if nested else 0))
    return header + payload + b"\0" * (_align(length) - length)


def nla_u16(type_: int, value: int) -> bytes:
    return nla(type_, _U16.pack(value))


def nla_u32(type_: int, value: int) -> bytes:
    return nla(type_, _U32.pack(value))


def nla_u64(type_: int, value: int) -> bytes:
    return nla(type_, _U64.pack(value))


def nla_flag(type_: int) -> bytes:
    return nla(type_, b"")


def nla_addr(type_: int, address: IPAddress) -> bytes:
    return nla(type_, address.packed)


def iter_nlas(data: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
    """(type without flag bits, payload) for each attribute in `data`; raises ValueError if truncated."""
    view = memoryview(data)
    offset = 0
    while offset + _NLATTR.size <= len(view):
        length, type_ = _NLATTR.unpack_from(view, offset)
        if length < _NLATTR.size or offset + length > len(view):
            raise ValueError(f"bad netlink attribute length {length} at offset {offset}")
        yield type_ & NLA_TYPE_MASK, bytes(view[offset + _NLATTR.size:offset + length])
        offset += _align(length)


def parse_nlas(data: bytes | memoryview) -> dict[int, bytes]:
    """Attributes by type; a repeated type keeps its last value (we never send or read lists this way)."""
    return dict(iter_nlas(data))


def _u16(data: bytes) -> int:
    return int(_U16.unpack_from(data)[0])


def _u32(data: bytes) -> int:
    return int(_U32.unpack_from(data)[0])


def _u64(data: bytes) -> int:
    return int(_U64.unpack_from(data)[0])


def _addr(data: bytes) -> IPAddress:
    return ipaddress.ip_address(bytes(data))


# --- messages ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NlMsg:
    """One netlink message: header fields and the payload after the 16-byte header."""

    type: int
    flags: int
    seq: int
    payload: bytes
    pid: int = 0


def encode_msg(msg: NlMsg) -> bytes:
    length = _NLMSGHDR.size + len(msg.payload)
    header = _NLMSGHDR.pack(length, msg.type, msg.flags, msg.seq, msg.pid)
    return header + msg.payload + b"\0" * (_align(length) - length)


def decode_msgs(data: bytes | memoryview) -> list[NlMsg]:
    """Split a datagram into messages; raises ValueError if a header lies about its length."""
    view = memoryview(data)
    out: list[NlMsg] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(view):
        length, type_, flags, seq, pid = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > len(view):
            raise ValueError(f"bad netlink message length {length} at offset {offset}")
        out.append(NlMsg(type_, flags, seq, bytes(view[offset + _NLMSGHDR.size:offset + length]), pid))
        offset += _align(length)
    return out


def encode_error(error: int, request: NlMsg, ext_msg: str | None = None) -> NlMsg:
    """An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK (for tests and fakes); errno > 0."""
    echoed = _NLMSGHDR.pack(_NLMSGHDR.size + len(request.payload), request.type, request.flags,
                            request.seq, request.pid)
    payload = _I32.pack(-error) + echoed
    flags = NLM_F_CAPPED
    if ext_msg is not None:
        payload += nla(NLMSGERR_ATTR_MSG, ext_msg.encode() + b"\0")
        flags |= NLM_F_ACK_TLVS
    return NlMsg(NLMSG_ERROR, flags, request.seq, payload)


def decode_error(msg: NlMsg) -> tuple[int, str | None]:
    """(errno, extended-ACK text) of an NLMSG_ERROR or NLMSG_DONE; errno 0 means success."""
    code = _I32.unpack_from(msg.payload)[0] if len(msg.payload) >= 4 else 0
    text: str | None = None
    if msg.flags & NLM_F_ACK_TLVS:
        if msg.type == NLMSG_DONE:
            offset = 4
        elif msg.flags & NLM_F_CAPPED:
            offset = 4 + _NLMSGHDR.size
        else:  # the whole request is echoed before the attributes
            offset = 4 + _align(_NLMSGHDR.unpack_from(msg.payload, 4)[0])
        raw = parse_nlas(msg.payload[offset:]).get(NLMSGERR_ATTR_MSG)
        if raw:
            text = raw.rstrip(b"\0").decode(errors="replace")
    return -code, text


# --- objects -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GroupMember:
    """One entry of a nexthop group; `weight` is the real weight, 1..65536."""

    id: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Nexthop:
    """A kernel nexthop object: a gateway (`gateway`/`oif`) or a group (`group` non-empty).

    Timers are in USER_HZ (1/100 s), exactly as the kernel reports them, so comparisons are exact.
    """

    id: int
    protocol: int = 0
    family: int = socket.AF_INET
    gateway: IPAddress | None = None
    oif: int | None = None
    blackhole: bool = False
    group: tuple[GroupMember, ...] = ()
    group_type: int = NEXTHOP_GRP_TYPE_MPATH
    buckets: int | None = None
    idle_timer: int | None = None
    unbalanced_timer: int | None = None
    scope: int = 0
    flags: int = 0

    @property
    def is_group(self) -> bool:
        return bool(self.group)

    @property
    def is_resilient(self) -> bool:
        return self.is_group and self.group_type == NEXTHOP_GRP_TYPE_RES


def encode_group(members: Sequence[GroupMember]) -> bytes:
    """The NHA_GROUP payload: packed `struct nexthop_grp`, weight stored as weight-1 over 16 bits."""
    out = bytearray()
    for m in members:
        if not 1 <= m.weight <= MAX_WEIGHT:
            raise ValueError(f"nexthop {m.id}: weight {m.weight} outside 1..{MAX_WEIGHT}")
        w = m.weight - 1
        out += _NH_GRP.pack(m.id, w & 0xFF, w >> 8, 0)
    return bytes(out)


def decode_group(data: bytes) -> tuple[GroupMember, ...]:
    if len(data) % _NH_GRP.size:
        raise ValueError(f"NHA_GROUP length {len(data)} is not a multiple of {_NH_GRP.size}")
    members = []
    for offset in range(0, len(data), _NH_GRP.size):
        id_, low, high, _ = _NH_GRP.unpack_from(data, offset)
        members.append(GroupMember(id_, ((high << 8) | low) + 1))
    return tuple(members)


def encode_nexthop(nh: Nexthop, *, with_buckets: bool = True) -> bytes:
    """nhmsg + attributes for RTM_NEWNEXTHOP. `with_buckets=False` leaves NHA_RES_GROUP_BUCKETS out,
    which replacing an existing resilient group needs (the kernel refuses to change the count)."""
    family = socket.AF_UNSPEC if nh.is_group else nh.family   # the kernel wants AF_UNSPEC for groups
    out = bytearray(_NHMSG.pack(family, 0, nh.protocol, 0, nh.flags))
    out += nla_u32(NHA_ID, nh.id)
    if nh.is_group:
        out += nla(NHA_GROUP, encode_group(nh.group))
        out += nla_u16(NHA_GROUP_TYPE, nh.group_type)
        if nh.group_type == NEXTHOP_GRP_TYPE_RES:
            res = b""
            if with_buckets and nh.buckets is not None:
                res += nla_u16(NHA_RES_GROUP_BUCKETS, nh.buckets)
            if nh.idle_timer is not None:
                res += nla_u32(NHA_RES_GROUP_IDLE_TIMER, nh.idle_timer)
            if nh.unbalanced_timer is not None:
                res += nla_u32(NHA_RES_GROUP_UNBALANCED_TIMER, nh.unbalanced_timer)
            out += nla(NHA_RES_GROUP, res, nested=True)
    elif nh.blackhole:
        out += nla_flag(NHA_BLACKHOLE)
    else:
        if nh.oif is not None:
            out += nla_u32(NHA_OIF, nh.oif)
        if nh.gateway is not None:
            out += nla_addr(NHA_GATEWAY, nh.gateway)
    return bytes(out)


def decode_nexthop(payload: bytes) -> Nexthop:
    family, scope, protocol, _, flags = _NHMSG.unpack_from(payload)
    attrs = parse_nlas(payload[_NHMSG.size:])
    res = parse_nlas(attrs[NHA_RES_GROUP]) if NHA_RES_GROUP in attrs else {}
    return Nexthop(
        id=_u32(attrs[NHA_ID]) if NHA_ID in attrs else 0,
        protocol=protocol,
        family=family,
        gateway=_addr(attrs[NHA_GATEWAY]) if NHA_GATEWAY in attrs else None,
        oif=_u32(attrs[NHA_OIF]) if NHA_OIF in attrs else None,
        blackhole=NHA_BLACKHOLE in attrs,
        group=decode_group(attrs[NHA_GROUP]) if NHA_GROUP in attrs else (),
        group_type=_u16(attrs[NHA_GROUP_TYPE]) if NHA_GROUP_TYPE in attrs else NEXTHOP_GRP_TYPE_MPATH,
        buckets=_u16(res[NHA_RES_GROUP_BUCKETS]) if NHA_RES_GROUP_BUCKETS in res else None,
        idle_timer=_u32(res[NHA_RES_GROUP_IDLE_TIMER]) if NHA_RES_GROUP_IDLE_TIMER in res else None,
        unbalanced_timer=(_u32(res[NHA_RES_GROUP_UNBALANCED_TIMER])
                          if NHA_RES_GROUP_UNBALANCED_TIMER in res else None),
        scope=scope,
        flags=flags,
    )


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of a resilient group: which member it maps to and how long it has been idle (USER_HZ)."""

    group_id: int
    index: int
    nh_id: int
    idle_time: int = 0


def encode_bucket(b: Bucket) -> bytes:
    """RTM_NEWNEXTHOPBUCKET payload as the kernel dumps it (for tests and fakes)."""
    inner = (nla_u16(NHA_RES_BUCKET_INDEX, b.index) + nla_u64(NHA_RES_BUCKET_IDLE_TIME, b.idle_time)
             + nla_u32(NHA_RES_BUCKET_NH_ID, b.nh_id))
    return (_NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nla_u32(NHA_ID, b.group_id)
            + nla(NHA_RES_BUCKET, inner, nested=True))


def decode_bucket(payload: bytes) -> Bucket:
    attrs = parse_nlas(payload[_NHMSG.size:])
    inner = parse_nlas(attrs.get(NHA_RES_BUCKET, b""))
    return Bucket(
        group_id=_u32(attrs[NHA_ID]) if NHA_ID in attrs else 0,
        index=_u16(inner[NHA_RES_BUCKET_INDEX]) if NHA_RES_BUCKET_INDEX in inner else 0,
        nh_id=_u32(inner[NHA_RES_BUCKET_NH_ID]) if NHA_RES_BUCKET_NH_ID in inner else 0,
        idle_time=_u64(inner[NHA_RES_BUCKET_IDLE_TIME]) if NHA_RES_BUCKET_IDLE_TIME in inner else 0,
    )


@dataclass(frozen=True, slots=True)
class Route:
    """An IPv4 route (or a route lookup result). `nh_id` set means it points at a nexthop object."""

    dst: IPAddress | None
    dst_len: int = 32
    table: int = RT_TABLE_MAIN
    protocol: int = 0
    scope: int = RT_SCOPE_UNIVERSE
    type: int = RTN_UNICAST
    nh_id: int | None = None
    oif: int | None = None
    gateway: IPAddress | None = None
    priority: int | None = None
    family: int = socket.AF_INET
    flags: int = 0


def encode_route(r: Route) -> bytes:
    # rtm_table is 8 bits: larger tables go in RTA_TABLE with RT_TABLE_COMPAT in the header.
    table8 = r.table if r.table < 256 else RT_TABLE_COMPAT
    out = bytearray(_RTMSG.pack(r.family, r.dst_len, 0, 0, table8, r.protocol, r.scope, r.type, r.flags))
    if r.dst is not None:
        out += nla_addr(RTA_DST, r.dst)
    if r.table != RT_TABLE_UNSPEC:
        out += nla_u32(RTA_TABLE, r.table)
    if r.nh_id is not None:
        out += nla_u32(RTA_NH_ID, r.nh_id)
    if r.oif is not None:
        out += nla_u32(RTA_OIF, r.oif)
    if r.gateway is not None:
        out += nla_addr(RTA_GATEWAY, r.gateway)
    if r.priority is not None:
        out += nla_u32(RTA_PRIORITY, r.priority)
    return bytes(out)


def decode_route(payload: bytes) -> Route:
    family, dst_len, _, _, table8, protocol, scope, type_, flags = _RTMSG.unpack_from(payload)
    attrs = parse_nlas(payload[_RTMSG.size:])
    return Route(
        dst=_addr(attrs[RTA_DST]) if RTA_DST in attrs else None,
        dst_len=dst_len,
        table=_u32(attrs[RTA_TABLE]) if RTA_TABLE in attrs else table8,
        protocol=protocol,
        scope=scope,
        type=type_,
        nh_id=_u32(attrs[RTA_NH_ID]) if RTA_NH_ID in attrs else None,
        oif=_u32(attrs[RTA_OIF]) if RTA_OIF in attrs else None,
        gateway=_addr(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None,
        priority=_u32(attrs[RTA_PRIORITY]) if RTA_PRIORITY in attrs else None,
        family=family,
        flags=flags,
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """An IPv4 policy routing rule: packets with `fwmark` (under `fwmask`) look up `table`."""

    priority: int
    table: int
    fwmark: int | None = None
    fwmask: int = 0xFFFFFFFF
    protocol: int = 0


def encode_rule(r: Rule) -> bytes:
    table8 = r.table if r.table < 256 else RT_TABLE_UNSPEC
    out = bytearray(_FIB_RULE_HDR.pack(socket.AF_INET, 0, 0, 0, table8, 0, 0, FR_ACT_TO_TBL, 0))
    out += nla_u32(FRA_PRIORITY, r.priority) + nla_u32(FRA_TABLE, r.table)
    if r.fwmark is not None:
        out += nla_u32(FRA_FWMARK, r.fwmark) + nla_u32(FRA_FWMASK, r.fwmask)
    if r.protocol:
        out += nla(FRA_PROTOCOL, bytes([r.protocol]))
    return bytes(out)


def decode_rule(payload: bytes) -> Rule:
    _, _, _, _, table8, _, _, _, _ = _FIB_RULE_HDR.unpack_from(payload)
    attrs = parse_nlas(payload[_FIB_RULE_HDR.size:])
    return Rule(
        priority=_u32(attrs[FRA_PRIORITY]) if FRA_PRIORITY in attrs else 0,
        table=_u32(attrs[FRA_TABLE]) if FRA_TABLE in attrs else table8,
        fwmark=_u32(attrs[FRA_FWMARK]) if FRA_FWMARK in attrs else None,
        fwmask=_u32(attrs[FRA_FWMASK]) if FRA_FWMASK in attrs else 0xFFFFFFFF,
        protocol=attrs[FRA_PROTOCOL][0] if FRA_PROTOCOL in attrs else 0,
    )


# --- requests ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Request:
    """One message to send, with `what` naming the operation and object for error messages."""

    type: int
    flags: int
    payload: bytes
    what: str

    def named(self, what: str) -> Request:
        return replace(self, what=what)


_CHANGE = NLM_F_REQUEST | NLM_F_ACK


def add_nexthop(nh: Nexthop, *, replace_existing: bool = False) -> Request:
    """RTM_NEWNEXTHOP: create (failing with EEXIST if the id is taken) or replace an existing one.

    Replacing never sends the bucket count: the kernel refuses any change of it on replace.
    """
    flags = _CHANGE | NLM_F_CREATE | (NLM_F_REPLACE if replace_existing else NLM_F_EXCL)
    verb = "replace" if replace_existing else "add"
    what = f"{verb} group {nh.id}" if nh.is_group else f"{verb} nexthop {nh.id} via {nh.gateway}"
    return Request(RTM_NEWNEXTHOP, flags, encode_nexthop(nh, with_buckets=not replace_existing), what)


def del_nexthop(nh_id: int) -> Request:
    payload = _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nla_u32(NHA_ID, nh_id)
    return Request(RTM_DELNEXTHOP, _CHANGE, payload, f"delete nexthop {nh_id}")


def get_nexthop(nh_id: int) -> Request:
    payload = _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nla_u32(NHA_ID, nh_id)
    return Request(RTM_GETNEXTHOP, _CHANGE, payload, f"get nexthop {nh_id}")


def dump_nexthops() -> Request:
    # Strict checking wants every nhmsg field zero in a dump request; the kernel cannot filter by protocol.
    return Request(RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP, _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0),
                   "dump nexthops")


def dump_buckets(group_id: int) -> Request:
    payload = _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nla_u32(NHA_ID, group_id)
    return Request(RTM_GETNEXTHOPBUCKET, NLM_F_REQUEST | NLM_F_DUMP, payload,
                   f"dump buckets of group {group_id}")


def add_route(route: Route, *, replace_existing: bool = False) -> Request:
    flags = _CHANGE | NLM_F_CREATE | (NLM_F_REPLACE if replace_existing else NLM_F_EXCL)
    verb = "replace" if replace_existing else "add"
    return Request(RTM_NEWROUTE, flags, encode_route(route),
                   f"{verb} route {route.dst}/{route.dst_len} table {route.table}")


def del_route(route: Route) -> Request:
    """RTM_DELROUTE matching dst, table and protocol (a route of another protocol is never matched)."""
    r = replace(route, scope=RT_SCOPE_NOWHERE, type=0, nh_id=None, oif=None, gateway=None)
    return Request(RTM_DELROUTE, _CHANGE, encode_route(r),
                   f"delete route {route.dst}/{route.dst_len} table {route.table}")


def dump_routes(*, table: int = RT_TABLE_MAIN, protocol: int = 0) -> Request:
    """IPv4 route dump filtered by the kernel (needs NETLINK_GET_STRICT_CHK) on table and protocol."""
    table8 = table if table < 256 else RT_TABLE_COMPAT
    payload = _RTMSG.pack(socket.AF_INET, 0, 0, 0, table8, protocol, 0, 0, 0) + nla_u32(RTA_TABLE, table)
    return Request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, payload,
                   f"dump routes of table {table} protocol {protocol}")


def add_rule(rule: Rule) -> Request:
    """RTM_NEWRULE, failing with EEXIST if the same rule exists."""
    return Request(RTM_NEWRULE, _CHANGE | NLM_F_CREATE | NLM_F_EXCL, encode_rule(rule),
                   f"add rule pref {rule.priority} fwmark {rule.fwmark:#x} lookup {rule.table}"
                   if rule.fwmark is not None else f"add rule pref {rule.priority} lookup {rule.table}")


def del_rule(rule: Rule) -> Request:
    return Request(RTM_DELRULE, _CHANGE, encode_rule(rule),
                   f"delete rule pref {rule.priority} lookup {rule.table}")


def dump_rules() -> Request:
    return Request(RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP,
                   _FIB_RULE_HDR.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), "dump rules")


def lookup_route(dst: IPAddress) -> Request:
    """RTM_GETROUTE for one address: the kernel answers with the route a packet to `dst` would take."""
    r = Route(dst=dst, dst_len=dst.max_prefixlen, table=RT_TABLE_UNSPEC, type=0,
              family=socket.AF_INET if dst.version == 4 else socket.AF_INET6)
    return Request(RTM_GETROUTE, _CHANGE, encode_route(r), f"look up route to {dst}")


# --- the client ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reply:
    """The kernel's answer to one request of a batch: its messages and its ACK (errno 0 = success)."""

    request: Request
    error: int = 0
    ext_msg: str | None = None
    messages: tuple[NlMsg, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error == 0

    def describe(self) -> str:
        text = f"{self.request.what}: {os.strerror(self.error)}"
        return f"{text} ({self.ext_msg})" if self.ext_msg else text


class NetlinkError(RouterError):
    """The kernel refused one request; `errno` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.describe())
        self.errno = reply.error
        self.reply = reply


class BatchError(RouterError):
    """Some requests of a batch failed; the others were applied (the kernel does not stop at an error)."""

    def __init__(self, failures: Sequence[Reply], total: int) -> None:
        self.failures = tuple(failures)
        self.total = total
        details = "; ".join(f.describe() for f in self.failures)
        if len(self.failures) == 1:
            super().__init__(details)
        else:
            super().__init__(f"{len(self.failures)} of {total} operations failed: {details}")


@dataclass
class NetlinkClient:
    """A NETLINK_ROUTE socket in namespace `netns` (None: the caller's), opened on first use.

    Requests are sent in as few `send` calls as the socket buffers allow, each with its own sequence
    number, and every error is matched back to its request (see `batch`). `opener` replaces the real
    socket (tests pass a fake kernel).
    """

    netns: str | None = None
    timeout_s: float = 5.0
    buffer_bytes: int = 4 << 20
    opener: Callable[[], socket.socket] | None = None
    _sock: socket.socket | None = field(default=None, init=False, repr=False)
    _seq: int = field(default=0, init=False, repr=False)
    _chunk_bytes: int = field(default=0, init=False, repr=False)
    _chunk_msgs: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # -- socket --

    def _socket(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            if self.opener is not None:
                sock = self.opener()
            else:
                sock = netns.socket_in(self.netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except (OSError, ActuatorError) as exc:
            raise RouterError(f"open netlink socket in namespace {self.netns or '(current)'}: {exc}") from exc
        try:
            sock.bind((0, 0))
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                sock.setsockopt(SOL_NETLINK, opt, 1)
            # A batch is processed inside our send() and every ACK queued before we read one: the
            # receive buffer must hold them all or the kernel drops ACKs (ENOBUFS). Root may exceed
            # rmem_max with the *FORCE options; otherwise we get what the sysctl allows and send
            # smaller chunks.
            for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, self.buffer_bytes)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, self.buffer_bytes)
            sock.settimeout(self.timeout_s)
        except OSError as exc:
            sock.close()
            raise RouterError(f"configure netlink socket: {exc}") from exc
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        # An ACK costs ~1 KiB of receive buffer (skb truesize), whatever its 36 bytes of data.
        self._chunk_msgs = max(1, rcvbuf // 2048)
        self._chunk_bytes = max(4096, sndbuf // 2)
        self._sock = sock
        return sock

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def _recv(self, sock: socket.socket, what: str) -> list[NlMsg]:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError as exc:
            raise RouterError(f"{what}: no answer from the kernel after {self.timeout_s:g}s") from exc
        except OSError as exc:
            if exc.errno == errno_mod.ENOBUFS:
                raise RouterError(f"{what}: netlink receive buffer overflowed, answers were lost") from exc
            raise RouterError(f"{what}: netlink receive: {exc}") from exc
        try:
            return decode_msgs(data)
        except ValueError as exc:
            raise RouterError(f"{what}: malformed netlink answer: {exc}") from exc

    # -- requests with ACKs --

    def batch(self, requests: Sequence[Request], *, ack_each: bool = False) -> list[Reply]:
        """Send every request and return one Reply per request, in order.

        The kernel answers a failed request with an error message whether or not it asked for an
        ACK, and handles the messages of one send() in order. So by default only the last message
        of each send() carries NLM_F_ACK: its ACK is a barrier after which every earlier error has
        arrived, and each error is still matched to its request by sequence number. This matters:
        each ACK is its own datagram, and reading 2,000 of them costs more than the kernel's work
        on the 2,000 changes. `ack_each=True` asks for one ACK per request (same result, slower).

        Per-request failures are in the replies (see `check`); a socket failure raises RouterError.
        """
        if not requests:
            return []
        with self._lock:
            sock = self._socket()
            replies: list[Reply] = []
            start = 0
            while start < len(requests):
                chunk: list[Request] = []
                size = 0
                for req in requests[start:]:
                    wire_len = _align(len(req.payload) + _NLMSGHDR.size)
                    if chunk and (len(chunk) >= self._chunk_msgs or size + wire_len > self._chunk_bytes):
                        break
                    chunk.append(req)
                    size += wire_len
                replies += self._exchange(sock, chunk, ack_each)
                start += len(chunk)
            return replies

    def _exchange(self, sock: socket.socket, chunk: Sequence[Request], ack_each: bool) -> list[Reply]:
        by_seq: dict[int, int] = {}
        wire = bytearray()
        last = len(chunk) - 1
        for i, req in enumerate(chunk):
            seq = self._next_seq()
            by_seq[seq] = i
            ack = NLM_F_ACK if ack_each or i == last else 0
            wire += encode_msg(NlMsg(req.type, (req.flags & ~NLM_F_ACK) | ack, seq, req.payload))
        what = chunk[0].what if len(chunk) == 1 else f"batch of {len(chunk)} ({chunk[0].what}, ...)"
        try:
            sock.sendto(bytes(wire), (0, 0))
        except OSError as exc:
            raise RouterError(f"{what}: netlink send: {exc}") from exc
        found: dict[int, list[NlMsg]] = {i: [] for i in range(len(chunk))}
        acks: dict[int, tuple[int, str | None]] = {}
        while last not in acks or (ack_each and len(acks) < len(chunk)):
            for msg in self._recv(sock, what):
                idx = by_seq.get(msg.seq)
                if idx is None:        # a late answer to an earlier, abandoned exchange
                    continue
                if msg.type == NLMSG_ERROR:
                    acks[idx] = decode_error(msg)
                elif msg.type != NLMSG_NOOP:
                    found[idx].append(msg)
        # Without its own ACK, a request that sent no error before the barrier succeeded.
        return [Reply(req, *acks.get(i, (0, None)), tuple(found[i])) for i, req in enumerate(chunk)]

    def check(self, requests: Sequence[Request], *, ack_each: bool = False) -> list[Reply]:
        """`batch`, raising BatchError that lists every failed request with its cause."""
        replies = self.batch(requests, ack_each=ack_each)
        failures = [r for r in replies if not r.ok]
        if failures:
            raise BatchError(failures, len(replies))
        return replies

    # -- dumps --

    def dump(self, request: Request, *, retries: int = 3) -> list[NlMsg]:
        """All messages of one dump. A dump interrupted by a concurrent change is re-read."""
        with self._lock:
            sock = self._socket()
            for _ in range(retries):
                msgs, interrupted = self._dump_once(sock, request)
                if not interrupted:
                    return msgs
            raise RouterError(f"{request.what}: interrupted by concurrent changes {retries} times")

    def _dump_once(self, sock: socket.socket, request: Request) -> tuple[list[NlMsg], bool]:
        seq = self._next_seq()
        try:
            sock.sendto(encode_msg(NlMsg(request.type, request.flags, seq, request.payload)), (0, 0))
        except OSError as exc:
            raise RouterError(f"{request.what}: netlink send: {exc}") from exc
        out: list[NlMsg] = []
        interrupted = False
        while True:
            for msg in self._recv(sock, request.what):
                if msg.seq != seq:
                    continue
                interrupted |= bool(msg.flags & NLM_F_DUMP_INTR)
                if msg.type in (NLMSG_DONE, NLMSG_ERROR):
                    err, text = decode_error(msg)
                    if err:
                        raise NetlinkError(Reply(request, err, text))
                    return out, interrupted
                if msg.type != NLMSG_NOOP:
                    out.append(msg)

    # -- typed helpers --

    def nexthops(self) -> list[Nexthop]:
        return [decode_nexthop(m.payload) for m in self.dump(dump_nexthops()) if m.type == RTM_NEWNEXTHOP]

    def nexthop(self, nh_id: int) -> Nexthop | None:
        """One nexthop by id, None if it does not exist."""
        (reply,) = self.batch([get_nexthop(nh_id)])
        if reply.error == errno_mod.ENOENT:
            return None
        if not reply.ok:
            raise NetlinkError(reply)
        return next((decode_nexthop(m.payload) for m in reply.messages if m.type == RTM_NEWNEXTHOP), None)

    def buckets(self, group_id: int) -> list[Bucket]:
        return [decode_bucket(m.payload) for m in self.dump(dump_buckets(group_id))
                if m.type == RTM_NEWNEXTHOPBUCKET]

    def routes(self, *, table: int = RT_TABLE_MAIN, protocol: int = 0) -> list[Route]:
        try:
            msgs = self.dump(dump_routes(table=table, protocol=protocol))
        except NetlinkError as exc:
            # A table that was never created answers ENOENT ("FIB table does not exist"): it is empty.
            if exc.errno != errno_mod.ENOENT:
                raise
            return []
        return [decode_route(m.payload) for m in msgs if m.type == RTM_NEWROUTE]

    def rules(self) -> list[Rule]:
        return [decode_rule(m.payload) for m in self.dump(dump_rules()) if m.type == RTM_NEWRULE]

    def lookup(self, destinations: Sequence[IPAddress]) -> list[Route | Reply]:
        """The route to each destination (one batch); a Reply in place of a Route carries the error."""
        replies = self.batch([lookup_route(d) for d in destinations])
        out: list[Route | Reply] = []
        for reply in replies:
            routes = [decode_route(m.payload) for m in reply.messages if m.type == RTM_NEWROUTE]
            out.append(routes[0] if reply.ok and routes else reply)
        return out
