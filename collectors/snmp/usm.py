"""SNMPv3 User-based Security Model for the `snmp` collector: the protocol names operators write,
key localisation, message authentication and privacy, and the v3 message framing.

Cryptography stays pysnmp's: passphrase hashing, key localisation (including the AES-192/256 key
extensions of the Blumenthal and Reeder drafts and 3DES) and the DES/3DES/AES ciphers with their
IV and salt rules are pysnmp's USM services, called directly. Only the framing around them is ours
(pre-encoded, see `collectors.snmp.ber`), and the HMAC is placed at the offset where we wrote the placeholder
instead of searched for. Credentials live only inside `UsmUser`/`LocalizedKeys`, whose repr shows none.
It does no I/O and keeps no per-agent state (the session in `collectors.snmp.client` does).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from pyasn1.type.univ import OctetString
from pysnmp.proto.secmod.rfc3414.service import SnmpUSMSecurityModel

from collectors.snmp.ber import (
    INTEGER,
    OCTET_STRING,
    SEQUENCE,
    BerError,
    Pdu,
    Template,
    encode_int,
    encode_oid,
    header,
    parse_pdu,
    request_template,
    tlv,
)

__all__ = [
    "AUTH_PROTOCOLS",
    "FLAG_AUTH",
    "FLAG_PRIV",
    "FLAG_REPORTABLE",
    "PRIV_PROTOCOLS",
    "USM_STATS",
    "AuthProtocol",
    "LocalizedKeys",
    "PrivProtocol",
    "UsmUser",
    "V3Message",
    "auth_protocol",
    "decrypt",
    "discovery_message",
    "encode_v3",
    "parse_scoped_pdu",
    "parse_v3",
    "priv_protocol",
    "scoped_template",
    "verify",
]

FLAG_AUTH = 0x01
FLAG_PRIV = 0x02
FLAG_REPORTABLE = 0x04
USM_SECURITY_MODEL = 3
MAX_MESSAGE_SIZE = 65507          # what we accept back; pysnmp and net-snmp announce the same
_GLOBAL_TAIL = tlv(INTEGER, encode_int(MAX_MESSAGE_SIZE))
_SECURITY_MODEL = tlv(INTEGER, encode_int(USM_SECURITY_MODEL))
_VERSION3 = b"\x02\x01\x03"


@dataclass(frozen=True, slots=True)
class AuthProtocol:
    """An authentication protocol: its name in our config, its USM OID, hash and MAC length."""

    name: str
    oid: tuple[int, ...]
    digest: str
    mac_length: int

    @property
    def service(self) -> Any:
        return SnmpUSMSecurityModel.AUTH_SERVICES[self.oid]


@dataclass(frozen=True, slots=True)
class PrivProtocol:
    """A privacy protocol: its name in our config and its USM OID (pysnmp's service does the rest)."""

    name: str
    oid: tuple[int, ...]

    @property
    def service(self) -> Any:
        return SnmpUSMSecurityModel.PRIV_SERVICES[self.oid]


AUTH_PROTOCOLS: dict[str, AuthProtocol] = {
    p.name: p
    for p in (
        AuthProtocol("MD5", (1, 3, 6, 1, 6, 3, 10, 1, 1, 2), "md5", 12),
        AuthProtocol("SHA", (1, 3, 6, 1, 6, 3, 10, 1, 1, 3), "sha1", 12),
        AuthProtocol("SHA-224", (1, 3, 6, 1, 6, 3, 10, 1, 1, 4), "sha224", 16),
        AuthProtocol("SHA-256", (1, 3, 6, 1, 6, 3, 10, 1, 1, 5), "sha256", 24),
        AuthProtocol("SHA-384", (1, 3, 6, 1, 6, 3, 10, 1, 1, 6), "sha384", 32),
        AuthProtocol("SHA-512", (1, 3, 6, 1, 6, 3, 10, 1, 1, 7), "sha512", 48),
    )
}

# "AES-192"/"AES-256" extend the localised key as the Blumenthal draft says (net-snmp's AES-192 /
# AES-256); the "-C" variants extend it as the Reeder 3DES draft says (Cisco's, net-snmp's
# AES-192-C / AES-256-C). The two are not interoperable: pick the one the agents use.
PRIV_PROTOCOLS: dict[str, PrivProtocol] = {
    p.name: p
    for p in (
        PrivProtocol("DES", (1, 3, 6, 1, 6, 3, 10, 1, 2, 2)),
        PrivProtocol("3DES", (1, 3, 6, 1, 6, 3, 10, 1, 2, 3)),
        PrivProtocol("AES-128", (1, 3, 6, 1, 6, 3, 10, 1, 2, 4)),
        PrivProtocol("AES-192", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 1)),
        PrivProtocol("AES-256", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 2)),
        PrivProtocol("AES-192-C", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 101)),
        PrivProtocol("AES-256-C", (1, 3, 6, 1, 4, 1, 9, 12, 6, 1, 102)),
    )
}
_AUTH_ALIASES = {"SHA1": "SHA", "SHA-1": "SHA", "SHA224": "SHA-224", "SHA256": "SHA-256", "SHA384": "SHA-384",
                 "SHA512": "SHA-512"}
