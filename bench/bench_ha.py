"""Benchmark leader takeover on a real PostgreSQL 15 (started for the run, stopped at the end).

Two campaigners (`scaler.leader.PostgresLeader`, as `scaler run` uses it) on one database; the
leader is failed --kills times in each way and the time is taken from the failure to the moment the
other may act (`may_act()`, which includes the lease-long wait of a new leader):

- `kill`: the leader's session dies (pg_terminate_backend: what the database sees when the leader
  process is SIGKILLed or its host's TCP stack resets the connection);
- `freeze`: the leader stops talking but its session stays open (SIGSTOP, a hung process, a network
  blackhole): the server drops it after idle_session_timeout (one lease).

For the default lease (2 s) and a short one (1 s). Value: p50 takeover after a kill with the default
lease; aim ≤ 5 s (kill and freeze). Writes bench/results/ha_takeover.json.

    python bench/bench_ha.py --out bench/results [--kills 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import machine

from scaler.leader import PostgresLeader
from scaler.store import Store
from tests.support.postgres import PostgresServer


class Campaigner:
    def __init__(self, url: str, lease: float) -> None:
        self.leader = PostgresLeader(url, lease_s=lease)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def nothing() -> None:
            return None
        self.task = asyncio.get_running_loop().create_task(self.leader.run(nothing, nothing))

    async def freeze(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def stop(self) -> None:
        await self.freeze()
        await self.leader.close()


async def until(check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.01)


async def takeovers(pg: PostgresServer, url: str, lease: float, how: str, n: int) -> list[float]:
    out: list[float] = []
    a, b = Campaigner(url, lease), Campaigner(url, lease)
    a.start()
    b.start()
    try:
        for _ in range(n):
            await until(lambda a=a, b=b: a.leader.may_act() or b.leader.may_act(), 10 * lease + 10)
            lead, other = (a, b) if a.leader.may_act() else (b, a)
            t0 = time.monotonic()
            if how == "kill":
                pg.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                         "'scaler-leader' AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                         "AND granted)")
            else:
                await lead.freeze()
            await until(other.leader.may_act, 10 * lease + 10)
            out.append(time.monotonic() - t0)
            if how == "freeze":
                await lead.stop()               # the frozen one is replaced by a fresh campaigner
                fresh = Campaigner(url, lease)
                fresh.start()
                a, b = other, fresh
    finally:
        await a.stop()
        await b.stop()
    return out


def summary(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_s": round(statistics.median(values), 3), "p99_s": round(q[98], 3), "max_s": round(max(values), 3)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--kills", type=int, default=10)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with PostgresServer() as pg:
        url = pg.create_database("bench_ha")
        store = Store(url)
        store.migrate()
        store.close()
        for lease in (2.0, 1.0):
            for how in ("kill", "freeze"):
                values = await takeovers(pg, url, lease, how, args.kills)
                results[f"lease_{lease:g}s_{how}"] = {**summary(values), "runs": len(values)}
                print(lease, how, results[f"lease_{lease:g}s_{how}"], flush=True)
    doc = {"name": "ha_takeover", "value": results["lease_2s_kill"]["p50_s"], "unit": "s",
           "aim": "<= 5 s with the default lease (2 s)", "results": results,
           "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ha_takeover.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
