"""Refusals of the receivers: each bad request gets its documented status and changes nothing
(no signal, no alarm instance, no replay key)."""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from scaler.alerts import alarm_state, signal_url
from scaler.alerts.signing import grafana_signature, standard_webhook_signature
from tests.support.alerts import (
    AM_BASIC,
    AM_BEARER,
    GRAFANA_HMAC,
    GRAFANA_TOKEN,
    OLD_SIGNING_KEY,
    SIGNING_KEY,
    Harness,
    alerts_config,
    delivery,
    harness,
    wire_body,
)

KNOWN = {"lb-a", "lb-b", "lb-c"}
AM = "/v1/alerts/alertmanager"
BASIC = "Basic " + base64.b64encode(f"{AM_BASIC[0]}:{AM_BASIC[1]}".encode()).decode()
JSON = {"Content-Type": "application/json"}
NOW = 1_795_279_800.0


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    config = alerts_config(tmp_path, max_body_bytes=4096, max_alerts=2)
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        h.clock.now = NOW
        yield h


def nothing_stored(h: Harness) -> None:
    assert h.signals() == [] and h.instances() == []
    with h.store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM signal_seen")).scalar() == 0


def alerts_body(n: int, pool: str = "lb-a") -> bytes:
    body = copy.deepcopy(delivery("01").body)
    alert = body["alerts"][0]
    body["alerts"] = [{**alert, "fingerprint": f"{i:016x}", "labels": {**alert["labels"], "pool": pool}}
                      for i in range(n)]
    return wire_body(body)


def with_field(path: tuple[Any, ...], value: Any) -> bytes:
    body = copy.deepcopy(delivery("01").body)
    node = body
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return wire_body(body)


DELETE = object()