_PRIV_ALIASES = {"AES": "AES-128", "AES128": "AES-128", "AES192": "AES-192", "AES256": "AES-256",
                 "3DES-EDE": "3DES", "DES3": "3DES"}


def auth_protocol(name: str) -> AuthProtocol:
    """The auth protocol called `name` (case-insensitive, common aliases). ValueError lists them."""
    key = name.strip().upper()
    key = _AUTH_ALIASES.get(key, key)
    try:
        return AUTH_PROTOCOLS[key]
    except KeyError:
        raise ValueError(f"unknown auth protocol {name!r} (known: {', '.join(AUTH_PROTOCOLS)})") from None


def priv_protocol(name: str) -> PrivProtocol:
    key = name.strip().upper()
    key = _PRIV_ALIASES.get(key, key)
    try:
        return PRIV_PROTOCOLS[key]
    except KeyError:
        raise ValueError(f"unknown priv protocol {name!r} (known: {', '.join(PRIV_PROTOCOLS)})") from None


# usmStats* counters (RFC 3414) and the MPD ones (RFC 3412) an agent reports: report name by OID.
USM_STATS: dict[bytes, str] = {
    encode_oid("1.3.6.1.6.3.15.1.1.1.0"): "unsupportedSecLevel",
    encode_oid("1.3.6.1.6.3.15.1.1.2.0"): "notInTimeWindow",
    encode_oid("1.3.6.1.6.3.15.1.1.3.0"): "unknownUserName",
    encode_oid("1.3.6.1.6.3.15.1.1.4.0"): "unknownEngineID",
    encode_oid("1.3.6.1.6.3.15.1.1.5.0"): "wrongDigest",
    encode_oid("1.3.6.1.6.3.15.1.1.6.0"): "decryptionError",
    encode_oid("1.3.6.1.6.3.11.2.1.1.0"): "unknownSecurityModel",
    encode_oid("1.3.6.1.6.3.11.2.1.2.0"): "invalidMessage",
    encode_oid("1.3.6.1.6.3.11.2.1.3.0"): "unknownPDUHandler",
}


class LocalizedKeys:
    """A user's keys localised to one authoritative engine. Holds secrets: repr shows none."""

    __slots__ = ("_hmac", "_priv_key", "engine_id", "mac_length", "priv")

    def __init__(self, engine_id: bytes, auth: AuthProtocol, auth_key: bytes, priv: PrivProtocol | None,
                 priv_key: bytes | None) -> None:
        self.engine_id = engine_id
        self.mac_length = auth.mac_length
        # A keyed HMAC object, copied per message: the key schedule is paid once per engine.
        self._hmac = hmac.new(auth_key, digestmod=getattr(hashlib, auth.digest))
        self.priv = priv
        self._priv_key = OctetString(priv_key) if priv_key is not None else None

    def mac(self, message: bytes) -> bytes:
        h = self._hmac.copy()
        h.update(message)
        return h.digest()[: self.mac_length]

    def encrypt(self, boots: int, time: int, plaintext: bytes) -> tuple[bytes, bytes]:
        """(ciphertext, msgPrivacyParameters) by pysnmp's privacy service."""
        assert self.priv is not None and self._priv_key is not None
        ciphertext, salt = self.priv.service.encrypt_data(self._priv_key, (boots, time, None), plaintext)
        return bytes(ciphertext), bytes(salt)

    def decrypt(self, boots: int, time: int, salt: bytes, ciphertext: bytes) -> bytes:
        assert self.priv is not None and self._priv_key is not None
        return bytes(self.priv.service.decrypt_data(self._priv_key, (boots, time, OctetString(salt)),
                                                    OctetString(ciphertext)))

    def __repr__(self) -> str:
        return f"LocalizedKeys(engine_id={self.engine_id.hex()})"


