"""Benchmark: Alertmanager-style deliveries into the scaler's receiver (uvicorn + SQLite, loopback).

Starts the receiver (our router only, a real Store with WAL on a temporary file) as a separate
process, then drives it from this process with httpx:

1. steady: an open-loop schedule of `--rate` deliveries/s for `--duration` s, each carrying one new
   alert (a durable write). Latency is measured from the *scheduled* send time to the answer, which
   the receiver only gives once the alert is committed: request → stored, including any queueing.
2. duplicates: the same schedule re-sending bodies already stored (Alertmanager's repeats).
3. capacity: a closed loop with `--concurrency` requests in flight for `--capacity-duration` s.

The load comes from a minimal keep-alive HTTP/1.1 client over `--concurrency` connections (httpx
spends more CPU per request than the receiver, which on a small machine measures the client).

Then it stops the server by PID and counts the stored signals (each new alert exactly once).
Writes `<out>/alerts.json`. Loopback only; bounded in time (about 25 s with the defaults).

    python bench/bench_alerts.py --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOKEN = "bench-bearer-token-0123456789"
POOL = "web"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(port: int, db: Path, token_file: Path) -> None:
    """Server mode (run in the child process): the receivers' router on uvicorn."""
    import uvicorn
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry, generate_latest

    from scaler.alerts import AlertsConfig, alerts_router
    from scaler.store import Store

    store = Store(f"sqlite:///{db}")
    store.migrate()
    config = AlertsConfig.model_validate({"alertmanager": {"credentials": [
        {"name": "bench", "token": {"file": str(token_file)}, "pools": [POOL]}]}})
    registry = CollectorRegistry()
    app = FastAPI()
    app.include_router(alerts_router(store, config, lambda: {POOL}, registry))

    @app.get("/metrics")
    def metrics() -> Any:
        from fastapi import Response
        return Response(generate_latest(registry), media_type="text/plain")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
                ws="none")
    store.close()


def body(i: int) -> bytes:
    alert = {"status": "firing", "labels": {"alertname": "BenchLoad", "pool": POOL, "vm": f"vm-{i}"},
             "annotations": {"summary": f"bench alert {i}"}, "startsAt": "2026-11-21T16:49:24.437Z",
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": f"{i:016x}"}
    payload = {"receiver": "scaler", "status": "firing", "alerts": [alert],
               "groupLabels": {"alertname": "BenchLoad"}, "commonLabels": alert["labels"],
               "commonAnnotations": alert["annotations"], "externalURL": "http://am", "version": "4",
               "groupKey": f'{{}}:{{alertname="BenchLoad", vm="vm-{i}"}}', "truncatedAlerts": 0}
    return (json.dumps(payload, separators=(",", ":")) + "\n").encode()


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
           "User-Agent": "Alertmanager/0.25.0"}


