"""`scaler signal-url POOL ACTION`: prints a URL the service accepts once, for that pool only."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeRouter
from scaler.api import create_app
from scaler.cli import main
from scaler.config import load_config, load_policies
from scaler.service import REGISTRIES, Service
from scaler.store import Store
from tests.support.examples import copy_examples

SIGNALS = """
alerts:
  signals:
    keys:
      - {id: k1, secret: {file: signal-key}, pools: [web]}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    config = copy_examples(tmp_path)
    (tmp_path / "signal-key").write_text("a-signing-key-of-enough-length-0123456789\n")
    config.write_text(config.read_text() + SIGNALS)
    return config


async def test_prints_a_signed_url_that_the_service_accepts_once(config: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["signal-url", "web", "scale-out", "--ttl", "1h", "--base-url", "http://api", "-c", str(config)]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("http://api/v1/pools/web/signal/scale-out?") and "sig=" in url

    cfg = load_config(config, REGISTRIES)
    store = Store(f"sqlite:///{config.parent}/s.db")
    store.migrate()
    try:
        service = Service(cfg, load_policies(cfg), store=store, orchestrator=FakeOrchestrator(), router=FakeRouter(),
                          drainer=NoDrainer(), collectors={})
        app = create_app(service, time.time)
        path = url.removeprefix("http://api")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            first = await c.post(path)
            again = await c.post(path)
            other = await c.post(path.replace("/pools/web/", "/pools/api/"))
        assert first.status_code == 200 and first.json()["result"] != "duplicate", first.text
        assert again.json()["result"] == "duplicate"
        assert other.status_code in (401, 403, 404), other.text
    finally:
        store.close()


def test_refuses_what_the_service_would_refuse(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["signal-url", "web", "scale-in", "-c", str(config)]) == 1
    assert "allow_scale_in is false" in capsys.readouterr().err
    assert main(["signal-url", "nope", "scale-out", "-c", str(config)]) == 1
    assert "unknown pool 'nope'" in capsys.readouterr().err