class UsmUser:
    """A USM user with its passphrases hashed once (RFC 3414 A.2: ~1 MB of hashing each), ready to be
    localised to any engine. Holds secrets: repr shows only the name and protocols."""

    __slots__ = ("_auth_ku", "_priv_ku", "auth", "name", "priv")

    def __init__(self, name: str, auth: AuthProtocol, auth_passphrase: str, priv: PrivProtocol | None = None,
                 priv_passphrase: str | None = None) -> None:
        if (priv is None) != (priv_passphrase is None):
            raise ValueError("a priv protocol needs a priv passphrase and vice versa")
        self.name = name.encode()
        self.auth = auth
        self.priv = priv
        self._auth_ku = bytes(auth.service.hash_passphrase(auth_passphrase.encode()))
        self._priv_ku = (bytes(priv.service.hash_passphrase(auth.oid, priv_passphrase.encode()))
                         if priv is not None and priv_passphrase is not None else None)

    @property
    def flags(self) -> int:
        return FLAG_AUTH | FLAG_REPORTABLE | (FLAG_PRIV if self.priv is not None else 0)

    def localize(self, engine_id: bytes) -> LocalizedKeys:
        engine = OctetString(engine_id)
        auth_key = bytes(self.auth.service.localize_key(OctetString(self._auth_ku), engine))
        priv_key = None
        if self.priv is not None:
            priv_key = bytes(self.priv.service.localize_key(self.auth.oid, OctetString(self._priv_ku), engine))
        return LocalizedKeys(engine_id, self.auth, auth_key, self.priv, priv_key)

    def __repr__(self) -> str:
        priv = self.priv.name if self.priv else "none"
        return f"UsmUser({self.name.decode(errors='replace')!r}, auth={self.auth.name}, priv={priv})"


# ---- framing -----------------------------------------------------------------------------------

def encode_v3(*, msg_id: int, flags: int, engine_id: bytes, boots: int, time: int, user: bytes, mac_length: int,
              priv_params: bytes, msg_data: bytes) -> tuple[bytes, int]:
    """A v3 message with a zeroed MAC placeholder, and the placeholder's offset.

    `msg_data` is the already-encoded msgData: a ScopedPDU SEQUENCE, or an OCTET STRING of ciphertext.
    """
    usm_head = (tlv(OCTET_STRING, engine_id) + tlv(INTEGER, encode_int(boots)) + tlv(INTEGER, encode_int(time))
                + tlv(OCTET_STRING, user) + bytes((OCTET_STRING, mac_length)))
    usm_body = usm_head + bytes(mac_length) + tlv(OCTET_STRING, priv_params)
    usm = tlv(SEQUENCE, usm_body)
    security = tlv(OCTET_STRING, usm)
    global_data = tlv(SEQUENCE, b"\x02\x04" + msg_id.to_bytes(4, "big") + _GLOBAL_TAIL + bytes((OCTET_STRING, 1, flags))
                      + _SECURITY_MODEL)
    body = _VERSION3 + global_data + security + msg_data
    message = tlv(SEQUENCE, body)
    # Header lengths are whatever tlv() chose; the MAC sits right after usm_head inside them all.
    offset = ((len(message) - len(body)) + len(_VERSION3) + len(global_data) + (len(security) - len(usm))
              + (len(usm) - len(usm_body)) + len(usm_head))
    return message, offset


def scoped_template(context_engine_id: bytes, context_name: bytes, pdu_bytes: bytes) -> Template:
    """A plaintext ScopedPDU template with the request-id hole."""
    prefix = tlv(OCTET_STRING, context_engine_id) + tlv(OCTET_STRING, context_name)
    return request_template(pdu_bytes, lambda p: tlv(SEQUENCE, prefix + p))


def discovery_message(msg_id: int, pdu_bytes: bytes) -> bytes:
    """RFC 3414 4: an unauthenticated, reportable request with an empty engine ID and user, which
    any agent answers with an unknownEngineID report carrying its engine ID, boots and time."""
    scoped = tlv(SEQUENCE, b"\x04\x00\x04\x00" + pdu_bytes)
    message, _ = encode_v3(msg_id=msg_id, flags=FLAG_REPORTABLE, engine_id=b"", boots=0, time=0, user=b"",
                           mac_length=0, priv_params=b"", msg_data=scoped)
    return message


@dataclass(frozen=True, slots=True)
class V3Message:
    """A parsed v3 message, before authentication and decryption. `auth_offset` locates the MAC."""

    raw: bytes
    msg_id: int
    flags: int
    security_model: int
    engine_id: bytes
    boots: int
    time: int
    user: bytes
    auth_params: bytes
    auth_offset: int
    priv_params: bytes
    data_tag: int
    data: bytes      # ciphertext (encrypted) or the ScopedPDU TLV (plaintext)