def chunks(total: int) -> Callable[[], AsyncIterator[bytes]]:
    async def stream() -> AsyncIterator[bytes]:   # no Content-Length: the limit holds while reading
        for _ in range(total // 1024):
            yield b" " * 1024

    return stream


@pytest.mark.parametrize(("headers", "body", "status", "metric"), [
    pytest.param({}, delivery("01").wire, 401, ("unauthorized", "missing"), id="no credentials"),
    pytest.param({"Authorization": "Bearer wrong-token-0123456789"}, delivery("01").wire, 401,
                 ("unauthorized", "invalid"), id="wrong bearer token"),
    pytest.param({"Authorization": "Basic " + base64.b64encode(b"alertmanager:wrong").decode()},
                 delivery("01").wire, 401, ("unauthorized", "invalid"), id="wrong basic password"),
    pytest.param({"Authorization": "Basic %%%"}, delivery("01").wire, 401, ("unauthorized", "invalid"),
                 id="malformed basic credentials"),
    pytest.param({"Authorization": f"Digest {AM_BEARER}"}, delivery("01").wire, 401, ("unauthorized", "invalid"),
                 id="unsupported scheme"),
    pytest.param({"Authorization": f"Bearer {AM_BEARER}"}, delivery("01").wire, 403,
                 ("forbidden", "pool_not_allowed"), id="valid token of another pool"),
    pytest.param({}, b"{not json", 401, ("unauthorized", "missing"), id="credentials are checked before parsing"),
    pytest.param({"Authorization": BASIC}, b"{not json", 422, ("invalid", None), id="malformed JSON"),
    pytest.param({"Authorization": BASIC}, b"[]", 422, ("invalid", None), id="JSON but not an object"),
    pytest.param({"Authorization": BASIC}, with_field(("version",), "3"), 422, ("invalid", None),
                 id="payload version 3"),
    pytest.param({"Authorization": BASIC}, with_field(("alerts", 0, "status"), "pending"), 422, ("invalid", None),
                 id="unknown alert status"),
    pytest.param({"Authorization": BASIC}, with_field(("alerts", 0, "startsAt"), "2026-13-01T00:00:00Z"), 422,
                 ("invalid", None), id="startsAt month 13"),
    pytest.param({"Authorization": BASIC}, with_field(("alerts", 0, "fingerprint"), DELETE), 422, ("invalid", None),
                 id="alert without fingerprint"),
    pytest.param({"Authorization": BASIC}, with_field(("alerts", 0, "labels"), {"pool": 1}), 422, ("invalid", None),
                 id="label value not a string"),
    pytest.param({"Authorization": BASIC}, alerts_body(3), 413, ("too_many_alerts", None),
                 id="more alerts than max_alerts"),
    pytest.param({"Authorization": BASIC}, b" " * 5000, 413, ("too_large", None),
                 id="body above the limit (Content-Length)"),
    pytest.param({"Authorization": BASIC}, chunks(8192), 413, ("too_large", None),
                 id="body above the limit (chunked, no Content-Length)"),
])
async def test_refused_alertmanager_deliveries_change_nothing(h: Harness, headers: dict[str, str], body: Any,
                                                               status: int, metric: tuple[str, str | None]) -> None:
    content = body() if callable(body) else body
    response = await h.client.post(AM, content=content, headers={**JSON, **headers})
    assert response.status_code == status, response.text
    assert "detail" in response.json()
    nothing_stored(h)
    result, reason = metric
    assert h.metric("scaler_alert_deliveries_total", receiver="alertmanager", result=result) == 1
    if reason is not None:
        assert h.metric("scaler_alert_auth_failures_total", receiver="alertmanager", reason=reason) == 1
    if status == 401:
        assert "Bearer" in response.headers["www-authenticate"]


async def test_a_group_naming_one_forbidden_pool_stores_nothing(h: Harness) -> None:
    body = copy.deepcopy(delivery("02").body)           # the lb-b token's own group …
    body["alerts"][1]["labels"]["pool"] = "lb-a"        # … with one alert for a pool it may not signal
    response = await h.client.post(AM, content=wire_body(body), headers={**JSON, **delivery("02").headers})
    assert response.status_code == 403
    assert "'lb-a'" in response.json()["detail"]
    nothing_stored(h)


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda a: a.pop("fingerprint"), id="an alert without fingerprint"),
    pytest.param(lambda a: a.update(startsAt="2026-13-01T00:00:00Z"), id="startsAt month 13"),
    pytest.param(lambda a: a.update(status="pending"), id="unknown alert status"),
    pytest.param(lambda a: a["labels"].update(severity=1), id="a label value that is not a string"),
    pytest.param(lambda a: a.update(generatorURL=["x"]), id="a generatorURL that is not a string"),
    pytest.param(None, id="payload version 3"),
])
async def test_a_pool_outside_the_scope_is_403_before_the_payload_is_validated(h: Harness, spoil: Any) -> None:
    # The lb-b token's own group, with one alert for lb-a (which it may not signal) and something
    # the payload schema refuses: 403 naming the pool, not a 422 describing the payload.
    body = copy.deepcopy(delivery("02").body)
    body["alerts"][1]["labels"]["pool"] = "lb-a"
    if spoil is None:
        body["version"] = "3"
    else:
        spoil(body["alerts"][0])
    response = await h.client.post(AM, content=wire_body(body), headers={**JSON, **delivery("02").headers})
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == "alertmanager credential 'am-trunc' may not send alerts for pool(s) 'lb-a'"
    nothing_stored(h)
    assert h.metric("scaler_alert_deliveries_total", receiver="alertmanager", result="forbidden") == 1
    assert h.metric("scaler_alert_auth_failures_total", receiver="alertmanager", reason="pool_not_allowed") == 1


async def test_a_malformed_delivery_for_its_own_pool_is_still_422(h: Harness) -> None:
    body = copy.deepcopy(delivery("02").body)          # lb-b only: the token may signal it
    body["alerts"][0].pop("fingerprint")
    response = await h.client.post(AM, content=wire_body(body), headers={**JSON, **delivery("02").headers})
    assert response.status_code == 422, response.text
    nothing_stored(h)


async def test_an_unknown_pool_in_the_scope_is_202(h: Harness) -> None:
    # The basic credential may signal every pool ("*"): a pool this scaler does not manage is
    # recorded and answered 202, never a 4xx (Alertmanager would re-send it forever).
    body = copy.deepcopy(delivery("01").body)
    body["alerts"][0]["labels"]["pool"] = "lb-z"
    response = await h.client.post(AM, content=wire_body(body), headers={**JSON, "Authorization": BASIC})
    assert response.status_code == 202, response.text
    assert response.json()["result"] == "unknown_pool"


async def test_grafana_checks_the_pools_before_the_payload_too(tmp_path: Path) -> None:
    config = alerts_config(tmp_path, grafana={"hmac": {"secret": {"file": str(tmp_path / "hmac")}, "pools": ["lb-b"],
                                                       "timestamp_header": TS_HEADER}})
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        h.clock.now = NOW
        doc = copy.deepcopy(delivery("04").body)               # lb-a, which the HMAC key may not sign for
        doc["alerts"][0].pop("fingerprint")
        body = wire_body(doc)
        response = await h.client.post(GRAFANA, content=body, headers=grafana_headers(body))
        assert response.status_code == 403, response.text
        assert "'lb-a'" in response.json()["detail"]
        nothing_stored(h)


