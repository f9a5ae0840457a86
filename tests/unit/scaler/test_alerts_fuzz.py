"""Property-based fuzzing of the receivers from their own OpenAPI document (schemathesis): for valid
and invalid inputs, with and without credentials, the server never answers 5xx, only answers with
status codes the document lists, and its answers match the documented schemas."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from scaler.alerts import signal_url
from scaler.store import Store
from tests.support.alerts import AM_BASIC, SIGNING_KEY, alerts_config, app_for
from tests.support.clock import ManualClock

# Examples per operation and mode; the whole module stays well under 30 s.
EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
NOW = time.time()


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    # Grafana without HMAC here, so that generated bodies get past authentication too.
    config = alerts_config(tmp, max_body_bytes=64 * 1024, max_alerts=50, grafana={"hmac": None},
                           signals={"allow_scale_in": True})
    store = Store(f"sqlite:///{tmp}/s.db")
    store.migrate()
    app = app_for(store, config, lambda: {"lb-a", "lb-b"}, CollectorRegistry(), ManualClock(NOW))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        store.close()


def signed_query(pool: str, action: str) -> dict[str, str]:
    u = signal_url("http://s", pool, action, SecretStr(SIGNING_KEY), 3600, NOW, key_id="k2")  # type: ignore[arg-type]
    return {k: v[0] for k, v in parse_qs(urlsplit(u).query).items()}


AUTH = {"Authorization": "Basic " + base64.b64encode(":".join(AM_BASIC).encode()).decode()}


def variants(path: str) -> list[dict[str, Any]]:
    """Fixed parts per run: none (mostly refused), then valid credentials so bodies are parsed."""
    if path.startswith("/v1/alerts/"):
        return [{}, {"headers": AUTH if "alertmanager" in path else
                     {"Authorization": "Bearer grafana-token-0123456789"}}]
    if path.endswith("/signal/{action}"):
        return [{}, {"path_parameters": {"pool": "lb-a", "action": "scale-out"},
                     "query": signed_query("lb-a", "scale-out")}]
    return [{}]


def cases() -> list[Any]:
    return [pytest.param(method, path, mode, i, id=f"{method} {path} {mode.value} {'auth' if i else 'anon'}")
            for method, path in [("POST", "/v1/alerts/alertmanager"), ("POST", "/v1/alerts/grafana"),
                                 ("POST", "/v1/pools/{pool}/signal/{action}"), ("GET", "/v1/pools/{pool}/alarms")]
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for i in range(len(variants(path)))]


@pytest.mark.parametrize(("method", "path", "mode", "variant"), cases())
def test_fuzzed_requests_never_get_a_server_error(schema: Any, method: str, path: str, mode: GenerationMode,
                                                   variant: int) -> None:
    operation = schema[path][method]
    fixed = variants(path)[variant]
    statuses: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS)
        statuses.add(response.status_code)

    run()
    assert statuses and max(statuses) < 500
    if variant and mode is GenerationMode.POSITIVE:
        # With credentials, valid bodies must get through: some answers are 2xx.
        assert min(statuses) < 300, statuses
