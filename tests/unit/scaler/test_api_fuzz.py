"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis), as the alert
receivers are fuzzed in test_alerts_fuzz.py: every operation but the receivers, with valid and
invalid inputs, without a credential, with the operate credential, and with it on a known pool —
the server never answers 5xx and its answers match the documented schemas."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from scaler.api import create_app
from scaler.store import Store
from tests.support.api import NOW, OPS_TOKEN, View, api_config, bearer

EXAMPLES = 15
# Not status_code_conformance: the read routes answer 404 for an unknown pool without listing it.
CHECKS = [not_a_server_error, response_schema_conformance]
VARIANTS: list[dict[str, Any]] = [{}, {"headers": bearer(OPS_TOKEN)},
                                  {"headers": bearer(OPS_TOKEN), "path_parameters": {"pool": "web"}}]


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp: Path = tmp_path_factory.mktemp("api-fuzz")
    store = Store(f"sqlite:///{tmp}/s.db")
    store.migrate()
    store.ensure_pool("web", "198.19.0.1", NOW)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(View(store), lambda: NOW,
                                                                          access=api_config(tmp)))
    finally:
        store.close()


def operations() -> list[tuple[str, str, bool, bool]]:
    """The API's own operations (the receivers have their own fuzz test), read from a throwaway app:
    (method, path, whether it needs a credential, whether it takes input besides the pool)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/s.db")
        store.migrate()
        try:
            doc = create_app(View(store), access=api_config(Path(tmp))).openapi()
        finally:
            store.close()
    return sorted((method.upper(), path, "security" in op,
                   "requestBody" in op or any(p["name"] != "pool" for p in op.get("parameters", [])))
                  for path, ops in doc["paths"].items() for method, op in ops.items()
                  if "alerts" not in op.get("tags", []))


def cases() -> list[Any]:
    # Negative cases need something to get wrong: a parameter or a body besides the pool (any string).
    return [pytest.param(method, path, secured, mode, i, id=f"{method} {path} {mode.value} {i}")
            for method, path, secured, has_input in operations()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for i in range(len(VARIANTS))
            if not (i == 2 and "{pool}" not in path)
            and (mode is GenerationMode.POSITIVE or has_input)]


@pytest.mark.parametrize(("method", "path", "secured", "mode", "variant"), cases())
def test_fuzzed_requests_never_get_a_server_error(schema: Any, method: str, path: str, secured: bool,
                                                   mode: GenerationMode, variant: int) -> None:
    operation = schema[path][method]
    statuses: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=mode, **VARIANTS[variant]))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS)
        statuses.add(response.status_code)

    run()
    assert statuses and max(statuses) < 500
    if variant == 0 and secured:
        assert min(statuses) >= 400 and 401 in statuses, statuses  # without a credential nothing succeeds
    if variant == 2 and mode is GenerationMode.POSITIVE:
        assert not statuses & {401, 403}, statuses  # the operate credential is enough for everything