async def test_receiver_without_credentials_accepts_nothing(tmp_path: Path) -> None:
    config = alerts_config(tmp_path, alertmanager={"credentials": []})
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        response = await h.client.post(AM, content=delivery("01").wire, headers=delivery("01").headers)
        assert response.status_code == 401
        nothing_stored(h)


async def test_slow_body_gets_408(tmp_path: Path) -> None:
    config = alerts_config(tmp_path, read_timeout="0.2s")

    async def trickle() -> AsyncIterator[bytes]:
        yield b"{"
        await asyncio.sleep(2)
        yield b"}"

    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        t0 = time.monotonic()
        response = await h.client.post(AM, content=trickle(), headers={**JSON, "Authorization": BASIC})
        assert response.status_code == 408
        assert time.monotonic() - t0 < 1.5
        nothing_stored(h)


# --- signed URLs -----------------------------------------------------------------------------------


def url(pool: str = "lb-a", action: str = "scale-out", *, key: str = SIGNING_KEY, kid: str = "k2",
        ttl: float = 3600, now: float = NOW) -> str:
    full = signal_url("http://scaler", pool, action, SecretStr(key), ttl, now, key_id=kid)  # type: ignore[arg-type]
    return full.removeprefix("http://scaler")


def tamper(u: str, old: str, new: str) -> str:
    assert old in u
    return u.replace(old, new, 1)


def flip_sig(u: str) -> str:
    head, sig = u.rsplit("sig=", 1)
    return head + "sig=" + ("A" if sig[0] != "A" else "B") + sig[1:]


@pytest.mark.parametrize(("path", "status", "reason"), [
    pytest.param(url(ttl=60, now=NOW - 120), 401, "expired", id="expired"),
    pytest.param(flip_sig(url()), 401, "bad_signature", id="tampered signature"),
    pytest.param(tamper(url(), "exp=", "exp=1"), 401, "bad_signature", id="extended expiry"),
    pytest.param(tamper(url(), "/lb-a/", "/lb-b/"), 401, "bad_signature", id="pointed at another pool"),
    pytest.param(tamper(url(), "/scale-out?", "/scale-in?"), 401, "bad_signature", id="turned into the other action"),
    pytest.param(url(kid="k9"), 401, "bad_signature", id="unknown (revoked) key id"),
    pytest.param(url(key="some-other-secret-0123456789"), 401, "bad_signature", id="signed with another secret"),
    pytest.param(url(ttl=400 * 86400), 401, "expired", id="expiry beyond max_ttl"),
    pytest.param(url(pool="lb-b", key=OLD_SIGNING_KEY, kid="k1"), 403, "pool_not_allowed",
                 id="valid signature, key not allowed for the pool"),
    pytest.param(url(action="scale-in"), 403, "scale_in_disabled", id="scale-in while disabled"),
    pytest.param("/v1/pools/lb-a/signal/scale-out", 401, "missing", id="no signature at all"),
    pytest.param("/v1/pools/lb-a/signal/scale-out?kid=k2&exp=x&sig=y", 401, "bad_signature", id="garbage"),
])
async def test_refused_signed_urls_change_nothing(h: Harness, path: str, status: int, reason: str) -> None:
    response = await h.client.post(path)
    assert response.status_code == status, response.text
    nothing_stored(h)
    assert h.metric("scaler_alert_auth_failures_total", receiver="signal", reason=reason) == 1


async def test_signed_url_fires_the_signal_alarm_once_per_replay_window(h: Harness) -> None:
    u = url(ttl=86400)
    first = await h.client.post(u)
    assert first.status_code == 200 and first.json()["result"] == "accepted"
    state = alarm_state(h.store, "lb-a", "signal:scale-out", h.clock.now)
    assert (state.firing, state.since, state.source) == (True, NOW, "signal/k2")

    h.clock.now = NOW + 60                              # replayed inside the window: nothing changes
    again = await h.client.post(u, json={"reason": "again"})
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert len(h.signals()) == 1
    assert alarm_state(h.store, "lb-a", "signal:scale-out", h.clock.now) == state

    h.clock.now = NOW + 299.9                           # hold (5m) nearly over, still firing
    assert alarm_state(h.store, "lb-a", "signal:scale-out", h.clock.now).firing is True
    h.clock.now = NOW + 300                             # hold over: the alarm stops firing
    ended = alarm_state(h.store, "lb-a", "signal:scale-out", h.clock.now)
    assert (ended.firing, ended.since) == (False, NOW + 300)

    h.clock.now = NOW + 301                             # outside the window: a new signal
    later = await h.client.post(u, json={"reason": "Aodh: cpu_util > 80"})
    assert later.json()["result"] == "accepted"
    assert [s.summary for s in h.signals()] == ["url signal", "Aodh: cpu_util > 80"]
    assert alarm_state(h.store, "lb-a", "signal:scale-out", h.clock.now).firing is True


