"""Shared by the alert receiver tests: the captured Alertmanager deliveries as wire bytes, a config
with secrets in files, and an app with the receivers' router on a real SQLite store."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlmodel import select

from scaler.alerts import AlertsConfig, alerts_router
from scaler.alerts.store import AlarmInstance, AlarmSignal
from scaler.store import Store
from tests.support.clock import ManualClock

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"

# The credentials the captured Alertmanager used (see the fixtures' README).
AM_BASIC = ("alertmanager", "am-basic-pass")
AM_BEARER = "s3cr3t-bearer-token"
# The receivers `failing` and `bad400` sent no credentials; the replay gives them this token.
FAIL_BEARER = "fail-receiver-token-0123"
SIGNING_KEY = "signal-key-0123456789abcdef"
OLD_SIGNING_KEY = "old-signal-key-0123456789"
# Where a harness's clock starts unless a test passes its own (the test moves `harness.clock.now`).
HARNESS_START = 1_795_279_800.0
GRAFANA_HMAC = "grafana-hmac-secret-0123"
GRAFANA_TOKEN = "grafana-token-0123456789"


def wire_body(body: Any) -> bytes:
    """The bytes Alertmanager sends for `body` (Go's encoding/json: compact, HTML-escaped, newline)."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return (text + "\n").encode()


@dataclass(frozen=True)
class Delivery:
    name: str
    received: float
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def wire(self) -> bytes:
        return wire_body(self.body)


def delivery(name: str) -> Delivery:
    """A captured delivery by file name prefix ("01", "03b", ...)."""
    (path,) = [p for p in FIXTURES.glob(f"{name}_*.json")]
    raw = json.loads(path.read_text())
    headers = {k: v for k, v in raw["headers"].items() if k in ("Authorization", "Content-Type", "User-Agent")}
    return Delivery(path.stem, raw["received_epoch"], headers, raw["body"])


def secret_files(directory: Path, **secrets: str) -> dict[str, dict[str, str]]:
    out = {}
    for name, value in secrets.items():
        f = directory / name
        f.write_text(value + "\n")
        f.chmod(0o600)
        out[name] = {"file": str(f)}
    return out


def alerts_config(directory: Path, **overrides: Any) -> AlertsConfig:
    """The receivers as the capture's Alertmanager expects them, plus signing keys and Grafana."""
    s = secret_files(directory, basic=AM_BASIC[1], bearer=AM_BEARER, fail=FAIL_BEARER, key=SIGNING_KEY,
                     old_key=OLD_SIGNING_KEY, hmac=GRAFANA_HMAC, grafana=GRAFANA_TOKEN)
    doc: dict[str, Any] = {
        "alertmanager": {"credentials": [
            {"name": "am-basic", "username": AM_BASIC[0], "password": s["basic"], "pools": ["*"]},
            {"name": "am-trunc", "token": s["bearer"], "pools": ["lb-b"]},
            {"name": "am-fail", "token": s["fail"], "pools": ["lb-fail", "lb-4xx"]},
        ]},
        "grafana": {"credentials": [{"name": "grafana", "token": s["grafana"], "pools": ["*"]}],
                    "hmac": {"secret": s["hmac"], "pools": ["*"],
                             "timestamp_header": "X-Grafana-Alerting-Signature-Timestamp"}},
        "signals": {"keys": [{"id": "k2", "secret": s["key"], "pools": ["*"]},
                             {"id": "k1", "secret": s["old_key"], "pools": ["lb-a"]}]},
    }
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return AlertsConfig.model_validate(doc)


@dataclass
class Harness:
    store: Store
    client: httpx.AsyncClient
    clock: ManualClock
    registry: CollectorRegistry
    pools: set[str] = field(default_factory=set)

    def signals(self) -> list[AlarmSignal]:
        with self.store.session() as s:
            return list(s.exec(select(AlarmSignal).order_by(AlarmSignal.id)))  # type: ignore[arg-type]

    def instances(self) -> list[AlarmInstance]:
        with self.store.session() as s:
            return list(s.exec(select(AlarmInstance)))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def app_for(store: Store, config: AlertsConfig | Callable[[], AlertsConfig], pools: Callable[[], Collection[str]],
            registry: CollectorRegistry, clock: Callable[[], float]) -> FastAPI:
    app = FastAPI(title="scaler alerts (test)")
    app.include_router(alerts_router(store, config, pools, registry, clock))
    return app


@contextlib.asynccontextmanager
async def harness(db: Path, config: AlertsConfig, pools: Collection[str], *, clock: ManualClock | None = None,
                  migrate: bool = True) -> AsyncIterator[Harness]:
    store = Store(f"sqlite:///{db}")
    try:
        if migrate:
            store.migrate()
        clock = clock or ManualClock(HARNESS_START)
        registry = CollectorRegistry()
        known = set(pools)
        app = app_for(store, config, lambda: known, registry, clock)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://scaler") as client:
            yield Harness(store, client, clock, registry, known)
    finally:
        store.close()
