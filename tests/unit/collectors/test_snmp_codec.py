"""The snmp collector's BER codec, checked against pyasn1/pysnmp (the reference decoder) on real snmpd
answers captured in tests/fixtures/snmp/captured.json, plus malformed and random input."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.ber import encoder as ber_encoder
from pyasn1.type import univ
from pysnmp.proto import api

from collectors.snmp.ber import (
    COUNTER32,
    COUNTER64,
    END_OF_MIB_VIEW,
    GET,
    GETBULK,
    INTEGER,
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    OCTET_STRING,
    OPAQUE,
    REQUEST_ID_MAX,
    REQUEST_ID_MIN,
    RESPONSE,
    TIMETICKS,
    BerError,
    decode_arcs,
    decode_oid,
    encode_int,
    encode_length,
    encode_oid,
    opaque_float,
    parse_v2c,
    pdu,
    peek_message_id,
    request_template,
    tlv,
    v2c_message,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "snmp" / "captured.json"
CAPTURED: dict[str, Any] = json.loads(FIXTURES.read_text())
V2C = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]


def v2c_responses() -> list[Any]:
    keys = ["v2c_startup_get", "v2c_get_types", "v2c_bulk_interfaces", "v2c_bulk_end_of_mib"]
    out = [pytest.param(bytes.fromhex(CAPTURED[k]["response"]), id=k) for k in keys]
    out += [pytest.param(bytes.fromhex(p["response"]), id=f"v2c_poll_{i}") for i, p in enumerate(CAPTURED["v2c_polls"])]
    return out


def reference_decode(data: bytes) -> tuple[int, bytes, int, list[tuple[tuple[int, ...], str, object]]]:
    """pysnmp's view of a v2c message: (version, community, request-id, [(oid, type name, value)])."""
    message, rest = ber_decoder.decode(data, asn1Spec=V2C.Message())
    assert rest == b""
    pdu_ = V2C.apiMessage.get_pdu(message)
    binds = []
    for oid, value in V2C.apiPDU.get_varbinds(pdu_):
        name = value.__class__.__name__
        if name in ("NoSuchObject", "NoSuchInstance", "EndOfMibView", "Null"):
            py: object = None
        elif name in ("OctetString", "IpAddress", "Opaque"):
            py = value.asOctets()
        else:
            py = int(value)
        binds.append((tuple(oid), name, py))
    return (int(V2C.apiMessage.get_version(message)), V2C.apiMessage.get_community(message).asOctets(),
            int(V2C.apiPDU.get_request_id(pdu_)), binds)


TYPE_NAMES = {INTEGER: "Integer", OCTET_STRING: "OctetString", COUNTER32: "Counter32", COUNTER64: "Counter64",
              TIMETICKS: "TimeTicks", OPAQUE: "Opaque", 0x42: "Gauge32", NO_SUCH_OBJECT: "NoSuchObject",
              NO_SUCH_INSTANCE: "NoSuchInstance", END_OF_MIB_VIEW: "EndOfMibView", 0x05: "Null"}


@pytest.mark.parametrize("data", v2c_responses())
def test_captured_answers_decode_as_pysnmp_decodes_them(data: bytes) -> None:
    version, community, ours = parse_v2c(data)
    ref_version, ref_community, ref_rid, ref_binds = reference_decode(data)
    assert (version, community, ours.request_id) == (ref_version, ref_community, ref_rid)
    assert ours.tag == RESPONSE and ours.error_status == 0
    assert [(decode_oid(o), TYPE_NAMES[t], v) for o, t, v in ours.varbinds] == ref_binds