async def test_replay_window_survives_a_restart(tmp_path: Path) -> None:
    config = alerts_config(tmp_path)
    u = url()
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        h.clock.now = NOW
        assert (await h.client.post(u)).json()["result"] == "accepted"
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        h.clock.now = NOW + 10
        assert (await h.client.post(u)).json()["result"] == "duplicate"
        assert len(h.signals()) == 1


async def test_rotation_old_key_still_verifies(h: Harness) -> None:
    response = await h.client.post(url(key=OLD_SIGNING_KEY, kid="k1"))
    assert response.status_code == 200 and response.json()["key"] == "k1"


async def test_unknown_pool_is_recorded_and_answered_202(h: Harness) -> None:
    response = await h.client.post(url(pool="lb-z"))
    assert response.status_code == 202 and response.json()["result"] == "unknown_pool"
    assert [s.effect for s in h.signals()] == ["unknown_pool"] and h.instances() == []


async def test_scale_in_signal_when_enabled_is_its_own_alarm(tmp_path: Path) -> None:
    config = alerts_config(tmp_path, signals={"allow_scale_in": True})
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        h.clock.now = NOW
        response = await h.client.post(url(action="scale-in"))
        assert response.status_code == 200 and response.json()["alarm"] == "signal:scale-in"
        assert alarm_state(h.store, "lb-a", "signal:scale-in", NOW).firing is True
        assert alarm_state(h.store, "lb-a", "signal:scale-out", NOW).firing is None


# --- Standard Webhooks -----------------------------------------------------------------------------


def swh(body: bytes, *, msg_id: str = "msg_1", ts: float = NOW, key: str = SIGNING_KEY,
        extra_sigs: str = "") -> dict[str, str]:
    sig = standard_webhook_signature(SecretStr(key), msg_id, int(ts), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(ts)),
            "webhook-signature": (extra_sigs + " " + sig).strip(), **JSON}


SW_BODY = b'{"pool":"lb-a","action":"scale-out","reason":"queue depth"}'
SW_PATH = "/v1/pools/lb-a/signal/scale-out"


@pytest.mark.parametrize(("path", "body", "headers", "status", "reason"), [
    pytest.param(SW_PATH, SW_BODY, swh(SW_BODY, ts=NOW - 301), 401, "expired", id="timestamp outside the window"),
    pytest.param(SW_PATH, SW_BODY, swh(SW_BODY, ts=NOW + 301), 401, "expired", id="timestamp in the future"),
    pytest.param(SW_PATH, SW_BODY.replace(b"queue", b"QUEUE"), swh(SW_BODY), 401, "bad_signature",
                 id="tampered body"),
    pytest.param(SW_PATH, SW_BODY, swh(SW_BODY, key="not-the-key-0123456789"), 401, "bad_signature",
                 id="wrong secret"),
    pytest.param(SW_PATH, SW_BODY, {k: v for k, v in swh(SW_BODY).items() if k != "webhook-id"}, 401,
                 "missing", id="missing webhook-id"),
    pytest.param("/v1/pools/lb-b/signal/scale-out", SW_BODY, swh(SW_BODY), 403, "wrong_target",
                 id="signed body names another pool"),
    pytest.param("/v1/pools/lb-b/signal/scale-out", SW_BODY, swh(SW_BODY, key=OLD_SIGNING_KEY), 403,
                 "pool_not_allowed", id="key not allowed for the pool"),
])
async def test_refused_standard_webhooks_change_nothing(h: Harness, path: str, body: bytes,
                                                         headers: dict[str, str], status: int, reason: str) -> None:
    response = await h.client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    nothing_stored(h)
    assert h.metric("scaler_alert_auth_failures_total", receiver="signal", reason=reason) == 1


