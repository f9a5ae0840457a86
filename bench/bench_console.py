"""Benchmark: the web console's pool page for a pool with 5,000 stored evaluations — server render
time and page weight (issue 17: "renders its page in well under a second").

The store holds 5,000 evaluations 5 s apart (about 7 hours: inputs, verdicts, reasons, a scale
action now and then, gaps without data), four members in three states and their events
(tests/support/console.py). The real API app (scaler.api.create_app, access control with a read
token) answers in-process over ASGI, so the time is the server's: routing, the credential check,
the store reads, the SVG chart and the templates, not a network. Measured after one warm-up request:
the first view of the pool page (a fresh app each time: the chart reads its whole window), then
the median and p95 of `--requests` requests for the full page with the default 3-hour chart
(about 2,160 evaluations drawn) and with a 24-hour chart (all 5,000 read), the live fragment the
page fetches every 5 s, and the overview. Page weight: the HTML of each, and the first load of the
pool page with its CSS, JS and icon; gzip sizes for reference (the API does not compress).
SQLite by default; `--postgresql` runs the same on a throwaway PostgreSQL 15 too (needs root).
Writes <out>/console_render.json (value: pool page p50, ms) and <out>/console_page_weight.json.

    python bench/bench_console.py --out bench/results [--requests 30] [--postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchinfo

from scaler.api import create_app
from scaler.store import Store
from tests.support import console as seed
from tests.support.api import READ_TOKEN, View, api_config, bearer

EVALUATIONS = 5000
AIM_MS = 1000.0


def machine() -> dict[str, Any]:
    return {**benchinfo.machine(), "load_1m": round(os.getloadavg()[0], 2)}


def stats(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50_ms": round(statistics.median(values) * 1000, 1), "p95_ms": round(q[18] * 1000, 1),
            "max_ms": round(max(values) * 1000, 1)}


async def measure(url: str, tmp: Path, requests: int) -> dict[str, Any]:
    store = Store(url)
    store.migrate()
    now = time.time()
    store.ensure_pool("web", "198.19.0.1", now - 86400)
    outcomes = seed.seed_decisions(store, "web", EVALUATIONS, now - 25)
    seed.seed_members(store, "web", now)
    view = View(store)
    view.policies = {"web": seed.policy()}
    access = api_config(tmp)
    out: dict[str, Any] = {"evaluations": EVALUATIONS + 1, "outcomes": outcomes}
    # A first view: a new app each time, so the chart reads its whole window (no cached rows).
    cold = []
    for _ in range(max(5, requests // 3)):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(view, access=access)),
                                     base_url="http://console", headers=bearer(READ_TOKEN)) as c:
            t = time.perf_counter()
            r = await c.get("/console/pools/web")
            cold.append(time.perf_counter() - t)
            r.raise_for_status()
    out["pool_page_3h_first_view"] = {**stats(cold), "html_bytes": len(r.content)}
    print("pool_page_3h_first_view", out["pool_page_3h_first_view"], flush=True)
    app = create_app(view, access=access)
    pages = {"pool_page_3h": "/console/pools/web", "pool_page_24h": "/console/pools/web?hours=24",
             "pool_live_3h": "/console/pools/web/live", "overview": "/console/"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console",
                                 headers=bearer(READ_TOKEN)) as c:
        for name, path in pages.items():
            first = await c.get(path)
            first.raise_for_status()
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                r = await c.get(path)
                times.append(time.perf_counter() - t)
                r.raise_for_status()
            out[name] = {**stats(times), "html_bytes": len(r.content), "html_gzip_bytes": len(gzip.compress(r.content))}
            print(name, out[name], flush=True)
        assets = 0
        for asset in ("console.css", "console.js", "favicon.svg"):
            r = await c.get(f"/console/static/{asset}")
            r.raise_for_status()
            assets += len(r.content)
        out["assets_bytes"] = assets
        out["first_load_bytes"] = out["pool_page_3h"]["html_bytes"] + assets
    store.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--postgresql", action="store_true", help="also on a throwaway PostgreSQL (root)")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        results["sqlite"] = await measure(f"sqlite:///{tmp}/scaler.db", Path(tmp), args.requests)
        if args.postgresql:
            from tests.support.postgres import PostgresServer

            with PostgresServer() as pg:
                results["postgresql"] = await measure(pg.create_database("bench_console"), Path(tmp), args.requests)
    page = results["sqlite"]["pool_page_3h"]
    first = results["sqlite"]["pool_page_3h_first_view"]
    render = {"name": "console_pool_page_render", "value": first["p50_ms"], "unit": "ms",
              "reference": AIM_MS, "ratio": round(first["p50_ms"] / AIM_MS, 3),
              "aim": "well under 1 s for a pool with 5,000 stored evaluations (issue 17)",
              "what": "server time of the first GET /console/pools/web (3 h chart: the whole window read), "
                      "in-process ASGI, SQLite, median; pool_page_3h: the same page viewed again (the chart's "
                      "rows cached, only newer decisions read)", "results": results, "machine": machine()}
    weight = {"name": "console_pool_page_weight", "value": results["sqlite"]["first_load_bytes"], "unit": "bytes",
              "what": "first load of the pool page with a 5,000-evaluation history: HTML (3 h chart) + CSS + JS + "
                      "icon, uncompressed",
              "html_bytes": page["html_bytes"], "html_gzip_bytes": page["html_gzip_bytes"],
              "live_fragment_bytes": results["sqlite"]["pool_live_3h"]["html_bytes"],
              "pool_page_24h_bytes": results["sqlite"]["pool_page_24h"]["html_bytes"],
              "assets_bytes": results["sqlite"]["assets_bytes"],
              "overview_bytes": results["sqlite"]["overview"]["html_bytes"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "console_render.json").write_text(json.dumps(render, indent=2) + "\n")
    (args.out / "console_page_weight.json").write_text(json.dumps(weight, indent=2) + "\n")
    print(json.dumps({"render": render["value"], "weight": weight["value"]}))


if __name__ == "__main__":
    asyncio.run(main())
