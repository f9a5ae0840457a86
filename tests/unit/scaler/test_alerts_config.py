"""The `alerts:` config section: what it accepts, what it refuses (naming the key, never the secret),
and `signal_url_for`, which the CLI uses to print a URL the receiver will accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from scaler import yamlconf
from scaler.alerts import AlertsConfig, signal_url_for
from scaler.alerts.signing import verify_url
from scaler.errors import ConfigError

TOKEN = "a-long-enough-token-123"


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, dict[str, str]]:
    out = {}
    for name, value in {"token": TOKEN, "token2": TOKEN + "x", "short": "short", "pw": "a-password-123",
                        "key": "k" * 32, "badwh": "whsec_!!!notbase64", "shortwh": "whsec_AAAA"}.items():
        (tmp_path / name).write_text(value + "\n")
        out[name] = {"file": str(tmp_path / name)}
    return out


def test_defaults_accept_nothing_and_limit_bodies() -> None:
    cfg = AlertsConfig()
    assert (cfg.pool_label, cfg.max_body_bytes, cfg.alertmanager.credentials, cfg.signals.keys) == \
        ("pool", 1024 * 1024, [], [])
    assert cfg.signals.allow_scale_in is False


def test_a_full_section(secrets: dict[str, Any]) -> None:
    cfg = AlertsConfig.model_validate({
        "pool_label": "lb_pool", "max_alerts": 50,
        "alertmanager": {"credentials": [
            {"name": "prod", "token": secrets["token"], "pools": ["web", "api"]},
            {"name": "lab", "username": "am", "password": secrets["pw"], "pools": ["*"]}]},
        "grafana": {"hmac": {"secret": secrets["key"], "pools": ["web"]}},
        "signals": {"keys": [{"id": "k1", "secret": secrets["key"], "pools": ["web"]}],
                    "hold": {"scale_out": "2m"}, "replay_window": "1m", "default_ttl": "7d"},
    })
    assert cfg.alertmanager.credentials[0].token is not None
    assert TOKEN not in repr(cfg) and TOKEN not in str(cfg)
    assert (cfg.signals.hold.scale_out, cfg.signals.replay_window, cfg.signals.default_ttl) == (120, 60, 7 * 86400)
    assert cfg.pools_named() == {"web", "api"}


@pytest.mark.parametrize(("section", "message"), [
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "inline-token-0123456789",
                                                    "pools": ["web"]}]}}, "not inline", id="inline token"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "@token", "username": "u",
                                                    "password": "@pw", "pools": ["web"]}]}},
                 "either 'token' or 'username' \\+ 'password'", id="token and basic at once"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "username": "u", "pools": ["web"]}]}},
                 "needs both 'username' and 'password'", id="username without password"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "@short", "pools": ["web"]}]}},
                 "shorter than 16", id="short token"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "@token", "pools": []}]}},
                 "at least 1 item", id="no pools"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "@token", "pools": ["Web Pool"]}]}},
                 "should match pattern", id="not a pool name"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "@token", "pools": ["web"]},
                                                   {"name": "a", "token": "@token2", "pools": ["api"]}]}},
                 "names must be unique", id="duplicate names"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "@token", "pools": ["web"]},
                                                   {"name": "b", "token": "@token", "pools": ["api"]}]}},
                 "same secret", id="same token twice"),
    pytest.param({"alertmanager": {"credentials": [{"name": "a", "token": "@token", "pools": ["web"],
                                                    "scopes": ["x"]}]}}, "Extra inputs", id="unknown key"),
    pytest.param({"signals": {"keys": [{"id": "k", "secret": "@short", "pools": ["*"]}]}}, "shorter than 16 bytes",
                 id="short signing key"),
    pytest.param({"signals": {"keys": [{"id": "k", "secret": "@badwh", "pools": ["*"]}]}}, "base64",
                 id="whsec_ secret not base64"),
    pytest.param({"signals": {"keys": [{"id": "k", "secret": "@shortwh", "pools": ["*"]}]}}, "shorter than 16",
                 id="whsec_ secret too short once decoded"),
    pytest.param({"signals": {"keys": [{"id": "k", "secret": "@key", "pools": ["*"]},
                                       {"id": "k", "secret": "@key", "pools": ["*"]}]}}, "ids must be unique",
                 id="duplicate key ids"),
    pytest.param({"signals": {"default_ttl": "400d"}}, "longer than max_ttl", id="default ttl above max ttl"),
    pytest.param({"max_body_bytes": 10}, "greater than or equal to 1024", id="tiny body limit"),
])
def test_invalid_sections_name_the_problem(secrets: dict[str, Any], section: dict[str, Any], message: str) -> None:
    def resolve(node: Any) -> Any:     # "@name" → the secret file reference of that name
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return secrets[node[1:]] if isinstance(node, str) and node.startswith("@") else node

    with pytest.raises(ValidationError, match=message) as info:
        AlertsConfig.model_validate(resolve(section))
    assert TOKEN not in str(info.value)


def test_errors_in_yaml_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("max_alerts: 50\nalertmanager:\n  credentials:\n    - name: a\n      token: inline-secret\n"
                    "      pools: [web]\n")
    with pytest.raises(ConfigError) as info:
        yamlconf.validate(AlertsConfig, path)
    assert info.value.problems == [f"{path}:5:7: alertmanager.credentials.0.token: write credentials as "
                                   "{file: PATH} or {env: VARIABLE}, not inline"]


def _signals(secrets: dict[str, Any], **extra: Any) -> AlertsConfig:
    return AlertsConfig.model_validate({"signals": {"keys": [
        {"id": "new", "secret": secrets["key"], "pools": ["web"]},
        {"id": "old", "secret": secrets["token"], "pools": ["*"]}], **extra}})


def test_signal_url_for_signs_with_the_first_key_and_the_default_ttl(secrets: dict[str, Any]) -> None:
    cfg = _signals(secrets)
    u = signal_url_for(cfg.signals, "https://scaler.example:8750/", "web", "scale-out", 1000.0)
    parts = urlsplit(u)
    assert (parts.scheme, parts.netloc, parts.path) == \
        ("https", "scaler.example:8750", "/v1/pools/web/signal/scale-out")
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q["kid"] == "new" and int(q["exp"]) == 1000 + 30 * 86400
    assert verify_url(cfg.signals.keys, "web", "scale-out", q, 1001.0, cfg.signals.max_ttl).key_id == "new"
    other = signal_url_for(cfg.signals, "http://s", "api", "scale-out", 1000.0, ttl_s=60, key_id="old")
    assert "kid=old" in other and "exp=1060" in other


@pytest.mark.parametrize(("kwargs", "extra", "message"), [
    pytest.param({"pool": "api"}, {}, "may not signal pool 'api'", id="first key not allowed for the pool"),
    pytest.param({"key_id": "nope"}, {}, "no key with id 'nope'", id="unknown key"),
    pytest.param({"action": "scale-in"}, {}, "allow_scale_in is false", id="scale-in disabled"),
    pytest.param({"action": "restart"}, {}, "action must be one of", id="unknown action"),
    pytest.param({"ttl_s": 400 * 86400}, {}, "longer than alerts.signals.max_ttl", id="ttl above max_ttl"),
])
def test_signal_url_for_refuses_urls_that_would_be_refused(secrets: dict[str, Any], kwargs: dict[str, Any],
                                                           extra: dict[str, Any], message: str) -> None:
    cfg = _signals(secrets, **extra)
    args: dict[str, Any] = {"pool": "web", "action": "scale-out", **kwargs}
    with pytest.raises(ConfigError, match=message):
        signal_url_for(cfg.signals, "http://s", args.pop("pool"), args.pop("action"), 0.0, **args)


def test_signal_url_for_without_keys() -> None:
    with pytest.raises(ConfigError, match="no signing key configured"):
        signal_url_for(AlertsConfig().signals, "http://s", "web", "scale-out", 0.0)