def test_captured_answers_hold_what_the_collector_relies_on() -> None:
    _, _, startup = parse_v2c(bytes.fromhex(CAPTURED["v2c_startup_get"]["response"]))
    tags = {decode_oid(o): (t, v) for o, t, v in startup.varbinds}
    # Just after start: CPU ticks all 0, ssCpuIdle and hrProcessorLoad "no data yet".
    assert {v for (t, v) in list(tags.values())[1:9]} == {0}
    assert tags[(1, 3, 6, 1, 4, 1, 2021, 11, 11, 0)][0] == NO_SUCH_INSTANCE
    assert tags[(1, 3, 6, 1, 2, 1, 25, 3, 3, 1, 2, 196608)][0] == NO_SUCH_INSTANCE
    assert tags[(1, 3, 6, 1, 4, 1, 2021, 10, 1, 3, 1)][0] == OCTET_STRING          # laLoad.1 is a string
    _, _, types = parse_v2c(bytes.fromhex(CAPTURED["v2c_get_types"]["response"]))
    [(_, opaque_tag, opaque), (_, c64_tag, _), (_, missing_tag, _), _] = types.varbinds
    assert opaque_tag == OPAQUE and isinstance(opaque, bytes)
    assert opaque_float(opaque) == pytest.approx(struct.unpack(">f", opaque[3:])[0])
    assert 0 <= (opaque_float(opaque) or -1) < 100
    assert (c64_tag, missing_tag) == (COUNTER64, NO_SUCH_OBJECT)
    _, _, end = parse_v2c(bytes.fromhex(CAPTURED["v2c_bulk_end_of_mib"]["response"]))
    assert end.varbinds[-1][1] == END_OF_MIB_VIEW


@pytest.mark.parametrize("oid", [
    pytest.param("1.3.6.1.2.1.1.3.0", id="sysUpTime.0"),
    pytest.param("1.3.6.1.4.1.2021.11.50.0", id="enterprise arc above 127"),
    pytest.param("1.3.6.1.2.1.25.3.3.1.2.196608", id="three-octet arc"),
    pytest.param("1.3.6.1.4.1.4294967295.18446744073709551615", id="32- and 64-bit arcs"),
    pytest.param("0.39", id="first arc 0"),
    pytest.param("2.999.3", id="first arc 2 with a large second arc"),
])
def test_oid_encoding_matches_pyasn1(oid: str) -> None:
    arcs = tuple(int(a) for a in oid.split("."))
    reference = ber_encoder.encode(univ.ObjectIdentifier(arcs))
    ours = encode_oid(oid)
    assert tlv(0x06, ours) == reference
    assert decode_oid(ours) == arcs
    assert encode_oid("." + oid) == ours
    assert encode_oid(arcs) == ours


@pytest.mark.parametrize("oid", ["", "1", "1.3.x", "3.1", "1.40", "1.-3", "1..3"])
def test_bad_oids_are_refused(oid: str) -> None:
    with pytest.raises(BerError):
        encode_oid(oid)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, -1, -128, -129, 2**23, 2**31 - 1, -(2**31), 2**63])
def test_integer_encoding_is_minimal_and_pyasn1_reads_it(value: int) -> None:
    ours = encode_int(value)
    decoded, rest = ber_decoder.decode(tlv(INTEGER, ours), asn1Spec=univ.Integer())
    assert (int(decoded), rest) == (value, b"")
    # X.690 8.3.2: no redundant leading octet (pyasn1 itself pads some negatives, e.g. -128 as ff80).
    assert len(ours) == 1 or not ((ours[0] == 0 and ours[1] < 0x80) or (ours[0] == 0xFF and ours[1] >= 0x80))
    if value >= 0:
        assert tlv(INTEGER, ours) == ber_encoder.encode(univ.Integer(value))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536])
def test_length_encoding_is_minimal_definite(n: int) -> None:
    encoded = encode_length(n)
    assert ber_encoder.encode(univ.OctetString(b"x" * n)) == b"\x04" + encoded + b"x" * n


def test_request_ids_are_always_four_octets() -> None:
    for rid in (REQUEST_ID_MIN, REQUEST_ID_MAX, 0x1234567):
        assert len(encode_int(rid)) == 4
    assert len(encode_int(REQUEST_ID_MIN - 1)) == 3


@pytest.mark.parametrize("tag", [GET, GETBULK])
def test_template_renders_exactly_the_direct_encoding(tag: int) -> None:
    oids = [encode_oid("1.3.6.1.2.1.1.3.0"), encode_oid("1.3.6.1.4.1.2021.10.1.3.1")]
    template = request_template(pdu(tag, REQUEST_ID_MIN, oids, error_index=7),
                                lambda p: v2c_message(b"community", p))
    for rid in (REQUEST_ID_MIN, 0x2345_6789, REQUEST_ID_MAX):
        assert template.render(rid) == v2c_message(b"community", pdu(tag, rid, oids, error_index=7))
    assert "community" not in repr(template)
    # The template captured from the real agent run still renders the same bytes.
    captured = CAPTURED["v2c_template"]
    again = request_template(pdu(GET, REQUEST_ID_MIN, [oids[0]]), lambda p: v2c_message(b"fixture-community", p))
    assert (again.prefix.hex(), again.suffix.hex()) == (captured["prefix"], captured["suffix"])


