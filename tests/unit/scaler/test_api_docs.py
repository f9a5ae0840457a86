"""/docs works on a control plane without internet: the page names no external URL and every file
it loads is served by the API itself, from the installed Swagger UI package (whose licence ships
with it)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import httpx

from scaler.api import create_app
from scaler.store import Store
from tests.support.api import NOW, View, api_config

ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
QUOTED_URL = re.compile(r"""["'](\w+:)?//[^"']*["']""")


async def test_docs_load_nothing_from_outside_and_every_asset_is_served(store: Store, tmp_path: Path) -> None:
    app = create_app(View(store), lambda: NOW, access=api_config(tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        page = await c.get("/docs")                  # open, like /openapi.json: no credential
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert not QUOTED_URL.search(html), QUOTED_URL.findall(html)
        assets = ATTRIBUTE.findall(html)
        spec = re.search(r"url:\s*'([^']+)'", html)
        assert spec is not None and spec.group(1) == "/openapi.json"
        assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(assets), assets
        for url in [*assets, spec.group(1)]:
            assert url.startswith("/"), url
            r = await c.get(url)
            assert r.status_code == 200 and len(r.content) > 100, url
        js = await c.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in js.headers["content-type"] and b"SwaggerUIBundle" in js.content
        assert (await c.get("/docs/assets/nope.js")).status_code == 404


def test_the_swagger_ui_package_ships_its_licence() -> None:
    dist = metadata.distribution("swagger-ui-bundle-v2")
    assert dist.metadata["License"] == "Apache-2.0"
    assert any(f.name == "LICENSE" for f in dist.files or [])
