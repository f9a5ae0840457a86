"""Signatures: signed scale URLs, Standard Webhooks, Grafana's HMAC header, and credential checks.

Pure functions over bytes, keys and an explicit `now`: no I/O, no clock, no framework. Every
comparison of a secret or a MAC is constant-time (`hmac.compare_digest`) over raw bytes, and every
MAC is checked over the body exactly as received, before anything parses it. Failures raise
`AuthError` carrying the HTTP status (401: not authenticated, 403: authenticated but not allowed)
and a short reason for metrics; messages never contain a secret.

Signed scale URL (for callers that can only call a URL: Aodh alarm actions, cron, scripts):

    {base}/v1/pools/{pool}/signal/{action}?kid={key id}&exp={unix seconds}&sig={base64url MAC}
    MAC = HMAC-SHA256(key, "scaler-signal-v1\\n{pool}\\n{action}\\n{exp}\\n{kid}")

The pool, the action, the expiry and the key id are all signed, so a URL cannot be pointed at
another pool, turned into the other action or extended.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

from pydantic import SecretStr

from scaler.alerts.config import Credential, SignalsConfig, SigningKey, allows, key_bytes
from scaler.credentials import digest, lookup
from scaler.errors import ConfigError

Action = Literal["scale-out", "scale-in"]
ACTIONS: tuple[Action, ...] = ("scale-out", "scale-in")
URL_SCHEME = "scaler-signal-v1"
MAX_WEBHOOK_ID = 256
MAX_SIGNATURES = 16


class AuthError(Exception):
    """An authentication (401) or authorization (403) failure. `reason` is a metric label value."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def unauthorized(reason: str, message: str) -> AuthError:
    return AuthError(401, reason, message)


def forbidden(reason: str, message: str) -> AuthError:
    return AuthError(403, reason, message)


def raw(text: str) -> bytes:
    """A header value's bytes as they came off the wire (ASGI servers decode headers as latin-1)."""
    return text.encode("latin-1", "replace")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_MAC_B64URL = re.compile(r"^[A-Za-z0-9_-]{43}$")   # 32 bytes, unpadded: one spelling per MAC


def _unb64url_mac(text: str) -> bytes | None:
    # Strict: the lenient decoder drops unknown characters, so a tampered spelling could decode to
    # the same MAC (and count as a different URL for replay detection).
    if not _MAC_B64URL.match(text):
        return None
    return base64.urlsafe_b64decode(text + "=")


# --- signed scale URLs ---------------------------------------------------------------------------


def url_mac(key: bytes, pool: str, action: str, exp: int, kid: str) -> bytes:
    message = f"{URL_SCHEME}\n{pool}\n{action}\n{exp}\n{kid}".encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def signal_url(base_url: str, pool: str, action: Action, secret: SecretStr | bytes, ttl_s: float, now: float,
               *, key_id: str) -> str:
    """A URL that signals `action` for `pool` when POSTed to, valid until now + ttl_s."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    key = secret if isinstance(secret, bytes) else key_bytes(secret)
    exp = int(now + ttl_s)
    sig = _b64url(url_mac(key, pool, action, exp, key_id))
    query = urlencode({"kid": key_id, "exp": str(exp), "sig": sig})
    return f"{base_url.rstrip('/')}/v1/pools/{quote(pool, safe='')}/signal/{action}?{query}"


def signal_url_for(config: SignalsConfig, base_url: str, pool: str, action: str, now: float, *,
                   ttl_s: float | None = None, key_id: str | None = None) -> str:
    """`scaler signal-url POOL ACTION [--ttl 30d] [--key ID]`: a URL signed with the first
    configured key (or `key_id`), checked against the config so that it will be accepted.
    Raises ConfigError naming what prevents it."""
    if action not in ACTIONS:
        raise ConfigError([f"action must be one of {', '.join(ACTIONS)}, not {action!r}"])
    if not config.keys:
        raise ConfigError(["alerts.signals.keys: no signing key configured"])
    key = config.keys[0] if key_id is None else next((k for k in config.keys if k.id == key_id), None)
    if key is None:
        raise ConfigError([f"alerts.signals.keys: no key with id {key_id!r} "
                           f"(ids: {', '.join(k.id for k in config.keys)})"])
    if not allows(key.pools, pool):
        raise ConfigError([f"alerts.signals.keys: key {key.id!r} may not signal pool {pool!r}"])
    if action == "scale-in" and not config.allow_scale_in:
        raise ConfigError(["alerts.signals.allow_scale_in is false: scale-in URLs would be refused"])
    ttl = config.default_ttl if ttl_s is None else ttl_s
    if ttl > config.max_ttl:
        raise ConfigError([f"ttl {ttl:g}s is longer than alerts.signals.max_ttl ({config.max_ttl:g}s)"])
    return signal_url(base_url, pool, action, key.secret, ttl, now, key_id=key.id)


@dataclass(frozen=True)
class Verified:
    """Who signed a signal and what makes it unique for replay detection."""

    key_id: str
    scheme: Literal["url", "standard-webhooks"]
    replay_key: str          # stable for one URL / one webhook-id
    timestamp: float | None  # Standard Webhooks: the signed timestamp


def verify_url(keys: Sequence[SigningKey], pool: str, action: str, query: Mapping[str, str], now: float,
               max_ttl_s: float) -> Verified:
    """Check a signed URL's `kid`, `exp` and `sig` for this pool and action."""
    kid, exp_text, sig_text = query.get("kid", ""), query.get("exp", ""), query.get("sig", "")
    key = next((k for k in keys if hmac.compare_digest(k.id.encode(), kid.encode())), None)
    presented = _unb64url_mac(sig_text)
    if key is None or presented is None or not exp_text.isdigit() or len(exp_text) > 12:
        raise unauthorized("bad_signature", "invalid signature")
    exp = int(exp_text)
    if not hmac.compare_digest(url_mac(key_bytes(key.secret), pool, action, exp, key.id), presented):
        raise unauthorized("bad_signature", "invalid signature")
    if exp <= now:
        raise unauthorized("expired", "this URL has expired")
    if exp - now > max_ttl_s:
        raise unauthorized("expired", "this URL's expiry is beyond signals.max_ttl")
    if not allows(key.pools, pool):
        raise forbidden("pool_not_allowed", f"key {key.id!r} may not signal pool {pool!r}")
    return Verified(key_id=key.id, scheme="url", timestamp=None,
                    replay_key="url:" + hashlib.sha256(presented).hexdigest())