class Connection:
    """A minimal keep-alive HTTP/1.1 client connection. httpx costs more CPU per request than the
    receiver itself; on a 2-CPU machine it would measure the client, not the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, payload: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(payload)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def quantiles(values: list[float]) -> dict[str, float]:
    lat = sorted(values)
    return {"p50": round(lat[len(lat) // 2] * 1000, 2), "p90": round(lat[int(len(lat) * 0.9)] * 1000, 2),
            "p99": round(lat[int(len(lat) * 0.99)] * 1000, 2), "max": round(lat[-1] * 1000, 2),
            "mean": round(statistics.fmean(lat) * 1000, 2)}


async def open_loop(pool: asyncio.Queue[Connection], path: str, rate: float, duration: float, first: int
                    ) -> dict[str, Any]:
    """`rate` deliveries/s on schedule; a delivery waits for a free connection if all are busy, and
    that wait counts in its latency (no coordinated omission)."""
    n = int(rate * duration)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    results: dict[str, int] = {}

    async def one(i: int, due: float) -> None:
        conn = await pool.get()
        try:
            status, answer = await conn.request("POST", path, body(first + i), HEADERS)
        finally:
            pool.put_nowait(conn)
        latencies.append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            r = json.loads(answer)["result"]
            results[r] = results.get(r, 0) + 1

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {"deliveries": n, "offered_per_s": rate, "achieved_per_s": round(n / elapsed, 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "results": results,
            "latency_ms": quantiles(latencies)}


async def closed_loop(pool: asyncio.Queue[Connection], path: str, concurrency: int, duration: float, first: int
                      ) -> dict[str, Any]:
    counter = iter(range(first, first + 10_000_000))
    done = 0
    end = time.perf_counter() + duration
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal done
        conn = await pool.get()
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                status, _ = await conn.request("POST", path, body(next(counter)), HEADERS)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                latencies.append(time.perf_counter() - t0)
                done += 1
        finally:
            pool.put_nowait(conn)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {"concurrency": concurrency, "deliveries": done, "accepted_per_s": round(done / elapsed, 1),
            "latency_ms": quantiles(latencies)}


def server_histogram(text: str) -> dict[str, float]:
    """scaler_alert_store_seconds as (le → cumulative count): the receiver's own view, from the
    request entering the route to the commit."""
    buckets = {}
    for line in text.splitlines():
        if line.startswith('scaler_alert_store_seconds_bucket{') and 'receiver="alertmanager"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


async def drive(port: int, args: argparse.Namespace) -> dict[str, Any]:
    path = "/v1/alerts/alertmanager"
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    conns = [await Connection.open("127.0.0.1", port) for _ in range(args.concurrency)]
    for c in conns:
        pool.put_nowait(c)
    try:
        for i in range(20):    # warm-up: connections, SQLite pages, code paths
            status, _ = await conns[0].request("POST", path, body(10_000_000 + i), HEADERS)
            assert status == 200, status
        steady = await open_loop(pool, path, args.rate, args.duration, 0)
        dupes = await open_loop(pool, path, args.rate, args.duplicate_duration, 0)
        capacity = await closed_loop(pool, path, args.concurrency, args.capacity_duration, 20_000_000)
        _, metrics = await conns[0].request("GET", "/metrics")
    finally:
        for c in conns:
            await c.close()
    return {"steady": steady, "duplicates": dupes, "capacity": capacity,
            "server_store_seconds_buckets": server_histogram(metrics.decode())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--duplicate-duration", type=float, default=3.0)
    parser.add_argument("--capacity-duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "DB", "TOKEN_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]), Path(args.serve[2]))
        return 0

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        db, token_file = Path(tmp) / "scaler.db", Path(tmp) / "token"
        token_file.write_text(TOKEN + "\n")
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(db), str(token_file)],
                                  stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the receiver exited with {server.returncode}")
                try:
                    if httpx.get(f"{base}/openapi.json", timeout=1, trust_env=False).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the receiver did not start within 20 s")
                time.sleep(0.05)
            result = asyncio.run(drive(port, args))
        finally:
            if server.poll() is None:
                os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait(timeout=5)

        from sqlmodel import func, select

        from scaler.alerts.store import AlarmSignal
        from scaler.store import Store

        store = Store(f"sqlite:///{db}")
        with store.session() as s:
            stored = s.exec(select(func.count()).select_from(AlarmSignal)).one()
        store.close()

    steady = result["steady"]
    expected = 20 + steady["deliveries"] + result["capacity"]["deliveries"]
    summary = {
        "name": "alert_receiver",
        "description": (f"Alertmanager v4 deliveries (1 new alert each) into POST /v1/alerts/alertmanager, "
                        f"uvicorn + SQLite WAL on loopback; open loop at {args.rate:g}/s for {args.duration:g} s, "
                        "latency from scheduled send to the answer given after commit"),
        "value": steady["latency_ms"]["p99"],
        "unit": "ms p99 request→stored at the offered rate",
        "accepted_per_s": steady["achieved_per_s"],
        "capacity_accepted_per_s": result["capacity"]["accepted_per_s"],
        "stored_signals": stored,
        "stored_as_expected": stored == expected,
        **result,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    summary["elapsed_s"] = round(time.monotonic() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alerts.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["stored_as_expected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
