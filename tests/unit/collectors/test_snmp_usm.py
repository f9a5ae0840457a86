"""SNMPv3 USM of the snmp collector: protocol names, keys (RFC 3414 A.3 vectors), MACs and ciphers
checked against pysnmp's own services, our v3 framing decoded by pysnmp's ASN.1 models, and the real
snmpd v3 traffic captured in tests/fixtures/snmp/captured.json (responses and every report)."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.type.univ import OctetString
from pysnmp.proto.mpmod.rfc3412 import ScopedPDU, SNMPv3Message
from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters

from collectors.snmp.ber import GET, OCTET_STRING, REPORT, RESPONSE, decode_oid, encode_oid, pdu, tlv
from collectors.snmp.client import V3Security
from collectors.snmp.usm import (
    AUTH_PROTOCOLS,
    FLAG_AUTH,
    FLAG_PRIV,
    FLAG_REPORTABLE,
    PRIV_PROTOCOLS,
    USM_STATS,
    UsmUser,
    auth_protocol,
    decrypt,
    discovery_message,
    encode_v3,
    parse_scoped_pdu,
    parse_v3,
    priv_protocol,
    scoped_template,
    verify,
)

CAPTURED: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures" / "snmp" / "captured.json").read_text())
ENGINE_ID = bytes.fromhex(CAPTURED["engine_id"])
FIXTURE_USER = CAPTURED["user"]


def fixture_user() -> UsmUser:
    u = FIXTURE_USER
    return UsmUser(u["name"], auth_protocol(u["auth_protocol"]), u["auth_key"], priv_protocol(u["priv_protocol"]),
                   u["priv_key"])


@pytest.mark.parametrize(("name", "expected"), [
    pytest.param("sha-256", "SHA-256", id="case-insensitive"),
    pytest.param("SHA1", "SHA", id="SHA1 alias"),
    pytest.param(" md5 ", "MD5", id="spaces"),
    pytest.param("SHA512", "SHA-512", id="no dash"),
])
def test_auth_protocol_names(name: str, expected: str) -> None:
    assert auth_protocol(name).name == expected


@pytest.mark.parametrize(("name", "expected"), [
    pytest.param("AES", "AES-128", id="AES is AES-128"),
    pytest.param("aes-256-c", "AES-256-C", id="Reeder variant"),
    pytest.param("3des-ede", "3DES", id="3DES alias"),
    pytest.param("des", "DES", id="DES"),
])
def test_priv_protocol_names(name: str, expected: str) -> None:
    assert priv_protocol(name).name == expected


def test_unknown_protocols_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: MD5, SHA, SHA-224"):
        auth_protocol("SHA-3")
    with pytest.raises(ValueError, match="AES-256-C"):
        priv_protocol("blowfish")


# RFC 3414 A.3.1 / A.3.2: "maplesyrup" localised to engine 00..02.
RFC_ENGINE = bytes.fromhex("000000000000000000000002")


@pytest.mark.parametrize(("auth", "key", "digest"), [
    pytest.param("MD5", "526f5eed9fcce26f8964c2930787d82b", "md5", id="MD5 (A.3.1)"),
    pytest.param("SHA", "6695febc9288e36282235fc7151f128497b38f3f", "sha1", id="SHA-1 (A.3.2)"),
])
def test_rfc3414_key_localisation_vectors(auth: str, key: str, digest: str) -> None:
    keys = UsmUser("u", auth_protocol(auth), "maplesyrup").localize(RFC_ENGINE)
    message = b"any message at all"
    assert keys.mac(message) == hmac.new(bytes.fromhex(key), message, digest).digest()[:12]


@pytest.mark.parametrize("auth", list(AUTH_PROTOCOLS))
def test_our_mac_is_pysnmps(auth: str) -> None:
    protocol = AUTH_PROTOCOLS[auth]
    keys = UsmUser("u", protocol, "some-auth-passphrase").localize(ENGINE_ID)
    message, offset = encode_v3(msg_id=0x0100_0000, flags=FLAG_AUTH | FLAG_REPORTABLE, engine_id=ENGINE_ID, boots=3,
                                time=12345, user=b"u", mac_length=keys.mac_length, priv_params=b"",
                                msg_data=tlv(0x30, b"\x04\x00\x04\x00" + pdu(GET, 0x0100_0000, [])))
    assert message[offset:offset + keys.mac_length] == bytes(keys.mac_length)
    ours = message[:offset] + keys.mac(message) + message[offset + keys.mac_length:]
    service = protocol.service
    key = service.localize_key(service.hash_passphrase(b"some-auth-passphrase"), OctetString(ENGINE_ID))
    assert ours == service.authenticate_outgoing_message(key, message)
    assert verify(parse_v3(ours), keys)
    tampered = bytearray(ours)
    tampered[-1] ^= 1
    assert not verify(parse_v3(bytes(tampered)), keys)


@pytest.mark.parametrize("priv", list(PRIV_PROTOCOLS))
@pytest.mark.parametrize("auth", ["MD5", "SHA-256"])
def test_our_ciphertext_decrypts_with_pysnmp_keys_localised_independently(auth: str, priv: str) -> None:
    auth_p, priv_p = auth_protocol(auth), priv_protocol(priv)
    keys = UsmUser("u", auth_p, "some-auth-passphrase", priv_p, "some-priv-passphrase").localize(ENGINE_ID)
    plaintext = tlv(0x30, b"\x04\x00\x04\x00" + pdu(GET, 0x0200_0000, [encode_oid("1.3.6.1.2.1.1.3.0")]))
    ciphertext, salt = keys.encrypt(7, 4242, plaintext)
    service = priv_p.service
    key = service.localize_key(auth_p.oid, service.hash_passphrase(auth_p.oid, b"some-priv-passphrase"),
                               OctetString(ENGINE_ID))
    clear = service.decrypt_data(OctetString(bytes(key)), (7, 4242, OctetString(salt)), OctetString(ciphertext))
    assert bytes(clear)[:len(plaintext)] == plaintext
    assert keys.decrypt(7, 4242, salt, ciphertext)[:len(plaintext)] == plaintext


def test_our_authpriv_request_is_what_pysnmps_models_expect() -> None:
    user = fixture_user()
    keys = user.localize(ENGINE_ID)
    oids = [encode_oid("1.3.6.1.2.1.1.3.0"), encode_oid("1.3.6.1.4.1.2021.4.5.0")]
    plaintext = scoped_template(ENGINE_ID, b"ctx", pdu(GET, 0x0080_0000, oids)).render(0x0345_6789)
    ciphertext, salt = keys.encrypt(2, 777, plaintext)
    message, offset = encode_v3(msg_id=0x0345_6789, flags=user.flags, engine_id=ENGINE_ID, boots=2, time=777,
                                user=user.name, mac_length=keys.mac_length, priv_params=salt,
                                msg_data=tlv(OCTET_STRING, ciphertext))
    message = message[:offset] + keys.mac(message) + message[offset + keys.mac_length:]

    decoded, rest = ber_decoder.decode(message, asn1Spec=SNMPv3Message())
    assert rest == b""
    header = decoded["msgGlobalData"]
    assert int(header["msgID"]) == 0x0345_6789 and int(header["msgSecurityModel"]) == 3
    assert bytes(header["msgFlags"]) == bytes((FLAG_AUTH | FLAG_PRIV | FLAG_REPORTABLE,))
    usm, _ = ber_decoder.decode(bytes(decoded["msgSecurityParameters"]), asn1Spec=UsmSecurityParameters())
    assert bytes(usm["msgAuthoritativeEngineId"]) == ENGINE_ID
    assert (int(usm["msgAuthoritativeEngineBoots"]), int(usm["msgAuthoritativeEngineTime"])) == (2, 777)
    assert bytes(usm["msgUserName"]) == user.name and bytes(usm["msgPrivacyParameters"]) == salt
    # pysnmp's own HMAC check and AES decryption accept it, with keys pysnmp localised itself.
    auth = user.auth.service
    auth_key = auth.localize_key(auth.hash_passphrase(FIXTURE_USER["auth_key"].encode()), OctetString(ENGINE_ID))
    auth.authenticate_incoming_message(auth_key, usm["msgAuthenticationParameters"], message)
    priv = priv_protocol("AES-128").service
    priv_key = priv.localize_key(user.auth.oid, priv.hash_passphrase(user.auth.oid, FIXTURE_USER["priv_key"].encode()),
                                 OctetString(ENGINE_ID))
    clear = priv.decrypt_data(priv_key, (2, 777, usm["msgPrivacyParameters"]),
                              decoded["msgData"]["encryptedPDU"])
    scoped, _ = ber_decoder.decode(bytes(clear), asn1Spec=ScopedPDU())
    assert bytes(scoped["contextEngineId"]) == ENGINE_ID and bytes(scoped["contextName"]) == b"ctx"
    request = scoped["data"]["get-request"]
    assert int(request["request-id"]) == 0x0345_6789
    assert [tuple(vb["name"]) for vb in request["variable-bindings"]] == [decode_oid(o) for o in oids]


def test_captured_authpriv_response_verifies_and_decrypts() -> None:
    user = fixture_user()
    keys = user.localize(ENGINE_ID)
    message = parse_v3(bytes.fromhex(CAPTURED["v3_get"]["response"]))
    assert message.msg_id == CAPTURED["v3_get"]["msg_id"]
    assert message.flags & (FLAG_AUTH | FLAG_PRIV) == FLAG_AUTH | FLAG_PRIV
    assert message.engine_id == ENGINE_ID and message.user == user.name
    assert verify(message, keys)
    plaintext = decrypt(message, keys)
    context_engine, context_name, answer = parse_scoped_pdu(plaintext)
    assert (context_engine, context_name, answer.tag, answer.request_id) == (ENGINE_ID, b"", RESPONSE, message.msg_id)
    assert [decode_oid(o) for o, _, _ in answer.varbinds] == \
        [tuple(int(a) for a in oid.split(".")) for oid in CAPTURED["v3_get"]["oids"]]
    # pysnmp reads the same ScopedPDU.
    scoped, _ = ber_decoder.decode(plaintext, asn1Spec=ScopedPDU())
    reference = [tuple(vb["name"]) for vb in scoped["data"]["response"]["variable-bindings"]]
    assert reference == [decode_oid(o) for o, _, _ in answer.varbinds]
    assert int(scoped["data"]["response"]["request-id"]) == answer.request_id
    # A different engine's keys do not verify it.
    assert not verify(message, user.localize(bytes.fromhex("80001f8880aabbccdd00112233")))


@pytest.mark.parametrize(("key", "report", "flags"), [
    pytest.param("v3_discovery", "unknownEngineID", 0, id="discovery"),
    pytest.param("v3_wrong_digest", "wrongDigest", 0, id="wrong auth key"),
    pytest.param("v3_unknown_user", "unknownUserName", 0, id="unknown user"),
    pytest.param("v3_not_in_time_window", "notInTimeWindow", FLAG_AUTH, id="wrong boots, authenticated report"),
    pytest.param("v3_unknown_engine_id", "unknownEngineID", 0, id="someone else's engine ID"),
    pytest.param("v3_unsupported_sec_level", "unsupportedSecLevel", 0, id="authPriv for an auth-only user"),
])
def test_captured_reports(key: str, report: str, flags: int) -> None:
    message = parse_v3(bytes.fromhex(CAPTURED[key]["response"]))
    assert message.flags & (FLAG_AUTH | FLAG_PRIV) == flags
    assert message.engine_id == ENGINE_ID and message.boots >= 1
    if flags & FLAG_AUTH:
        assert verify(message, fixture_user().localize(ENGINE_ID))
    _, _, answer = parse_scoped_pdu(message.data)
    assert answer.tag == REPORT
    assert USM_STATS[answer.varbinds[0][0]] == report


def test_captured_wrong_priv_and_probe() -> None:
    # net-snmp drops a request it cannot decrypt (no report at all) ...
    assert CAPTURED["v3_wrong_priv_is_silent"] is True
    # ... but answers the same user without privacy, authenticated: how the collector tells "priv".
    message = parse_v3(bytes.fromhex(CAPTURED["v3_auth_no_priv_probe"]["response"]))
    assert message.flags & (FLAG_AUTH | FLAG_PRIV) == FLAG_AUTH
    assert verify(message, fixture_user().localize(ENGINE_ID))
    _, _, answer = parse_scoped_pdu(message.data)
    assert (answer.tag, answer.error_status) == (RESPONSE, 16)        # authorizationError


def test_discovery_message_is_a_plain_reportable_request() -> None:
    decoded, _ = ber_decoder.decode(discovery_message(0x0400_0000, pdu(GET, 0x0400_0000, [])),
                                    asn1Spec=SNMPv3Message())
    assert bytes(decoded["msgGlobalData"]["msgFlags"]) == bytes((FLAG_REPORTABLE,))
    usm, _ = ber_decoder.decode(bytes(decoded["msgSecurityParameters"]), asn1Spec=UsmSecurityParameters())
    assert bytes(usm["msgAuthoritativeEngineId"]) == b"" and bytes(usm["msgUserName"]) == b""


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(bytes.fromhex(CAPTURED["v3_get"]["response"])[:-3], id="truncated"),
    pytest.param(bytes.fromhex(CAPTURED["v2c_get_types"]["response"]), id="a v2c message"),
])
def test_malformed_v3_raises_ber_error(data: bytes) -> None:
    from collectors.snmp.ber import BerError

    with pytest.raises(BerError):
        parse_v3(data)


def test_secrets_never_in_reprs() -> None:
    user = fixture_user()
    keys = user.localize(ENGINE_ID)
    for text in (repr(user), repr(keys), repr(V3Security(user)), str(user)):
        for secret in (FIXTURE_USER["auth_key"], FIXTURE_USER["priv_key"]):
            assert secret not in text
    assert "fixture" in repr(user) and "SHA-256" in repr(user)
    with pytest.raises(ValueError, match="priv protocol needs a priv passphrase"):
        UsmUser("u", auth_protocol("SHA"), "passphrase", priv_protocol("AES"), None)


def test_a_key_longer_than_the_hash_is_extended_per_variant() -> None:
    # With SHA-1 (20 octets) AES-256 needs key extension: the two drafts give different keys.
    blumenthal = UsmUser("u", auth_protocol("SHA"), "a-passphrase", priv_protocol("AES-256"), "p-passphrase")
    reeder = UsmUser("u", auth_protocol("SHA"), "a-passphrase", priv_protocol("AES-256-C"), "p-passphrase")
    plaintext = b"\x30\x03\x02\x01\x00" * 4
    c1, salt = blumenthal.localize(ENGINE_ID).encrypt(1, 1, plaintext)
    assert reeder.localize(ENGINE_ID).decrypt(1, 1, salt, c1) != plaintext
    assert blumenthal.localize(ENGINE_ID).decrypt(1, 1, salt, c1) == plaintext
