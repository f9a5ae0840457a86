"""The web console (scaler.console) rendered by the real API over a real store: what each page shows,
the chart, who may read it (the login form, the cookie, the refusals), and that a page's store work
does not grow with the number of pools. In a real browser: tests/integration/scaler/test_console.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from scaler.api import create_app
from scaler.config import ApiConfig, PoolConfig
from scaler.console import COOKIE, chart, views
from scaler.store import MemberState, Store
from tests.support import console as seed
from tests.support.api import NOW, OPS_TOKEN, READ_TOKEN, WRONG_TOKEN, View, api_config, bearer


@pytest.fixture
def view(store: Store) -> View:
    store.ensure_pool("web", "198.19.0.1", NOW - 86400)
    seed.seed_decisions(store, "web", 3000, NOW - 25)
    seed.seed_members(store, "web", NOW)
    v = View(store)
    v.policies = {"web": seed.policy()}
    return v


def app_for(view: View, access: ApiConfig | None = None) -> FastAPI:
    return create_app(view, lambda: NOW, access=access if access is not None else ApiConfig(anonymous_read=True))


def client(app: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", **kwargs)


class Text(HTMLParser):
    """The page's text, whitespace squeezed, and the attributes of every element."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.parts))

    def having(self, attr: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.elements if attr in a]