def test_our_requests_decode_as_pysnmp_expects() -> None:
    oids = [encode_oid("1.3.6.1.2.1.1.3.0"), encode_oid("1.3.6.1.4.1.2021.4.5.0")]
    message = v2c_message(b"public", pdu(GETBULK, 0x0102_0304, oids, error_status=1, error_index=25))
    decoded, rest = ber_decoder.decode(message, asn1Spec=V2C.Message())
    assert rest == b""
    bulk = V2C.apiMessage.get_pdu(decoded)
    assert bulk.__class__.__name__ == "GetBulkRequestPDU"
    assert int(V2C.apiBulkPDU.get_request_id(bulk)) == 0x0102_0304
    assert int(V2C.apiBulkPDU.get_non_repeaters(bulk)) == 1
    assert int(V2C.apiBulkPDU.get_max_repetitions(bulk)) == 25
    assert [tuple(o) for o, _ in V2C.apiBulkPDU.get_varbinds(bulk)] == [decode_oid(o) for o in oids]


def test_peek_message_id() -> None:
    assert peek_message_id(bytes.fromhex(CAPTURED["v2c_get_types"]["response"])) == \
        CAPTURED["v2c_get_types"]["request_id"]
    assert peek_message_id(bytes.fromhex(CAPTURED["v3_get"]["response"])) == CAPTURED["v3_get"]["msg_id"]
    assert peek_message_id(b"") is None
    assert peek_message_id(b"\x30\x03\x02\x01") is None
    assert peek_message_id(b"GET / HTTP/1.1\r\n") is None


def test_decode_arcs_of_a_table_index() -> None:
    assert decode_arcs(encode_oid("1.3.4.196608.7")[1:]) == (4, 196608, 7)
    assert decode_arcs(b"") == ()
    with pytest.raises(BerError):
        decode_arcs(b"\x81")


GOOD = bytes.fromhex(CAPTURED["v2c_get_types"]["response"])


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(GOOD[:-1], id="truncated by one octet"),
    pytest.param(GOOD[:10], id="truncated in the header"),
    pytest.param(GOOD + b"\x00", id="trailing octet"),
    pytest.param(b"\x31" + GOOD[1:], id="SET instead of SEQUENCE"),
    pytest.param(b"\x30\x80" + GOOD[2:], id="indefinite length"),
    pytest.param(b"\x30\x85\x00\x00\x00\x00\x01\x00", id="five-octet length"),
    pytest.param(v2c_message(b"c", tlv(0x30, b"")), id="not a PDU"),
    pytest.param(v2c_message(b"c", tlv(0xA2, tlv(INTEGER, b"\x01") + tlv(INTEGER, b"") + tlv(INTEGER, b"\x00")
                                         + tlv(0x30, b""))), id="empty INTEGER"),
    pytest.param(v2c_message(b"c", tlv(0xA2, tlv(INTEGER, b"\x01") * 3 + tlv(0x30, tlv(0x30, tlv(0x04, b"x")
                                                                                          + b"\x05\x00")))),
                 id="varbind name is not an OID"),
    pytest.param(v2c_message(b"c", tlv(0xA2, tlv(INTEGER, b"\x01") * 3 + tlv(0x30, tlv(0x30, tlv(0x06, b"\x2b")
                                                                                          + b"\x99\x00")))),
                 id="unknown value tag"),
])
def test_malformed_answers_raise_ber_error(data: bytes) -> None:
    with pytest.raises(BerError):
        parse_v2c(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_ber_error(data: bytes) -> None:
    with contextlib.suppress(BerError):
        parse_v2c(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(min_value=0, max_value=255))
def test_corrupted_real_answers_only_ever_raise_ber_error(position: int, byte: int) -> None:
    data = bytearray(GOOD)
    data[position] = byte
    with contextlib.suppress(BerError):
        parse_v2c(bytes(data))
