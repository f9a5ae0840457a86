"""The rtnetlink codec: encode/decode round trips, the exact bytes the kernel insists on, and the
matching of errors to the requests of a batch (against a fake kernel socket; no root needed)."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest

from actuators.errors import RouterError
from actuators.kernel import netlink as nl

A = IPv4Address


# --- attributes and messages ---------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "wire"), [
    pytest.param(b"", b"\x04\x00\x07\x00", id="empty flag attribute"),
    pytest.param(b"ab", b"\x06\x00\x07\x00ab\x00\x00", id="padded to 4 bytes"),
    pytest.param(b"abcd", b"\x08\x00\x07\x00abcd", id="already aligned"),
])
def test_nla_encoding(payload: bytes, wire: bytes) -> None:
    assert nl.nla(7, payload) == wire
    assert nl.parse_nlas(wire) == {7: payload}


def test_nested_flag_is_set_and_stripped_on_parse() -> None:
    raw = nl.nla(nl.NHA_RES_GROUP, nl.nla_u16(1, 128), nested=True)
    assert struct.unpack_from("=H", raw, 2)[0] == nl.NHA_RES_GROUP | nl.NLA_F_NESTED
    assert nl.parse_nlas(raw) == {nl.NHA_RES_GROUP: nl.nla_u16(1, 128)}


@pytest.mark.parametrize("data", [
    pytest.param(b"\x10\x00\x01\x00abc", id="attribute longer than the buffer"),
    pytest.param(b"\x02\x00\x01\x00", id="attribute shorter than its header"),
])
def test_bad_attributes_raise(data: bytes) -> None:
    with pytest.raises(ValueError):
        nl.parse_nlas(data)


def test_messages_round_trip_concatenated() -> None:
    msgs = [nl.NlMsg(nl.RTM_NEWNEXTHOP, nl.NLM_F_REQUEST, 1, b"x" * 5),
            nl.NlMsg(nl.RTM_DELNEXTHOP, nl.NLM_F_ACK, 2, b""),
            nl.NlMsg(nl.NLMSG_DONE, nl.NLM_F_MULTI, 3, b"\0\0\0\0", pid=77)]
    wire = b"".join(nl.encode_msg(m) for m in msgs)
    assert len(wire) % 4 == 0
    assert nl.decode_msgs(wire) == msgs


def test_truncated_message_raises() -> None:
    wire = nl.encode_msg(nl.NlMsg(nl.RTM_NEWROUTE, 0, 1, b"y" * 12))
    with pytest.raises(ValueError):
        nl.decode_msgs(wire[:-4])


# --- nexthops ------------------------------------------------------------------------------------

RES = nl.NEXTHOP_GRP_TYPE_RES


@pytest.mark.parametrize("nh", [
    pytest.param(nl.Nexthop(7, protocol=99, gateway=A("10.0.1.2"), oif=3), id="gateway via device"),
    pytest.param(nl.Nexthop(8, protocol=99, family=socket.AF_INET6, gateway=IPv6Address("fe80::1"), oif=3),
                 id="ipv6 gateway"),
    pytest.param(nl.Nexthop(9, blackhole=True), id="blackhole"),
    pytest.param(nl.Nexthop(10, family=socket.AF_UNSPEC, group=(nl.GroupMember(1), nl.GroupMember(2, 3))),
                 id="hash-threshold group"),
    pytest.param(nl.Nexthop(3323133962, protocol=99, family=socket.AF_UNSPEC,
                            group=(nl.GroupMember(1, 255), nl.GroupMember(2, 1)), group_type=RES,
                            buckets=128, idle_timer=3000, unbalanced_timer=0),
                 id="resilient group with timers"),
    pytest.param(nl.Nexthop(11, family=socket.AF_UNSPEC,
                            group=(nl.GroupMember(1, 65536), nl.GroupMember(2, 256)), group_type=RES,
                            buckets=64, idle_timer=0, unbalanced_timer=100),
                 id="16-bit weights"),
])
def test_nexthop_round_trip(nh: nl.Nexthop) -> None:
    assert nl.decode_nexthop(nl.encode_nexthop(nh)) == nh


@pytest.mark.parametrize(("weight", "packed"), [
    pytest.param(1, (0, 0), id="weight 1 is stored as 0"),
    pytest.param(255, (254, 0), id="255 fits the low byte"),
    pytest.param(256, (255, 0), id="256 is the largest 8-bit weight"),
    pytest.param(1000, (231, 3), id="larger weights spill into weight_high"),
    pytest.param(65536, (255, 255), id="upper bound"),
])
def test_group_member_weight_packing(weight: int, packed: tuple[int, int]) -> None:
    raw = nl.encode_group([nl.GroupMember(42, weight)])
    assert struct.unpack("=IBBH", raw) == (42, *packed, 0)
    assert nl.decode_group(raw) == (nl.GroupMember(42, weight),)


@pytest.mark.parametrize("weight", [pytest.param(0, id="zero"), pytest.param(65537, id="above 16 bits")])
def test_group_member_weight_out_of_range(weight: int) -> None:
    with pytest.raises(ValueError):
        nl.encode_group([nl.GroupMember(1, weight)])


def test_group_is_sent_with_unspec_family_and_replace_omits_buckets() -> None:
    nh = nl.Nexthop(5, protocol=99, group=(nl.GroupMember(1),), group_type=RES, buckets=128,
                    idle_timer=3000, unbalanced_timer=0)
    create = nl.add_nexthop(nh)
    assert create.payload[0] == socket.AF_UNSPEC
    assert create.flags & (nl.NLM_F_CREATE | nl.NLM_F_EXCL) == nl.NLM_F_CREATE | nl.NLM_F_EXCL
    assert nl.decode_nexthop(create.payload).buckets == 128

    replace = nl.add_nexthop(nh, replace_existing=True)
    assert replace.flags & nl.NLM_F_REPLACE and not replace.flags & nl.NLM_F_EXCL
    decoded = nl.decode_nexthop(replace.payload)
    assert decoded.buckets is None
    assert (decoded.idle_timer, decoded.unbalanced_timer) == (3000, 0)


def test_add_nexthop_names_the_object() -> None:
    req = nl.add_nexthop(nl.Nexthop(7, gateway=A("10.0.1.2"), oif=2))
    reply = nl.Reply(req, errno.EEXIST)
    assert reply.describe() == "add nexthop 7 via 10.0.1.2: File exists"


@pytest.mark.parametrize("bucket", [
    pytest.param(nl.Bucket(100, 0, 7, 0), id="fresh bucket"),
    pytest.param(nl.Bucket(3323133962, 127, 3323068674, 2**40), id="large ids and idle time"),
])
def test_bucket_round_trip(bucket: nl.Bucket) -> None:
    assert nl.decode_bucket(nl.encode_bucket(bucket)) == bucket


# --- routes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", [
    pytest.param(nl.Route(A("198.19.0.10"), 32, protocol=99, nh_id=3323133962), id="VIP to a group"),
    pytest.param(nl.Route(A("10.0.0.0"), 8, table=1000, protocol=4, oif=3, gateway=A("10.0.0.1"),
                          priority=20), id="table above 255 and gateway"),
    pytest.param(nl.Route(None, 0, oif=1), id="default route"),
])
def test_route_round_trip(route: nl.Route) -> None:
    assert nl.decode_route(nl.encode_route(route)) == route


def test_large_table_uses_compat_header_and_rta_table() -> None:
    raw = nl.encode_route(nl.Route(A("1.2.3.4"), table=1000))
    assert raw[4] == nl.RT_TABLE_COMPAT
    assert nl.parse_nlas(raw[12:])[nl.RTA_TABLE] == struct.pack("=I", 1000)


def test_route_delete_matches_protocol_any_scope_and_no_nexthop() -> None:
    req = nl.del_route(nl.Route(A("198.19.0.10"), protocol=99, nh_id=5))
    r = nl.decode_route(req.payload)
    assert (r.protocol, r.scope, r.type, r.nh_id) == (99, nl.RT_SCOPE_NOWHERE, 0, None)


def test_route_dump_header_is_strict_check_clean() -> None:
    req = nl.dump_routes(table=254, protocol=99)
    family, dst_len, src_len, tos, table, proto, scope, type_, flags = struct.unpack_from("=BBBBBBBBI",
                                                                                         req.payload)
    assert (family, dst_len, src_len, tos, table, proto, scope, type_, flags) == (
        socket.AF_INET, 0, 0, 0, 254, 99, 0, 0, 0)
    assert req.flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP


# --- errors and ACKs -----------------------------------------------------------------------------

REQ = nl.NlMsg(nl.RTM_NEWNEXTHOP, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 9, b"\0" * 8)


def _uncapped_error(err: int, text: str) -> nl.NlMsg:
    echoed = nl.encode_msg(REQ)
    payload = struct.pack("=i", -err) + echoed + nl.nla(nl.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
    return nl.NlMsg(nl.NLMSG_ERROR, nl.NLM_F_ACK_TLVS, 9, payload)


@pytest.mark.parametrize(("msg", "expected"), [
    pytest.param(nl.encode_error(0, REQ), (0, None), id="success ACK"),
    pytest.param(nl.encode_error(errno.EEXIST, REQ), (errno.EEXIST, None), id="error without text"),
    pytest.param(nl.encode_error(errno.EINVAL, REQ, "Unsupported attribute"),
                 (errno.EINVAL, "Unsupported attribute"), id="capped error with extended ACK"),
    pytest.param(_uncapped_error(errno.EINVAL, "Invalid device index"),
                 (errno.EINVAL, "Invalid device index"), id="whole request echoed before the text"),
    pytest.param(nl.NlMsg(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, struct.pack("=i", -errno.ENOENT)),
                 (errno.ENOENT, None), id="dump ending with an error"),
])
def test_decode_error(msg: nl.NlMsg, expected: tuple[int, str | None]) -> None:
    assert nl.decode_error(nl.decode_msgs(nl.encode_msg(msg))[0]) == expected


# --- batches against a fake kernel ---------------------------------------------------------------

Handler = Callable[[nl.NlMsg], tuple[list[nl.NlMsg], int, str | None]]


class FakeKernel:
    """Duck-types the netlink socket: answers each message with (replies, errno, text) from `handler`.

    Like the kernel, it sends the replies, then an error message if the request failed or asked for
    an ACK; answers go out in order, one datagram per message.
    """

    def __init__(self, handler: Handler, rcvbuf: int = 1 << 20) -> None:
        self.handler = handler
        self.rcvbuf = rcvbuf
        self.sends: list[list[int]] = []     # flags of each message, per send() call
        self.queue: list[bytes] = []

    def bind(self, addr: object) -> None: ...
    def setsockopt(self, *args: object) -> None: ...
    def settimeout(self, t: float) -> None: ...
    def close(self) -> None: ...

    def getsockopt(self, level: int, opt: int) -> int:
        return self.rcvbuf

    def sendto(self, data: bytes, addr: object) -> int:
        msgs = nl.decode_msgs(data)
        self.sends.append([m.flags for m in msgs])
        for m in msgs:
            replies, err, text = self.handler(m)
            self.queue += [nl.encode_msg(nl.NlMsg(r.type, r.flags, m.seq, r.payload)) for r in replies]
            if err or m.flags & nl.NLM_F_ACK:
                self.queue.append(nl.encode_msg(nl.encode_error(err, m, text)))
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise TimeoutError
        return self.queue.pop(0)


def _client(kernel: FakeKernel) -> nl.NetlinkClient:
    return nl.NetlinkClient(opener=lambda: kernel, timeout_s=0.1)  # type: ignore[arg-type, return-value]


def _nexthops(n: int) -> list[nl.Request]:
    return [nl.add_nexthop(nl.Nexthop(i, gateway=A(f"10.0.0.{i}"), oif=2)) for i in range(1, n + 1)]


def _fail_2_and_4(m: nl.NlMsg) -> tuple[list[nl.NlMsg], int, str | None]:
    nh = nl.decode_nexthop(m.payload)
    if nh.id == 2:
        return [], errno.EEXIST, None
    if nh.id == 4:
        return [], errno.EINVAL, "Invalid device index"
    return [], 0, None


@pytest.mark.parametrize("ack_each", [pytest.param(False, id="errors and one barrier ACK"),
                                      pytest.param(True, id="one ACK per request")])
def test_batch_maps_each_error_to_its_request(ack_each: bool) -> None:
    kernel = FakeKernel(_fail_2_and_4)
    replies = _client(kernel).batch(_nexthops(5), ack_each=ack_each)
    assert len(kernel.sends) == 1
    acked = [bool(f & nl.NLM_F_ACK) for f in kernel.sends[0]]
    assert acked == ([True] * 5 if ack_each else [False, False, False, False, True])
    assert [r.error for r in replies] == [0, errno.EEXIST, 0, errno.EINVAL, 0]
    assert replies[3].describe() == "add nexthop 4 via 10.0.0.4: Invalid argument (Invalid device index)"


def test_failure_of_the_barrier_itself_is_reported() -> None:
    replies = _client(FakeKernel(_fail_2_and_4)).batch(_nexthops(4))
    assert [r.error for r in replies] == [0, errno.EEXIST, 0, errno.EINVAL]


def test_check_raises_one_error_listing_every_failure() -> None:
    with pytest.raises(nl.BatchError) as info:
        _client(FakeKernel(_fail_2_and_4)).check(_nexthops(5))
    assert isinstance(info.value, RouterError)
    assert str(info.value) == ("2 of 5 operations failed: add nexthop 2 via 10.0.0.2: File exists; "
                               "add nexthop 4 via 10.0.0.4: Invalid argument (Invalid device index)")
    assert [f.request.what for f in info.value.failures] == ["add nexthop 2 via 10.0.0.2",
                                                             "add nexthop 4 via 10.0.0.4"]


def test_batch_is_split_to_fit_the_receive_buffer() -> None:
    kernel = FakeKernel(lambda m: ([], 0, None), rcvbuf=8192)   # room for 4 answers per send
    replies = _client(kernel).batch(_nexthops(10))
    assert [len(s) for s in kernel.sends] == [4, 4, 2]
    assert all(r.ok for r in replies)


def test_get_replies_are_attached_to_their_request() -> None:
    def handler(m: nl.NlMsg) -> tuple[list[nl.NlMsg], int, str | None]:
        dst = nl.decode_route(m.payload).dst
        if dst == A("8.8.8.8"):
            return [], errno.ENETUNREACH, None
        route = nl.Route(dst, oif=int(str(dst)[-1]))
        return [nl.NlMsg(nl.RTM_NEWROUTE, 0, 0, nl.encode_route(route))], 0, None

    found = _client(FakeKernel(handler)).lookup([A("10.0.0.1"), A("8.8.8.8"), A("10.0.0.3")])
    assert isinstance(found[0], nl.Route) and found[0].oif == 1
    assert isinstance(found[1], nl.Reply) and found[1].error == errno.ENETUNREACH
    assert isinstance(found[2], nl.Route) and found[2].oif == 3


def test_missing_ack_times_out_as_router_error() -> None:
    class Silent(FakeKernel):
        def sendto(self, data: bytes, addr: object) -> int:
            return len(data)

    with pytest.raises(RouterError, match="no answer from the kernel"):
        _client(Silent(lambda m: ([], 0, None))).batch(_nexthops(1))
