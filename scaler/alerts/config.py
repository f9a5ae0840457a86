"""The `alerts:` section of scaler.yaml: who may send alarms and signals, for which pools, and the
limits the receivers enforce.

Every credential is a `{file: …}` / `{env: …}` reference resolved to a SecretStr when the config is
loaded (collectors.secrets); this module never logs or prints a secret and never touches the network.

    alerts:
      pool_label: pool
      max_body_bytes: 1048576
      max_alerts: 1000
      alertmanager:
        credentials:
          - {name: am-prod, token: {file: /etc/scaler/am-token}, pools: [web, api]}
          - {name: am-lab, username: alertmanager, password: {env: AM_PASSWORD}, pools: ["*"]}
      grafana:
        credentials: [{name: grafana, token: {file: /etc/scaler/grafana-token}, pools: [web]}]
        hmac: {secret: {file: /etc/scaler/grafana-hmac}, pools: [web],
               timestamp_header: X-Grafana-Alerting-Signature-Timestamp}
      signals:
        keys:
          - {id: k2026, secret: {file: /etc/scaler/signal-key}, pools: ["*"]}
        hold: {scale_out: 5m, scale_in: 5m}
        replay_window: 5m
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from collectors.secrets import Secret
from policies.durations import Duration
from scaler.credentials import CredentialName, check_token, check_unique, digest

# A pool a credential may act for, or "*" for every pool (present and future).
PoolPattern = Annotated[str, Field(pattern=r"^(\*|[a-z][a-z0-9_-]{0,39})$")]

MIB = 1024 * 1024
# Shorter passwords and keys are guessable or typos (a truncated file); refuse them at load time
# (tokens: MIN_TOKEN_CHARS, scaler.credentials).
MIN_PASSWORD_CHARS = 12
MIN_KEY_BYTES = 16


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def allows(patterns: tuple[str, ...] | list[str], pool: str) -> bool:
    """Whether a credential scoped to `patterns` may act for `pool`."""
    return "*" in patterns or pool in patterns


class Credential(Strict):
    """A bearer token *or* a basic-auth user and password, allowed to speak for `pools`.
    `name` identifies the sender in events, metrics and `scaler why` (never the secret)."""

    name: CredentialName
    token: Secret | None = None
    username: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[^:]*$")
    password: Secret | None = None
    pools: list[PoolPattern] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        basic = self.username is not None or self.password is not None
        if (self.token is not None) == basic:
            raise ValueError("a credential needs either 'token' or 'username' + 'password'")
        if basic and (self.username is None or self.password is None):
            raise ValueError("basic auth needs both 'username' and 'password'")
        if self.token is not None:
            check_token(self.token)
        if self.password is not None and len(self.password.get_secret_value()) < MIN_PASSWORD_CHARS:
            raise ValueError(f"password is shorter than {MIN_PASSWORD_CHARS} characters")
        return self


def _check_credentials(credentials: list[Credential]) -> None:
    # The same secret under two names would make the pool scope depend on list order.
    digests = [digest(c.token) for c in credentials if c.token]
    digests += [digest(f"{c.username}:{c.password.get_secret_value()}")
                for c in credentials if c.password is not None]
    check_unique([c.name for c in credentials], digests)


class ReceiverConfig(Strict):
    """An alert receiver. With no credential configured it accepts nothing (401)."""

    credentials: list[Credential] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _check_credentials(self.credentials)
        return self


class GrafanaHmac(Strict):
    """Grafana's optional HMAC signature: hex HMAC-SHA256 over `[timestamp:]body`."""

    secret: Secret
    pools: list[PoolPattern] = Field(min_length=1)
    header: str = Field(default="X-Grafana-Alerting-Signature", min_length=1)
    # Set it to the header Grafana's "Timestamp Header" field names; the timestamp is then signed
    # too and requests older (or newer) than max_skew are refused.
    timestamp_header: str | None = None
    max_skew: Duration = Field(default=300.0, gt=0)