def _octets(data: bytes, i: int, what: str) -> tuple[bytes, int, int]:
    tag, start, end = header(data, i)
    if tag != OCTET_STRING:
        raise BerError(f"{what}: expected OCTET STRING, got 0x{tag:02x}")
    return data[start:end], start, end


def _integer(data: bytes, i: int, what: str) -> tuple[int, int]:
    tag, start, end = header(data, i)
    if tag != INTEGER or start == end:
        raise BerError(f"{what}: expected INTEGER")
    return int.from_bytes(data[start:end], "big", signed=True), end


def parse_v3(data: bytes) -> V3Message:
    try:
        tag, start, end = header(data, 0)
        if tag != SEQUENCE or end != len(data):
            raise BerError("message: expected one SEQUENCE")
        version, j = _integer(data, start, "msgVersion")
        if version != 3:
            raise BerError(f"msgVersion {version}, expected 3")
        tag, g_start, g_end = header(data, j)
        if tag != SEQUENCE:
            raise BerError("msgGlobalData: expected SEQUENCE")
        msg_id, k = _integer(data, g_start, "msgID")
        _, k = _integer(data, k, "msgMaxSize")
        flags_bytes, _, k = _octets(data, k, "msgFlags")
        security_model, k = _integer(data, k, "msgSecurityModel")
        if len(flags_bytes) != 1 or k != g_end:
            raise BerError("msgGlobalData: malformed")
        _, s_start, s_end = _octets(data, g_end, "msgSecurityParameters")
        tag, u_start, u_end = header(data, s_start)
        if tag != SEQUENCE or u_end != s_end:
            raise BerError("UsmSecurityParameters: expected SEQUENCE")
        engine_id, _, k = _octets(data, u_start, "msgAuthoritativeEngineID")
        boots, k = _integer(data, k, "msgAuthoritativeEngineBoots")
        time, k = _integer(data, k, "msgAuthoritativeEngineTime")
        user, _, k = _octets(data, k, "msgUserName")
        auth_params, auth_offset, k = _octets(data, k, "msgAuthenticationParameters")
        priv_params, _, k = _octets(data, k, "msgPrivacyParameters")
        if k != u_end:
            raise BerError("UsmSecurityParameters: trailing bytes")
        tag, d_start, d_end = header(data, s_end)
        if d_end != end:
            raise BerError("msgData: trailing bytes")
    except IndexError:
        raise BerError("truncated v3 message") from None
    payload = data[d_start:d_end] if tag == OCTET_STRING else data[s_end:d_end]
    return V3Message(data, msg_id, flags_bytes[0], security_model, engine_id, boots, time, user, auth_params,
                     auth_offset, priv_params, tag, payload)


def verify(message: V3Message, keys: LocalizedKeys) -> bool:
    """True iff the message's MAC is right for `keys` (RFC 3414 6.3.2 / RFC 7860)."""
    mac = message.auth_params
    if len(mac) != keys.mac_length:
        return False
    raw = message.raw
    off = message.auth_offset
    expected = keys.mac(raw[:off] + bytes(len(mac)) + raw[off + len(mac):])
    return hmac.compare_digest(mac, expected)


def decrypt(message: V3Message, keys: LocalizedKeys) -> bytes:
    """The plaintext ScopedPDU of an encrypted message. Raises BerError if it cannot be decrypted."""
    if message.data_tag != OCTET_STRING:
        raise BerError("encrypted msgData is not an OCTET STRING")
    try:
        return keys.decrypt(message.boots, message.time, message.priv_params, message.data)
    except Exception as exc:    # pysnmp raises its StatusInformation, cryptography ValueError
        raise BerError(f"cannot decrypt: {type(exc).__name__}") from None


def parse_scoped_pdu(data: bytes) -> tuple[bytes, bytes, Pdu]:
    """(contextEngineID, contextName, pdu) of a plaintext ScopedPDU; bytes after it (DES padding)
    are ignored, as RFC 3414 8.3.2 says."""
    try:
        tag, start, end = header(data, 0)
        if tag != SEQUENCE:
            raise BerError("ScopedPDU: expected SEQUENCE (wrong priv key or protocol?)")
        engine_id, _, k = _octets(data, start, "contextEngineID")
        name, _, k = _octets(data, k, "contextName")
        parsed, k = parse_pdu(data, k)
    except IndexError:
        raise BerError("truncated ScopedPDU") from None
    if k != end:
        raise BerError("ScopedPDU: trailing bytes")
    return engine_id, name, parsed

