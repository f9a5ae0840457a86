"""The web console in a real browser (headless Chromium from Debian, through selenium) against a
running `scaler run` with the fake orchestrator and router and access control on: without a
credential the pages are refused (the login form, 401 for the fragments), after logging in with a
read token every page loads with no console error and no failed request, the DOM holds the pools,
members, states and the last decision's reason as the JSON API tells them, and the pool page
updates itself without reloading. A full-page screenshot of each page is written to the test's
directory (its path is printed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scaler.lab.demo import ServiceProcess, free_port
from tests.support import browser as chromium_support
from tests.support.browser import Browser, chromium
from tests.support.wait import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = """\
pools:
  web:
    min: 2
    max: 4
    inputs:
      sessions: {source: haproxy, metric: current_sessions}
    rules:
      - {name: busy, input: sessions, above: 20, for: 2s, adjust: +1}
      - {name: idle, input: sessions, below: 5, for: 10s, adjust: -1}
    cooldown: {scale_out: 0s, scale_in: 0s}
"""

READ_TOKEN = "console-read-token-0123456789"
CONFIG = """\
store: {{url: "sqlite:///scaler.db"}}
api:
  host: 127.0.0.1
  port: {port}
  credentials: [{{name: console, token: {{file: read-token}}, scopes: [read]}}]
policy_dir: policies
intervals: {{collect: 0.5s, evaluate: 0.5s, reconcile: 0.3s, policy_watch: 0s}}
orchestrator: {{driver: fake, options: {{boot_probes: 0}}}}
router: {{driver: fake}}
collectors:
  haproxy:
    driver: haproxy
    # No traffic leaves the machine: every read fails fast with "connect" (no data).
    target: {{url: "http://localhost/metrics", uds: "{tmp}/none/{{instance}}.sock"}}
pools:
  web: {{vip: 198.19.0.1, boot_timeout: 10s, drain_timeout: 1s}}
"""


@pytest.fixture
def browser() -> Iterator[Browser]:
    why = chromium_support.unavailable()
    if why is not None:
        pytest.skip(why)
    with chromium() as b:
        yield b


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "web.yaml").write_text(POLICY)
    (tmp_path / "read-token").write_text(READ_TOKEN + "\n")
    port = free_port()
    config = tmp_path / "scaler.yaml"
    config.write_text(CONFIG.format(port=port, tmp=tmp_path))
    svc = ServiceProcess(config, port)
    try:
        await svc.start()
        yield svc
    finally:
        assert await svc.stop() == 0, svc.tail()


async def api(svc: ServiceProcess, path: str) -> Any:
    async with httpx.AsyncClient(base_url=svc.base, timeout=5,
                                 headers={"Authorization": f"Bearer {READ_TOKEN}"}) as c:
        r = await c.get(path)
        r.raise_for_status()
        return r.json()


async def decision(svc: ServiceProcess, decision_id: str) -> Any:
    """The pool's decision with this id, as GET /v1/pools/web/decisions has it."""
    found = [d for d in await api(svc, "/v1/pools/web/decisions?limit=1000") if str(d["id"]) == decision_id]
    assert found, f"decision {decision_id!r} is not among the pool's decisions"
    return found[0]


def texts(b: Browser, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in b.driver.find_elements(By.CSS_SELECTOR, css)]


def attrs(b: Browser, css: str, name: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.get_attribute(name) for e in b.driver.find_elements(By.CSS_SELECTOR, css)]