async def test_standard_webhook_accepted_once_per_id(h: Harness) -> None:
    # A second, stale signature from a rotated-out secret travels along: one match is enough.
    headers = swh(SW_BODY, extra_sigs="v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    first = await h.client.post(SW_PATH, content=SW_BODY, headers=headers)
    assert first.status_code == 200 and first.json()["scheme"] == "standard-webhooks"
    again = await h.client.post(SW_PATH, content=SW_BODY, headers=headers)
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert [s.summary for s in h.signals()] == ["queue depth"]
    fresh = swh(SW_BODY, msg_id="msg_2")
    assert (await h.client.post(SW_PATH, content=SW_BODY, headers=fresh)).json()["result"] == "accepted"


async def test_standard_webhooks_whsec_secret(tmp_path: Path) -> None:
    raw = bytes(range(32))
    (tmp_path / "wh").write_text("whsec_" + base64.b64encode(raw).decode())
    config = alerts_config(tmp_path, signals={"keys": [{"id": "wh", "secret": {"file": str(tmp_path / "wh")},
                                                       "pools": ["lb-a"]}]})
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        h.clock.now = NOW
        sig = standard_webhook_signature(raw, "m1", int(NOW), SW_BODY)
        headers = {"webhook-id": "m1", "webhook-timestamp": str(int(NOW)), "webhook-signature": sig, **JSON}
        response = await h.client.post(SW_PATH, content=SW_BODY, headers=headers)
        assert response.status_code == 200, response.text


# --- Grafana ---------------------------------------------------------------------------------------

GRAFANA = "/v1/alerts/grafana"
TS_HEADER = "X-Grafana-Alerting-Signature-Timestamp"


def grafana_body() -> bytes:
    body = copy.deepcopy(delivery("04").body)
    body.update(version="1", orgId=1, state="alerting", title="[FIRING:1] LBHighLoad", message="…")
    body["alerts"][0].update(values={"A": 95}, valueString="[ var='A' value=95 ]")
    return wire_body(body)


def grafana_headers(body: bytes, *, ts: float = NOW, secret: str = GRAFANA_HMAC,
                    token: str = GRAFANA_TOKEN) -> dict[str, str]:
    stamp = str(int(ts))
    return {**JSON, "Authorization": f"Bearer {token}", TS_HEADER: stamp,
            "X-Grafana-Alerting-Signature": grafana_signature(SecretStr(secret), body, stamp)}


async def test_grafana_signed_delivery_is_accepted(h: Harness) -> None:
    body = grafana_body()
    response = await h.client.post(GRAFANA, content=body, headers=grafana_headers(body))
    assert response.status_code == 200, response.text
    assert alarm_state(h.store, "lb-a", "LBHighLoad", NOW).source == "grafana/grafana"


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


@pytest.mark.parametrize(("make", "reason"), [
    pytest.param(lambda b: grafana_headers(b, secret="wrong-secret-0123456789"), "bad_signature", id="wrong HMAC"),
    pytest.param(lambda b: grafana_headers(b + b" "), "bad_signature", id="body changed after signing"),
    pytest.param(lambda b: grafana_headers(b, ts=NOW - 600), "expired", id="old timestamp"),
    pytest.param(lambda b: _without(grafana_headers(b), "X-Grafana-Alerting-Signature"), "missing",
                 id="no signature"),
    pytest.param(lambda b: _without(grafana_headers(b), TS_HEADER), "missing", id="no timestamp"),
    pytest.param(lambda b: grafana_headers(b, token="wrong-token-0123456789"), "invalid",
                 id="valid signature, wrong token"),
])
async def test_refused_grafana_deliveries_change_nothing(h: Harness, make: Any, reason: str) -> None:
    body = grafana_body()
    response = await h.client.post(GRAFANA, content=body, headers=make(body))
    assert response.status_code == 401
    nothing_stored(h)
    assert h.metric("scaler_alert_auth_failures_total", receiver="grafana", reason=reason) == 1


async def test_openapi_documents_the_receivers(h: Harness) -> None:
    doc = (await h.client.get("/openapi.json")).json()
    am = doc["paths"][AM]["post"]
    assert {"200", "202", "401", "403", "408", "413", "422", "503"} <= set(am["responses"])
    assert am["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AlertmanagerPayload")
    assert {"bearer", "basic"} <= set(doc["components"]["securitySchemes"])
    signal = doc["paths"]["/v1/pools/{pool}/signal/{action}"]["post"]
    assert {p["name"] for p in signal["parameters"]} >= {"pool", "action", "kid", "exp", "sig"}
