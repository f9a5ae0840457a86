"""Benchmark warm standby (#18): decision → serving, with and without standby members, in the lab.

The scaler process on the lab (kernel router, HAProxy instances in namespaces, no load). A pool at
1 member; each trial raises its bounds to 2 (policy file + `POST /v1/reload` over the API socket),
so the next evaluation decides a scale-out "below min", and times from that decision (its stored
`at`) to
- the new member's next hop in the router's FIB (polled every 5 ms from the router's namespace), and
- the member in service (its `since`, stored by the lifecycle once the router reports the hop);
then lowers the bounds to 1 again (a scale-in) and waits until the pool is back at 1 member (and
its standby member is ready again) before the next trial. Run with `standby: 0` and `standby: 1`.

Value: p50 decision → in the FIB with standby (s); reference: the same without standby; ratio.
The lab's boot is a namespace and an HAProxy start (~0.35 s here); a real VM takes one to three minutes,
which is what the no-standby case pays on a cloud while the standby case does not.

    python bench/bench_standby.py --out bench/results [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import machine

from scaler.lab.demo import ServiceProcess, fib_next_hops, free_port, write_config
from scaler.lab.network import LabConfig, lab_down, lab_up

POLICY = """\
pools:
  web:
    min: {size}
    max: {size}
    standby: {standby}
    inputs:
      sessions: {{source: haproxy, metric: current_sessions, aggregate: avg}}
    rules:
      - {{name: busy, input: sessions, above: 100000, for: 6s, adjust: +1}}
    cooldown: {{scale_out: 0s, scale_in: 0s}}
    stale_after: 10s
"""


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def until(svc: ServiceProcess, cond: Any, what: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pool: dict[str, Any] = await svc.get("/v1/pools/web")
        if cond(pool):
            return pool
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}:\n{svc.tail()}")


def states(pool: dict[str, Any]) -> list[str]:
    return sorted(m["state"] for m in pool["members"] if m["state"] not in ("deleted",))


async def trials(lab: LabConfig, standby: int, n: int) -> list[dict[str, float]]:
    port = free_port()
    policy = lab.lab_dir / "bench-standby-policy.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(POLICY.format(size=1, standby=standby))
    svc = ServiceProcess(write_config(lab, port, policy=policy, overrides={
        "intervals.reconcile": "300ms", "intervals.evaluate": "500ms", "intervals.policy_watch": "0s",
        "pools.web.drain_timeout": "5s"}), port)
    live = lab.lab_dir / "scaler" / "policies" / "web.yaml"
    sock = lab.lab_dir / "scaler" / "scaler.sock"
    settled = ["in_service"] + ["standby"] * standby
    out = []
    await svc.start()
    try:
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://s",
                                     timeout=10) as api:
            for _ in range(n):
                pool = await until(svc, lambda p: states(p) == settled and p["operation"] is None, "a pool at 1")
                before = {m["address"] for m in pool["members"] if m["state"] == "in_service"}
                live.write_text(POLICY.format(size=2, standby=standby))
                (await api.post("/v1/reload")).raise_for_status()
                while True:
                    fib = await fib_next_hops(lab.router_ns, str(lab.vip))
                    if fib - before:
                        in_fib = time.time()
                        break
                    await asyncio.sleep(0.005)
                pool = await until(svc, lambda p: sum(m["state"] == "in_service" for m in p["members"]) == 2,
                                   "two in service")
                new = next(m for m in pool["members"] if m["state"] == "in_service" and m["address"] not in before)
                decision = next(d for d in await svc.get("/v1/pools/web/decisions?limit=50")
                                if d["outcome"] == "scale_out")
                t0 = at(decision["at"])
                out.append({"fib_s": round(in_fib - t0, 4), "in_service_s": round(at(new["since"]) - t0, 4),
                            "from_standby": "from standby" in decision["reason"]})
                print(f"standby {standby}: {out[-1]}", flush=True)
                live.write_text(POLICY.format(size=1, standby=standby))
                (await api.post("/v1/reload")).raise_for_status()
    finally:
        await svc.stop()
    return out


def p50(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 4)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_standby: needs root for the lab's network namespaces; skipped")
        return
    lab = LabConfig(name=f"scbs{secrets.token_hex(1)}")
    await lab_down(lab)
    try:
        await lab_up(lab)
        with_standby = await trials(lab, 1, args.trials)
        without = await trials(lab, 0, args.trials)
    finally:
        await lab_down(lab)
    value, ref = p50(with_standby, "fib_s"), p50(without, "fib_s")
    doc = {"name": "standby_decision_to_serving", "value": value, "unit": "s",
           "reference": ref, "reference_is": "the same scale-out without standby (a new member boots)",
           "ratio": round(value / ref, 4) if ref else None,
           "with_standby": {"fib_p50_s": value, "in_service_p50_s": p50(with_standby, "in_service_s"),
                            "max_fib_s": max(r["fib_s"] for r in with_standby), "trials": with_standby},
           "without_standby": {"fib_p50_s": ref, "in_service_p50_s": p50(without, "in_service_s"),
                               "max_fib_s": max(r["fib_s"] for r in without), "trials": without},
           "setup": "lab, kernel router (conntrack mode), pool 1 → 2 by its bounds (policy reload), no load; "
                    "evaluate every 500 ms, reconcile every 300 ms and at once after a decision; lab boot = "
                    "namespace + HAProxy (a cloud VM: 1-3 min)",
           "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "standby_decision_to_serving.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k not in ("with_standby", "without_standby")}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
