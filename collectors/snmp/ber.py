"""BER encoding and decoding of the SNMP messages the `snmp` collector exchanges (RFC 3416 PDUs in
v2c and v3 messages), hand-written because pyasn1 spends ~70 % of a stock pysnmp GET.

It covers exactly what a read-only manager needs: encoding GET/GETNEXT/GETBULK requests with NULL
values, and decoding Response and Report PDUs into `(oid, tag, value)` triples. Object identifiers
stay in their encoded form (`bytes`) on the hot path: a GET answer is matched against the request by
comparing bytes, and only walks decode them. Requests are pre-encoded once into a `Template` whose
only variable part is the 4-byte request-id. Malformed input raises `BerError`, never anything else.
It does no I/O, keeps no state and knows no MIB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "COUNTER32",
    "COUNTER64",
    "END_OF_MIB_VIEW",
    "EXCEPTION_NAMES",
    "GAUGE32",
    "GET",
    "GETBULK",
    "GETNEXT",
    "INTEGER",
    "IPADDRESS",
    "NO_SUCH_INSTANCE",
    "NO_SUCH_OBJECT",
    "NULL",
    "OBJECT_IDENTIFIER",
    "OCTET_STRING",
    "OPAQUE",
    "REPORT",
    "REQUEST_ID_MAX",
    "REQUEST_ID_MIN",
    "RESPONSE",
    "SEQUENCE",
    "TIMETICKS",
    "BerError",
    "Pdu",
    "Template",
    "VarBind",
    "decode_arcs",
    "decode_oid",
    "encode_int",
    "encode_length",
    "encode_oid",
    "header",
    "oid_text",
    "opaque_float",
    "parse_pdu",
    "parse_v2c",
    "pdu",
    "peek_message_id",
    "request_template",
    "tlv",
    "v2c_message",
]

# Universal and SNMP application tags (RFC 2578, RFC 3416).
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
SEQUENCE = 0x30
IPADDRESS = 0x40
COUNTER32 = 0x41
GAUGE32 = 0x42
TIMETICKS = 0x43
OPAQUE = 0x44
COUNTER64 = 0x46
# Per-varbind exceptions in v2c/v3 answers: "no data here", never a value.
NO_SUCH_OBJECT = 0x80
NO_SUCH_INSTANCE = 0x81
END_OF_MIB_VIEW = 0x82
EXCEPTION_NAMES = {NO_SUCH_OBJECT: "noSuchObject", NO_SUCH_INSTANCE: "noSuchInstance", END_OF_MIB_VIEW: "endOfMibView"}

# PDU tags.
GET = 0xA0
GETNEXT = 0xA1
RESPONSE = 0xA2
GETBULK = 0xA5
REPORT = 0xA8

# Request-ids (and v3 msgIDs) are drawn from this range so that every one encodes minimally in exactly
# four content octets: a request is then a constant template with a 4-byte hole.
REQUEST_ID_MIN = 0x0080_0000
REQUEST_ID_MAX = 0x7FFF_FFFF

_UNSIGNED = frozenset({COUNTER32, GAUGE32, TIMETICKS, COUNTER64})
_NULL_TLV = b"\x05\x00"
_FLOAT = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")


class BerError(ValueError):
    """The bytes are not the SNMP message we expect (truncated, wrong tag, bad length...)."""


# A decoded variable binding: (encoded OID content, value tag, value). Values: int for INTEGER and
# the unsigned application types, bytes for OCTET STRING / IpAddress / Opaque / OID (encoded
# content), None for NULL and for the three exceptions (the tag says which).
VarBind = tuple[bytes, int, object]


# ---- encoding ----------------------------------------------------------------------------------

def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    if n < 0x1000000:
        return bytes((0x83, n >> 16, (n >> 8) & 0xFF, n & 0xFF))
    raise BerError(f"length {n} too large")


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(content)) + content


def encode_int(value: int) -> bytes:
    """Content octets of a (signed) INTEGER in minimal two's complement."""
    length = (value + (value < 0)).bit_length() // 8 + 1
    return value.to_bytes(length, "big", signed=True)


