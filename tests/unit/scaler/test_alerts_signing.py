"""The signature schemes against known answers computed elsewhere, and the credential table."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import SecretStr

from scaler.alerts.config import Credential, SigningKey
from scaler.alerts.signing import (
    AuthError,
    CredentialTable,
    grafana_signature,
    signal_url,
    standard_webhook_signature,
    verify_grafana,
    verify_standard_webhook,
    verify_url,
)


def test_standard_webhooks_reference_vector() -> None:
    # The test vector of the Standard Webhooks reference libraries.
    sig = standard_webhook_signature(SecretStr("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                                     "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(("timestamp", "expected"), [
    # printf '%s' '1700000000:{"a":1}' | openssl dgst -sha256 -hmac grafana-secret
    pytest.param("1700000000", "24e5cceaff421f69e7d20a98706bbd411e1681e0799cd472fa11800058e7c197", id="with timestamp"),
    pytest.param(None, "1989731f9bb2c7d0d76465fd8865eff33772b9bb41eed41f03e7707dc2831367", id="body only"),
])
def test_grafana_signature_matches_openssl(timestamp: str | None, expected: str) -> None:
    assert grafana_signature(SecretStr("grafana-secret"), b'{"a":1}', timestamp) == expected
    verify_grafana(SecretStr("grafana-secret"), b'{"a":1}', expected.upper(), timestamp, 1_700_000_010, 60,
                   timestamp_required=timestamp is not None)


def keys(tmp_path: Path) -> list[SigningKey]:
    (tmp_path / "k").write_text("k" * 32)
    return [SigningKey.model_validate({"id": "k1", "secret": {"file": str(tmp_path / "k")}, "pools": ["web"]})]


def test_signed_url_round_trip_and_strict_spelling(tmp_path: Path) -> None:
    ks = keys(tmp_path)
    url = signal_url("http://s/", "web", "scale-out", ks[0].secret, 60, 1000.0, key_id="k1")
    query = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
    assert url.startswith("http://s/v1/pools/web/signal/scale-out?kid=k1&exp=1060&sig=")
    first = verify_url(ks, "web", "scale-out", query, 1001.0, 86400)
    # The same MAC padded, or with a character the lenient decoder would skip, is refused: one
    # spelling per URL, so a replay cannot pass as a new call.
    for variant in (query["sig"] + "=", query["sig"][:-1] + "!" + query["sig"][-1]):
        with pytest.raises(AuthError) as info:
            verify_url(ks, "web", "scale-out", {**query, "sig": variant}, 1001.0, 86400)
        assert info.value.status == 401
    assert first.replay_key == verify_url(ks, "web", "scale-out", query, 1002.0, 86400).replay_key


def test_standard_webhook_needs_one_matching_signature(tmp_path: Path) -> None:
    ks = keys(tmp_path)
    body = b'{"pool":"web","action":"scale-out"}'
    good = standard_webhook_signature(ks[0].secret, "m", 100, body)
    headers = {"webhook-id": "m", "webhook-timestamp": "100",
               "webhook-signature": f"v2,abc v1,{base64.b64encode(b'x' * 32).decode()} {good}"}
    verified, key = verify_standard_webhook(ks, headers, body, 100.0, 300)
    assert (verified.key_id, key.id, verified.timestamp) == ("k1", "k1", 100.0)
    with pytest.raises(AuthError, match="no webhook-signature matches"):
        verify_standard_webhook(ks, {**headers, "webhook-signature": "v2," + good[3:]}, body, 100.0, 300)


@pytest.fixture
def table(tmp_path: Path) -> CredentialTable:
    (tmp_path / "t").write_text("bearer-token-0123456789")
    (tmp_path / "p").write_text("pass:word-0123")
    return CredentialTable.of([
        Credential.model_validate({"name": "tok", "token": {"file": str(tmp_path / "t")}, "pools": ["web"]}),
        Credential.model_validate({"name": "usr", "username": "am", "password": {"file": str(tmp_path / "p")},
                                   "pools": ["*"]}),
    ])


@pytest.mark.parametrize(("header", "name"), [
    pytest.param("Bearer bearer-token-0123456789", "tok", id="bearer"),
    pytest.param("bearer   bearer-token-0123456789 ", "tok", id="scheme is case-insensitive, spaces trimmed"),
    pytest.param("Basic " + base64.b64encode(b"am:pass:word-0123").decode(), "usr",
                 id="basic, a colon inside the password"),
])
def test_credentials_are_recognised(table: CredentialTable, header: str, name: str) -> None:
    assert table.authenticate(header).name == name


@pytest.mark.parametrize("header", [
    pytest.param(None, id="absent"),
    pytest.param("Bearer bearer-token-012345678", id="one character short"),
    pytest.param("Basic " + base64.b64encode(b"bearer-token-0123456789").decode(), id="a token sent as basic"),
    pytest.param("Bearer " + base64.b64encode(b"am:pass:word-0123").decode(), id="basic sent as bearer"),
    pytest.param("Basic " + base64.b64encode(b"AM:pass:word-0123").decode(), id="user name is case-sensitive"),
    pytest.param("Token bearer-token-0123456789", id="unknown scheme"),
])
def test_anything_else_is_401(table: CredentialTable, header: str | None) -> None:
    with pytest.raises(AuthError) as info:
        table.authenticate(header)
    assert info.value.status == 401
    assert "bearer-token" not in info.value.message and "pass:word" not in info.value.message