async def test_console_in_chromium(service: ServiceProcess, browser: Browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    async def settled() -> Any:
        pool = await api(service, "/v1/pools/web")
        ready = (pool["size"] == 2 and pool["operation"] is None and pool["last_decision"]
                 and pool["last_decision"]["outcome"] == "hold"
                 and all(m["state"] == "in_service" for m in pool["members"]))
        return pool if ready else None

    pool = await eventually(settled, timeout_s=20, interval_s=0.2, what="web at size 2, holding",
                            detail=lambda: service.tail(40))
    shots = tmp_path / "screenshots"
    d = browser.driver

    # No credential: refused. The page sends the browser to the login form; the fragment is 401.
    async with httpx.AsyncClient(base_url=service.base, timeout=5) as c:
        assert (await c.get("/console/pools/web/live")).status_code == 401
        assert (await c.get("/console/")).status_code == 303
    await asyncio.to_thread(d.get, service.base + "/console/pools/web")
    assert "/console/login?next=/console/pools/web" in d.current_url
    assert d.find_elements(By.CSS_SELECTOR, "form#login-form input[name=token]")
    assert not d.find_elements(By.CSS_SELECTOR, "[data-pool], [data-instance]")
    browser.screenshot(shots / "console-login.png")

    # A wrong token is refused on the form; the read token lets the browser in.
    d.find_element(By.ID, "token").send_keys("not-the-token")
    await asyncio.to_thread(d.find_element(By.ID, "login-form").submit)
    assert "invalid credential" in d.find_element(By.ID, "login-error").text
    browser.check()
    assert browser.failed == ["401 " + service.base + "/console/login"]
    browser.failed.clear()
    browser.console.clear()         # Chromium logs the 401 of the refused form as a console error
    d.find_element(By.ID, "token").send_keys(READ_TOKEN)
    await asyncio.to_thread(d.find_element(By.ID, "login-form").submit)
    assert d.current_url == service.base + "/console/pools/web"
    cookie = d.get_cookie("scaler_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["path"] == "/console"
    assert d.execute_script("return document.cookie") == ""      # not readable by scripts

    # The overview.
    await asyncio.to_thread(d.get, service.base + "/console/")
    assert attrs(browser, "tr.pool", "data-pool") == ["web"]
    assert attrs(browser, "tr.pool [data-size]", "data-size") == ["2"]
    assert texts(browser, "tr.pool [data-state]") == ["2 in_service"]
    # The last decision shown is the newest there was when the page was drawn, with its reason.
    oldest = pool["last_decision"]["id"]
    shown = await decision(service, attrs(browser, "tr.pool [data-last-decision]", "data-last-decision")[0])
    assert shown["id"] >= oldest and shown["reason"].startswith("missing data for input sessions")
    assert shown["reason"] in texts(browser, "tr.pool [data-last-decision]")[0]
    browser.screenshot(shots / "console-overview.png")
    browser.check()
    assert browser.console == [] and browser.failed == []

    # The pool page, reached by its link.
    await asyncio.to_thread(d.find_element(By.LINK_TEXT, "web").click)
    assert d.current_url == service.base + "/console/pools/web"
    members = {m["instance"]: m["state"] for m in pool["members"]}
    rows = d.find_elements(By.CSS_SELECTOR, "tr.member")
    assert {r.get_attribute("data-instance"): r.get_attribute("data-state") for r in rows} == members
    assert {r.find_element(By.CSS_SELECTOR, ".state").text for r in rows} == {"in_service"}
    shown = await decision(service, attrs(browser, "[data-last-decision]", "data-last-decision")[0])
    reason = shown["reason"]
    assert shown["id"] >= oldest and reason in texts(browser, "[data-last-decision]")[0]
    panels = attrs(browser, "svg.chart g.panel", "data-panel")
    assert panels[1:] == ["input sessions"]
    assert {"busy: > 20 → +1", "idle: < 5 → -1"} <= set(texts(browser, "svg.chart text.threshold-label"))
    assert d.find_elements(By.CSS_SELECTOR, "svg.chart polygon.marker.out")       # the scale-out 0 → 2
    first = d.find_element(By.CSS_SELECTOR, "li.decision")
    assert first.get_attribute("data-decision") == str(shown["id"]) and reason in first.text
    why = first.find_element(By.CSS_SELECTOR, "pre.why").get_attribute("textContent") or ""
    assert "why:    missing data for input sessions" in why and "rules:  busy" in why
    assert any("creating → booting" in t for t in texts(browser, "tr.event"))
    # The scale-out 0 → 2, opened: its why text shows.
    scale_out = d.find_element(By.CSS_SELECTOR, "li.decision[data-outcome=scale_out]")
    scale_out.find_element(By.TAG_NAME, "summary").click()
    assert "why:    below min: 0 < 2" in scale_out.find_element(By.CSS_SELECTOR, "pre.why").text
    browser.screenshot(shots / "console-pool.png")

    # It refreshes itself: newer evaluations show up, the page is not reloaded, the opened `why` stays open.
    d.execute_script("window.scalerNotReloaded = true")
    newest = shown["id"]

    def refreshed() -> bool:
        status = d.find_element(By.ID, "refresh-status").text
        top = d.find_element(By.CSS_SELECTOR, "li.decision")
        return status.startswith("updated") and int(top.get_attribute("data-decision") or 0) > newest

    await eventually(lambda: asyncio.to_thread(refreshed), timeout_s=20, interval_s=0.5,
                     what="the pool page to refresh itself")
    assert d.execute_script("return window.scalerNotReloaded") is True
    opened = d.find_element(By.CSS_SELECTOR, "li.decision[data-outcome=scale_out] details")
    assert opened.get_attribute("open") is not None
    browser.check()
    assert browser.console == [] and browser.failed == []
    for name in ("login", "overview", "pool"):
        print(f"screenshot: {shots / f'console-{name}.png'}")