def encode_oid(oid: str | Sequence[int]) -> bytes:
    """Content octets of an OBJECT IDENTIFIER given as "1.3.6.1..." (a leading dot is allowed) or arcs."""
    if isinstance(oid, str):
        text = oid[1:] if oid.startswith(".") else oid
        try:
            arcs = [int(part) for part in text.split(".")]
        except ValueError:
            raise BerError(f"not a numeric OID: {oid!r}") from None
    else:
        arcs = list(oid)
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or any(a < 0 for a in arcs):
        raise BerError(f"not a valid OID: {oid!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        if arc < 0x80:
            out.append(arc)
            continue
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def decode_oid(content: bytes) -> tuple[int, ...]:
    """Arcs of an encoded OID (content octets)."""
    if not content or content[-1] & 0x80:
        raise BerError("truncated OID")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    if first < 80:
        return (first // 40, first % 40, *arcs[1:])
    return (2, first - 80, *arcs[1:])


def decode_arcs(content: bytes) -> tuple[int, ...]:
    """Arcs of an encoded OID *suffix* (a table index after its column's prefix): no first-arc rule."""
    if content and content[-1] & 0x80:
        raise BerError("truncated OID suffix")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return tuple(arcs)


def oid_text(content: bytes) -> str:
    return ".".join(map(str, decode_oid(content)))


def pdu(tag: int, request_id: int, oids: Iterable[bytes], *, error_status: int = 0, error_index: int = 0) -> bytes:
    """A request PDU with NULL values; `oids` are encoded OID contents. For GETBULK pass
    non-repeaters as `error_status` and max-repetitions as `error_index` (RFC 3416 4.2.3)."""
    bindings = b"".join(tlv(SEQUENCE, tlv(OBJECT_IDENTIFIER, oid) + _NULL_TLV) for oid in oids)
    body = (tlv(INTEGER, encode_int(request_id)) + tlv(INTEGER, encode_int(error_status))
            + tlv(INTEGER, encode_int(error_index)) + tlv(SEQUENCE, bindings))
    return tlv(tag, body)


def v2c_message(community: bytes, pdu_bytes: bytes) -> bytes:
    return tlv(SEQUENCE, b"\x02\x01\x01" + tlv(OCTET_STRING, community) + pdu_bytes)


@dataclass(frozen=True, slots=True)
class Template:
    """Bytes with a 4-byte request-id hole: `render(rid)` is one concatenation. Built by encoding
    once with a placeholder id; the hole is found by position, so the payload may contain anything.
    Its repr never shows the bytes (a v2c template carries the community)."""

    prefix: bytes
    suffix: bytes

    def render(self, request_id: int) -> bytes:
        return self.prefix + request_id.to_bytes(4, "big") + self.suffix

    @property
    def size(self) -> int:
        return len(self.prefix) + 4 + len(self.suffix)

    def __repr__(self) -> str:
        return f"Template({self.size} bytes)"


def request_template(pdu_bytes: bytes, wrap: Callable[[bytes], bytes]) -> Template:
    """The message `wrap(pdu_bytes)` as a template whose hole is the PDU's request-id.

    `pdu_bytes` must be built with a 4-octet request-id (any id in REQUEST_ID_MIN..MAX) and `wrap`
    must put the PDU last in the message (true of v2c messages and v3 scopedPDUs), so the hole's
    position is found from the end: no byte search, no ambiguity.
    """
    _, start, _ = header(pdu_bytes, 0)
    if pdu_bytes[start:start + 2] != b"\x02\x04":
        raise BerError("request-id is not a 4-octet INTEGER")
    tail = len(pdu_bytes) - (start + 2)
    message = wrap(pdu_bytes)
    cut = len(message) - tail
    return Template(message[:cut], message[cut + 4:])


# ---- decoding ----------------------------------------------------------------------------------

def header(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at `i`. Definite lengths only (RFC 3417)."""
    tag = data[i]
    n = data[i + 1]
    if n < 0x80:
        start = i + 2
        end = start + n
    else:
        k = n & 0x7F
        if k == 0 or k > 4:
            raise BerError(f"unsupported length form 0x{n:02x} at {i}")
        start = i + 2 + k
        end = start + int.from_bytes(data[i + 2:start], "big")
    if end > len(data):
        raise BerError(f"length at {i} runs past the end ({end} > {len(data)})")
    return tag, start, end


def _expect(data: bytes, i: int, tag: int, what: str) -> tuple[int, int]:
    t, start, end = header(data, i)
    if t != tag:
        raise BerError(f"{what}: expected tag 0x{tag:02x}, got 0x{t:02x} at {i}")
    return start, end


def _int(data: bytes, i: int, what: str) -> tuple[int, int]:
    """(value, next index) of an INTEGER at `i`."""
    start, end = _expect(data, i, INTEGER, what)
    if start == end:
        raise BerError(f"{what}: empty INTEGER")
    return int.from_bytes(data[start:end], "big", signed=True), end


@dataclass(frozen=True, slots=True)
class Pdu:
    tag: int
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[VarBind]


def parse_pdu(data: bytes, i: int) -> tuple[Pdu, int]:
    """The PDU at `i` (any of the request/response/report tags) and the index after it."""
    tag, start, end = header(data, i)
    if tag & 0xE0 != 0xA0:
        raise BerError(f"expected a PDU, got tag 0x{tag:02x}")
    request_id, j = _int(data, start, "request-id")
    error_status, j = _int(data, j, "error-status")
    error_index, j = _int(data, j, "error-index")
    j, list_end = _expect(data, j, SEQUENCE, "varbind list")
    varbinds: list[VarBind] = []
    append = varbinds.append
    from_bytes = int.from_bytes
    while j < list_end:
        # SEQUENCE { name OBJECT IDENTIFIER, value }: short-form lengths are the common case.
        if data[j] != SEQUENCE:
            raise BerError(f"varbind: expected SEQUENCE at {j}")
        _, vb_start, vb_end = header(data, j)
        if data[vb_start] != OBJECT_IDENTIFIER:
            raise BerError(f"varbind name: expected OID at {vb_start}")
        _, o_start, o_end = header(data, vb_start)
        vtag, v_start, v_end = header(data, o_end)
        if v_end != vb_end:
            raise BerError(f"varbind at {j}: trailing bytes")
        value: object
        if vtag == INTEGER:
            value = from_bytes(data[v_start:v_end], "big", signed=True)
        elif vtag in _UNSIGNED:
            value = from_bytes(data[v_start:v_end], "big")
        elif vtag == NULL or vtag >= NO_SUCH_OBJECT:
            if vtag > END_OF_MIB_VIEW:
                raise BerError(f"varbind value: unknown tag 0x{vtag:02x}")
            value = None
        else:
            value = data[v_start:v_end]
        append((data[o_start:o_end], vtag, value))
        j = vb_end
    if list_end != end:
        raise BerError("PDU: trailing bytes after the varbind list")
    return Pdu(tag, request_id, error_status, error_index, varbinds), end


def parse_v2c(data: bytes) -> tuple[int, bytes, Pdu]:
    """(version, community, pdu) of a v1/v2c message."""
    try:
        start, end = _expect(data, 0, SEQUENCE, "message")
        if end != len(data):
            raise BerError("bytes after the message")
        version, j = _int(data, start, "version")
        c_start, c_end = _expect(data, j, OCTET_STRING, "community")
        parsed, j = parse_pdu(data, c_end)
    except IndexError:
        raise BerError("truncated message") from None
    if j != end:
        raise BerError("message: trailing bytes")
    return version, data[c_start:c_end], parsed


def peek_message_id(data: bytes) -> int | None:
    """The id a datagram answers, cheaply: the PDU request-id of a v1/v2c message, the msgID of a
    v3 one. None if the datagram is not shaped like SNMP."""
    try:
        start, _ = _expect(data, 0, SEQUENCE, "message")
        version, j = _int(data, start, "version")
        if version == 3:
            g_start, _ = _expect(data, j, SEQUENCE, "msgGlobalData")
            return _int(data, g_start, "msgID")[0]
        _, c_end = _expect(data, j, OCTET_STRING, "community")
        _, p_start, _ = header(data, c_end)
        return _int(data, p_start, "request-id")[0]
    except (BerError, IndexError):
        return None


def opaque_float(content: bytes) -> float | None:
    """net-snmp's Opaque-wrapped float/double (e.g. laLoadFloat), or None if it is something else."""
    if len(content) == 7 and content[:3] == b"\x9f\x78\x04":
        return float(_FLOAT.unpack(content[3:])[0])
    if len(content) == 11 and content[:3] == b"\x9f\x79\x08":
        return float(_DOUBLE.unpack(content[3:])[0])
    return None