# --- Standard Webhooks ---------------------------------------------------------------------------


def standard_webhook_signature(secret: SecretStr | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value a sender would send (for tests, benchmarks and scripts)."""
    key = secret if isinstance(secret, bytes) else key_bytes(secret)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify_standard_webhook(keys: Sequence[SigningKey], headers: Mapping[str, str], body: bytes, now: float,
                            tolerance_s: float) -> tuple[Verified, SigningKey]:
    """Check `webhook-id`, `webhook-timestamp`, `webhook-signature` over the raw body. Any of the
    space-separated `v1,` signatures may match any configured key (rotation on either side)."""
    msg_id = headers.get("webhook-id", "")
    ts_text = headers.get("webhook-timestamp", "")
    sig_header = headers.get("webhook-signature", "")
    if not msg_id or not ts_text or not sig_header:
        raise unauthorized("missing", "webhook-id, webhook-timestamp and webhook-signature are required")
    if len(msg_id) > MAX_WEBHOOK_ID or not ts_text.isdigit() or len(ts_text) > 12:
        raise unauthorized("bad_signature", "invalid webhook-id or webhook-timestamp")
    timestamp = int(ts_text)
    if abs(now - timestamp) > tolerance_s:
        raise unauthorized("expired", "webhook-timestamp is outside the replay window")
    presented = []
    for part in sig_header.split(" ")[:MAX_SIGNATURES]:
        version, _, value = part.partition(",")
        if version == "v1":
            try:
                presented.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
    signed = raw(f"{msg_id}.{timestamp}.") + body
    matched: SigningKey | None = None
    # Every key against every signature, no early exit: the time taken does not tell which matched.
    for key in keys:
        expected = hmac.new(key_bytes(key.secret), signed, hashlib.sha256).digest()
        for sig in presented:
            if hmac.compare_digest(expected, sig) and matched is None:
                matched = key
    if matched is None:
        raise unauthorized("bad_signature", "no webhook-signature matches a configured key")
    return (Verified(key_id=matched.id, scheme="standard-webhooks", timestamp=float(timestamp),
                     replay_key="swh:" + hashlib.sha256(raw(msg_id)).hexdigest()), matched)


# --- Grafana -------------------------------------------------------------------------------------


def grafana_signature(secret: SecretStr | bytes, body: bytes, timestamp: str | None = None) -> str:
    """Grafana's signature header value: hex HMAC-SHA256 over `timestamp:body` (or `body`)."""
    key = secret if isinstance(secret, bytes) else secret.get_secret_value().encode()
    signed = (raw(timestamp) + b":" + body) if timestamp is not None else body
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def verify_grafana(secret: SecretStr, body: bytes, signature: str | None, timestamp: str | None,
                   now: float, max_skew_s: float, *, timestamp_required: bool) -> None:
    if not signature:
        raise unauthorized("missing", "the Grafana signature header is missing")
    if timestamp_required:
        if not timestamp or not timestamp.isdigit() or len(timestamp) > 12:
            raise unauthorized("missing", "the Grafana signature timestamp header is missing or invalid")
    else:
        timestamp = None
    try:
        presented = bytes.fromhex(signature.strip())
    except ValueError:
        raise unauthorized("bad_signature", "invalid Grafana signature") from None
    expected = bytes.fromhex(grafana_signature(secret, body, timestamp))
    if not hmac.compare_digest(expected, presented):
        raise unauthorized("bad_signature", "invalid Grafana signature")
    if timestamp is not None and abs(now - int(timestamp)) > max_skew_s:
        raise unauthorized("expired", "the Grafana signature timestamp is too old or in the future")


# --- bearer tokens and basic auth ----------------------------------------------------------------


@dataclass(frozen=True)
class CredentialTable:
    """SHA-256 digests of the configured credentials: comparing fixed-length digests makes the
    comparison time independent of the presented secret's length and content."""

    bearer: tuple[tuple[bytes, Credential], ...]
    basic: tuple[tuple[bytes, Credential], ...]

    @classmethod
    def of(cls, credentials: Sequence[Credential]) -> CredentialTable:
        bearer = tuple((digest(c.token), c) for c in credentials if c.token is not None)
        basic = tuple((digest(f"{c.username}:{c.password.get_secret_value()}"), c)
                      for c in credentials if c.password is not None)
        return cls(bearer, basic)

    def __bool__(self) -> bool:
        return bool(self.bearer or self.basic)

    def authenticate(self, authorization: str | None) -> Credential:
        """The credential an `Authorization` header carries, or AuthError(401)."""
        if not authorization:
            raise unauthorized("missing", "credentials required (Authorization: Bearer … or Basic …)")
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            table, presented = self.bearer, raw(value)
        elif scheme.lower() == "basic":
            try:
                presented = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise unauthorized("invalid", "malformed basic credentials") from None
            table = self.basic
        else:
            raise unauthorized("invalid", "unsupported authorization scheme")
        found = lookup(table, presented)
        if found is None:
            raise unauthorized("invalid", "invalid credentials")
        return found