class GrafanaConfig(ReceiverConfig):
    """Grafana contact points: a credential, an HMAC signature, or both (then both are required
    and the allowed pools are those both allow)."""

    hmac: GrafanaHmac | None = None


def key_bytes(secret: SecretStr) -> bytes:
    """The HMAC key of a secret: Standard Webhooks' `whsec_<base64>` form is decoded, anything else
    is used as its UTF-8 bytes."""
    value = secret.get_secret_value()
    if value.startswith("whsec_"):
        try:
            return base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return value.encode()


class SigningKey(Strict):
    """A key for signed scale URLs and Standard Webhooks signatures. `id` travels in the URLs
    (`kid=`); removing a key revokes every URL signed with it."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    secret: Secret
    pools: list[PoolPattern] = Field(min_length=1)

    @model_validator(mode="after")
    def _long_enough(self) -> Self:
        if len(key_bytes(self.secret)) < MIN_KEY_BYTES:
            raise ValueError(f"secret is shorter than {MIN_KEY_BYTES} bytes")
        return self


class SignalHold(Strict):
    """How long one accepted signal keeps its alarm (`signal:scale-out` / `signal:scale-in`) firing."""

    scale_out: Duration = Field(default=300.0, gt=0)
    scale_in: Duration = Field(default=300.0, gt=0)


class SignalsConfig(Strict):
    """Signed scale URLs and Standard Webhooks calls on `POST /v1/pools/{pool}/signal/{action}`."""

    # The first key signs new URLs; every key listed verifies (rotation: add the new key first,
    # re-issue the URLs, then remove the old key).
    keys: list[SigningKey] = Field(default_factory=list)
    # A scale-in signal can shrink a pool at the worst moment if a URL leaks: refused (403)
    # unless enabled, and even then only a policy rule that names `signal:scale-in` can use it.
    allow_scale_in: bool = False
    hold: SignalHold = SignalHold()
    # Standard Webhooks timestamp tolerance, and how long a seen webhook-id or a called URL is
    # remembered (calls of the same URL inside the window are duplicates).
    replay_window: Duration = Field(default=300.0, gt=0, le=86400)
    default_ttl: Duration = Field(default=30 * 86400.0, gt=0)
    # No URL may live longer than this, even one signed under a laxer config: no permanent URLs.
    max_ttl: Duration = Field(default=365 * 86400.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("signing key ids must be unique")
        if self.default_ttl > self.max_ttl:
            raise ValueError("default_ttl is longer than max_ttl")
        return self


class AlertsConfig(Strict):
    pool_label: str = Field(default="pool", min_length=1,
                            description="the alert label naming the pool an alert is for")
    alarm_label: str = Field(default="alertname", min_length=1,
                             description="the alert label naming the alarm (what policy rules refer to)")
    # uvicorn has no body limit of its own; this one is enforced while the body is read.
    max_body_bytes: int = Field(default=MIB, ge=1024, le=64 * MIB)
    # Set Alertmanager's webhook `max_alerts` at or below this: a larger group is refused with 413,
    # which Alertmanager re-sends every group_interval forever.
    max_alerts: int = Field(default=1000, ge=1, le=100_000)
    read_timeout: Duration = Field(default=10.0, gt=0, description="to receive a whole request body")
    alertmanager: ReceiverConfig = ReceiverConfig()
    grafana: GrafanaConfig = GrafanaConfig()
    signals: SignalsConfig = SignalsConfig()

    def pools_named(self) -> set[str]:
        """Every pool named by a credential or key (without "*"), to check against scaler.yaml."""
        names = [p for c in (*self.alertmanager.credentials, *self.grafana.credentials) for p in c.pools]
        names += [p for k in self.signals.keys for p in k.pools]
        if self.grafana.hmac is not None:
            names += self.grafana.hmac.pools
        return {p for p in names if p != "*"}
