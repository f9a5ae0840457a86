"""/docs in a real browser with no way out: headless Chromium, every host name but 127.0.0.1
unresolvable, renders Swagger UI from the API's own files — the operations and the Authorize button
of the bearer scheme appear. With the CDN page FastAPI serves by default nothing would render."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest

from scaler.store import Store
from tests.integration.scaler.test_api_tls import service_config, serving
from tests.support.api import NOW, View

pytestmark = pytest.mark.integration


async def rendered(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom), with only loopback reachable."""
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not installed (make deps installs it)"
    proc = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--virtual-time-budget=10000",
        "--dump-dom", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:      # its own process group: the browser's helpers go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def test_docs_render_in_a_browser_that_cannot_reach_anything_but_the_api(store: Store, tmp_path: Path) -> None:
    store.ensure_pool("web", "198.19.0.1", NOW)
    async with serving(View(store), service_config(tmp_path)) as (_, port):
        dom = await rendered(f"http://127.0.0.1:{port}/docs", tmp_path / "profile")
    assert "swagger-ui" in dom and "opblock" in dom, dom[:2000]      # Swagger UI drew the operations
    for text in ("/v1/reload", "/v1/pools/{pool}/breaker/reset", "/v1/pools", "Authorize"):
        assert text in dom, text