async def test_overview_shows_each_pool_with_size_bounds_states_health_and_last_decision(view: View) -> None:
    view.pools["api"] = PoolConfig.model_validate({"vip": "198.19.0.2"})     # configured, never evaluated
    view.store.ensure_pool("api", "198.19.0.2", NOW)
    view.store.pause("web", "api (ops)", "maintenance window", NOW - 60)
    async with client(app_for(view)) as c:
        r = await c.get("/console/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert ">@anonymous<" in r.text and 'action="/console/logout"' not in r.text     # nothing to log out of
    page = Text(r.text)
    assert [a["data-pool"] for a in page.having("data-pool")] == ["api", "web"]
    web = r.text[r.text.index('data-pool="web"'):]
    assert 'data-size="3"' in web and "[2…8]" in web          # draining is not in the size
    assert '<span class="state st-in_service" data-state="in_service">3 in_service</span>' in web
    assert '<span class="state st-draining" data-state="draining">1 draining</span>' in web
    assert 'data-health="down">1 down' in web and 'data-health="up">1 up' in web
    assert 'data-flag="paused"' in web and "maintenance window" in web
    # The last decision in words: what, the sizes, when and why.
    assert f"4 → 3 (20s ago): {seed.IDLE_REASON}" in Text(web).text
    assert "scale-in 4 → 3" in web                              # the running operation
    api = r.text[r.text.index('data-pool="api"'):r.text.index('data-pool="web"')]
    assert "no evaluation recorded yet" in api and "no member" in api and "(no policy)" in api


async def test_pool_page_shows_members_chart_decisions_and_events(view: View) -> None:
    async with client(app_for(view)) as c:
        r = await c.get("/console/pools/web")
        api = (await c.get("/v1/pools/web")).json()
        why = (await c.get("/v1/pools/web/why?limit=1")).text
    assert r.status_code == 200
    page = Text(r.text)
    rows = {a["data-instance"]: (a["data-state"], a["data-health"]) for a in page.having("data-instance")}
    assert rows == {m["instance"]: (m["state"], m["health"]) for m in api["members"]}
    assert '<progress class="drain" value="20" max="120"' in r.text      # 20 s of the 2 m drain_timeout
    assert "10.250.0.2" in page.text and "connect: connection refused (3 in a row)" in page.text
    # The chart: size, then each input with its rules' thresholds, the decisions marked.
    svg = r.text[r.text.index("<svg"):r.text.index("</svg>")]
    panels = [str(a["data-panel"]) for a in page.having("data-panel")]
    assert panels[0].startswith("size") and panels[1:] == ["input sessions", "input cpu"]
    assert "busy: &gt; 20 → +1" in svg and "idle: &lt; 5 → -1" in svg and "cpu: target 60 ± 10%" in svg
    assert 'class="threshold grow"' in svg and 'class="threshold shrink"' in svg and 'class="band"' in svg
    assert svg.count('<polygon class="marker in"') >= 1 and svg.count('<polygon class="marker out"') >= 1
    # The decisions: the newest first with the `why` text scaler why prints; identical holds folded.
    decisions = page.having("data-decision")
    assert decisions[0]["data-outcome"] == "scale_in"
    first = r.text[r.text.index("<pre class=\"why\">") + len("<pre class=\"why\">"):r.text.index("</pre>")]
    assert why.endswith("\n\n" + first.replace("&gt;", ">").replace("&lt;", "<"))     # after why's header
    assert re.search(r"no rule fired\s*</span>\s*<span class=\"muted small\">\u00d7\d+ since", r.text)
    assert len(decisions) <= 40
    # The events, newest first.
    kinds = [a["data-kind"] for a in page.having("data-kind")]
    assert kinds[:2] == ["member_state", "operation"] and "health" in kinds
    assert "in_service → draining" in page.text


async def test_live_fragments_are_the_changing_part_of_each_page(view: View) -> None:
    async with client(app_for(view)) as c:
        overview = await c.get("/console/live")
        pool = await c.get("/console/pools/web/live?hours=1")
        full = await c.get("/console/pools/web?hours=1")
    for r in (overview, pool):
        assert r.status_code == 200 and "<html" not in r.text and "<script" not in r.text
    assert 'data-pool="web"' in overview.text
    assert 'data-live="/console/pools/web/live?hours=1"' in full.text
    assert pool.text.strip() in full.text


async def test_chart_window_holds_only_its_hours(view: View) -> None:
    async with client(app_for(view)) as c:
        one = await c.get("/console/pools/web/live?hours=1")
        six = await c.get("/console/pools/web/live?hours=6")
    # 3,000 evaluations 5 s apart: about 4 h 10 m. One hour shows a quarter of the scale actions.
    marks = [r.text.count('<line class="mark ') for r in (one, six)]
    assert 0 < marks[0] < marks[1]


@pytest.mark.parametrize(("query", "status", "message"), [
    ("hours=abc", 422, "hours must be a number of hours"),
    ("hours=0", 422, "hours must be more than 0"),
])
async def test_bad_window_is_a_clear_error(view: View, query: str, status: int, message: str) -> None:
    async with client(app_for(view)) as c:
        r = await c.get(f"/console/pools/web?{query}")
    assert r.status_code == status and message in r.text


async def test_unknown_pool_names_the_pools(view: View) -> None:
    async with client(app_for(view)) as c:
        page = await c.get("/console/pools/nope")
        fragment = await c.get("/console/pools/nope/live")
    assert page.status_code == 404 and "unknown pool &#39;nope&#39;; pools: web" in page.text
    assert fragment.status_code == 404 and fragment.text == "unknown pool 'nope'; pools: web"


async def test_pages_carry_a_strict_csp_and_no_inline_script_or_style(view: View) -> None:
    async with client(app_for(view)) as c:
        pages = [await c.get(p) for p in ("/console/", "/console/pools/web", "/console/login")]
        css = await c.get("/console/static/console.css")
        missing = await c.get("/console/static/nope.js")
    for r in pages:
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "style-src 'self'" in r.headers["content-security-policy"]
        elements = Text(r.text).elements
        assert not [a for tag, a in elements if tag == "script" and not a.get("src")]
        assert not [a for _, a in elements if "style" in a or any(k.startswith("on") for k in a)]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404


async def test_warm_standby_is_shown_apart_from_the_size(view: View) -> None:
    view.policies = {"web": seed.policy(standby=1)}
    op = view.store.start_standby("web", 1, 0, "standby 0 < 1", NOW - 30)
    (m,) = view.store.members_of(op.id)
    for state in (MemberState.BOOTING, MemberState.HEALTHY, MemberState.STANDBY):
        view.store.transition(m.id, state, NOW - 20, address="10.250.0.9")
    async with client(app_for(view)) as c:
        r = await c.get("/console/")
        api = (await c.get("/v1/pools/web")).json()
    assert api["size"] == 3 and api["standby"] == 1
    assert 'data-size="3"' in r.text and 'data-standby="1"' in r.text and "standby 1 of 1" in r.text
    assert 'data-state="standby">1 standby<' in r.text


# --- access --------------------------------------------------------------------------------------


@pytest.fixture
def locked(view: View, tmp_path: Path) -> FastAPI:
    """The API with credentials and no anonymous read."""
    return app_for(view, api_config(tmp_path))


async def test_without_credential_pages_redirect_to_login_and_fragments_are_refused(locked: FastAPI) -> None:
    async with client(locked) as c:
        page = await c.get("/console/pools/web?hours=6")
        fragment = await c.get("/console/pools/web/live")
        login = await c.get(page.headers["location"])
    assert page.status_code == 303
    assert page.headers["location"] == "/console/login?next=/console/pools/web%3Fhours%3D6"
    assert "web" not in page.text and "10.250.0" not in page.text
    assert fragment.status_code == 401 and "needs a credential with scope 'read'" in fragment.text
    assert login.status_code == 200 and 'name="token"' in login.text
    assert 'value="/console/pools/web?hours=6"' in login.text


async def test_login_sets_an_httponly_cookie_the_console_accepts(locked: FastAPI) -> None:
    async with client(locked) as c:
        wrong = await c.post("/console/login", data={"token": WRONG_TOKEN, "next": "/console/pools/web"})
        assert wrong.status_code == 401 and "invalid credential" in wrong.text and COOKIE not in wrong.cookies
        ok = await c.post("/console/login", data={"token": READ_TOKEN, "next": "/console/pools/web"})
        assert ok.status_code == 303 and ok.headers["location"] == "/console/pools/web"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={READ_TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie                                       # plain http here
        page = await c.get("/console/pools/web")
        assert page.status_code == 200 and 'data-instance="' in page.text and ">reader<" in page.text
        assert 'action="/console/logout"' in page.text
        assert (await c.get("/console/live")).status_code == 200
        # The JSON API still wants the header: the cookie is the console's.
        async with client(locked, cookies={COOKIE: READ_TOKEN}) as other:
            assert (await other.get("/v1/pools/web")).status_code == 401
        out = await c.post("/console/logout")
        assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
        c.cookies.clear()
        assert (await c.get("/console/")).status_code == 303


async def test_over_https_the_cookie_is_secure(locked: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=locked), base_url="https://api") as c:
        ok = await c.post("/console/login", data={"token": READ_TOKEN})
    assert ok.status_code == 303 and "Secure" in ok.headers["set-cookie"]


async def test_a_stale_cookie_goes_back_to_the_login_form_saying_so(locked: FastAPI) -> None:
    async with client(locked, cookies={COOKIE: WRONG_TOKEN}) as c:
        r = await c.get("/console/")
        assert r.status_code == 303 and "error=the%20stored%20token%20is%20no%20longer%20valid" in r.headers["location"]
        assert "no longer valid" in (await c.get(r.headers["location"])).text


async def test_bearer_header_works_and_login_never_redirects_off_the_console(locked: FastAPI) -> None:
    async with client(locked) as c:
        assert (await c.get("/console/", headers=bearer(OPS_TOKEN))).status_code == 200
        for target in ("https://evil.example/", "//evil.example/console/", "/v1/pools", ""):
            r = await c.post("/console/login", data={"token": OPS_TOKEN, "next": target})
            assert r.status_code == 303 and r.headers["location"] == "/console/", target


async def test_no_credential_configured_says_how_to_add_one(view: View) -> None:
    async with client(app_for(view, ApiConfig())) as c:
        r = await c.post("/console/login", data={"token": "anything"})
    assert r.status_code == 401 and "no API credential is configured" in r.text


# --- store work ------------------------------------------------------------------------------------


@pytest.fixture
def statements(store: Store) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        seen.append(sql)

    event.listen(store.engine, "before_cursor_execute", record)
    yield seen
    event.remove(store.engine, "before_cursor_execute", record)


async def test_overview_store_work_does_not_grow_with_pools(view: View, statements: list[str]) -> None:
    app = app_for(view)

    async def count() -> int:
        statements.clear()
        async with client(app) as c:
            assert (await c.get("/console/live")).status_code == 200
        return len(statements)

    await count()           # the members' snapshot is read once, then reused
    one = await count()
    for name in ("api", "db", "edge"):
        view.pools[name] = PoolConfig.model_validate({"vip": "198.19.0.9"})
        view.store.ensure_pool(name, "198.19.0.9", NOW)
        seed.seed_decisions(view.store, name, 10, NOW)
    assert await count() == one


async def test_pool_page_reads_the_window_not_every_evaluation(view: View, statements: list[str]) -> None:
    async with client(app_for(view)) as c:
        assert (await c.get("/console/pools/web/live?hours=1")).status_code == 200
    chart_reads = [s for s in statements if "decisions.inputs" in s and "decisions.at >=" in s]
    assert len(chart_reads) == 1 and "decisions.verdicts" not in chart_reads[0]


# --- the chart -----------------------------------------------------------------------------------


def test_reduce_keeps_spikes_and_gaps_within_two_points_a_bucket() -> None:
    points = [chart.Point(float(t), 1.0) for t in range(10_000)]
    points[5000] = chart.Point(5000.0, 99.0)
    points[7000] = chart.Point(7000.0, None)
    out = chart.reduce(points, 0, 10_000, 200)          # 100 buckets of 2 px
    assert len(out) <= 2 * 100 + 2
    assert chart.Point(5000.0, 99.0) in out
    assert chart.Point(7000.0, None) in out
    assert [p.at for p in out] == sorted(p.at for p in out)


def test_changes_keeps_steps_and_the_last_point() -> None:
    pts = [chart.Point(t, v) for t, v in [(0, 2), (1, 2), (2, 3), (3, 3), (4, 3)]]
    assert chart.changes(pts) == [chart.Point(0, 2), chart.Point(2, 3), chart.Point(4, 3)]


def test_render_draws_gaps_thresholds_and_marks_with_their_reason() -> None:
    panel = chart.Panel("input s", [chart.Point(0, 1.0), chart.Point(10, None), chart.Point(20, 30.0),
                                    chart.Point(30, 31.0)],
                        [chart.Threshold(20, "busy: > 20 → +1", 1)])
    svg = chart.render([chart.Panel("size", [chart.Point(0, 1), chart.Point(20, 2)], steps=True, integer=True),
                        panel], [chart.Mark(20, "scale_out", "busy <fired> 1 → 2")], 0, 30)
    value = re.findall(r'<path class="series value" d="([^"]*)"', svg)[1]
    assert value.count("M") == 2                         # the gap lifts the pen
    assert "busy: &gt; 20 → +1" in svg and "busy &lt;fired&gt; 1 → 2" in svg
    assert svg.count('<line class="mark out"') == 2 and svg.count('<polygon class="marker out"') == 1
    empty = chart.render([chart.Panel("input t", [])], [], 0, 30)
    assert "no data in this window" in empty


def test_inputs_are_parsed_together_and_a_bad_row_reads_as_none() -> None:
    assert views._inputs(['{"s": 1.5}', None, '{"s": null}']) == [{"s": 1.5}, {}, {"s": None}]
    assert views._inputs(['{"s": 2}', "not json", "[1]"]) == [{"s": 2}, {}, {}]


def test_chart_cache_reads_only_newer_decisions_and_notices_a_new_database(view: View,
                                                                           statements: list[str]) -> None:
    store, cache = view.store, views.ChartCache()
    since = NOW - 3600
    first = cache.rows(store, "web", since)
    assert first == views.chart_rows(store, "web", since) and len(first) > 600
    seed.seed_decisions(store, "web", 3, NOW + 15)
    statements.clear()
    again = cache.rows(store, "web", since)
    assert again == views.chart_rows(store, "web", since) and len(again) == len(first) + 3
    assert "decisions.id >" in statements[0]            # only what is new was read
    narrower = cache.rows(store, "web", NOW - 60)
    assert narrower == views.chart_rows(store, "web", NOW - 60)
    wider = cache.rows(store, "web", NOW - 7200)
    assert wider == views.chart_rows(store, "web", NOW - 7200)
    store.prune_decisions("web", 0)                     # every decision gone: new ids start again
    seed.seed_decisions(store, "web", 5, NOW)
    assert cache.rows(store, "web", since) == views.chart_rows(store, "web", since)
    assert len(cache.rows(store, "web", since)) == 5
